"""live: the gateway on Linux interfaces, one loop from the rings to the wire.

Role. ``LiveLoop`` runs a ``Gateway`` over live ports: AF_PACKET rings bound to
interfaces (``portico.io.afpacket``), and, for in-band management, a TAP
device that carries the management frames to and from the kernel
(``portico.datapath.management``). ``portico up`` runs one in a thread beside
the API server; tests run it the same way.

Theory of operation. One thread owns every port (a port is driven by one
thread at a time). Each turn of the loop

1. takes what each port's ring holds (``receive`` with no wait, at most one
   batch a port, so a busy port cannot starve the others);
2. splits off the frames for the management address (punted from the
   management port, refused from any other: tenants never reach the kernel),
   writes the punted ones to the TAP and removes all of them from the batch;
3. runs the gateway over the batch, under the daemon's lock (the API reads
   and reconfigures under the same lock, between two batches);
4. sends every row that leaves, by its ``out_port``, with one ``send`` per
   egress port, then the frames the gateway made itself (ARP and ND requests,
   packets released once their neighbour resolved);
5. moves what the kernel wrote to the TAP out of the management port as it
   is: the kernel built those frames whole, with the management MAC.

When no port had anything, the loop sleeps in ``afpacket.wait`` until a ring
has a frame. The TAP has no waker there, so with management on the sleep is
cut to ``tap_poll`` seconds: a management answer waits at most that long,
tenant traffic never does.

Time is the wall clock in ns, read once a turn: the flow cache, NAT and
conntrack timeouts and the punt budget run on it.

The kernel must not see the bound interfaces' frames too (it would answer ARP
for addresses it owns, or take a packet for the management address twice):
``portico up`` drops them at the netdev ingress hook (``fence``), which comes
after the AF_PACKET taps, so the rings still get every frame.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from portico.batch import Batch
from portico.datapath.management import Management

STATISTICS_EVERY = 1_000_000_000  # ns between reads of the ports' kernel counters


class LivePort(Protocol):
    """What the loop needs of a port (``AfPacketPort``, ``TapPort``)."""

    port: int

    def receive(self, batch: Batch, timeout: float | None = 0.0) -> int: ...

    def send(self, batch: Batch, rows: np.ndarray | None = None) -> int: ...


@dataclass
class LoopCounters:
    turns: int = 0
    received: int = 0
    sent: int = 0
    emitted: int = 0  # frames the gateway made itself (ARP/ND requests, released packets)
    no_port: int = 0  # rows for a port nothing is bound to
    from_kernel: int = 0  # frames the kernel wrote to the management TAP
    errors: int = 0  # turns that raised (counted, logged, and the loop goes on)
    last_error: str = field(default="")


class LiveLoop:
    """The gateway over live ports (see the module's docstring).

    ``process(batch, now) -> list[Batch]`` is the gateway's (``Gateway.process``),
    called under ``lock``; ``ports`` are the AF_PACKET ports by port id;
    ``management`` and ``tap`` go together (both or neither); ``counted(batch,
    received)`` is told every batch in and out (the daemon's per-port counters).
    """

    def __init__(self, process: Callable[[Batch, int], list[Batch]], ports: Sequence[Any], *,
                 lock: threading.RLock | None = None, management: Management | None = None,
                 tap: LivePort | None = None, batch_size: int = 256, slot_size: int = 2048,
                 tap_poll: float = 0.002,
                 counted: Callable[[Batch, bool], None] | None = None) -> None:
        if (management is None) != (tap is None):
            raise ValueError("management and tap go together: both or neither")
        if management is not None and management.port not in {p.port for p in ports}:
            raise ValueError(f"management.port: no live port has id {management.port}")
        self.process = process
        self.ports = list(ports)
        self.by_id: Mapping[int, Any] = {p.port: p for p in self.ports}
        self.lock = lock or threading.RLock()
        self.management = management
        self.tap = tap
        self.tap_poll = tap_poll
        self.counted = counted
        self.counters = LoopCounters()
        self._batches = [Batch(batch_size, slot_size=slot_size) for _ in self.ports]
        self._from_kernel = Batch(batch_size, slot_size=slot_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._statistics_at = 0

    def counts(self) -> dict[str, int]:
        """The loop's counters and its ports', flat (for /stats and /metrics)."""
        out = {name: value for name, value in vars(self.counters).items()
               if isinstance(value, int)}
        for port in self.ports:
            counters = getattr(port, "counters", None)
            for name in ("rx_packets", "rx_kernel_drops", "tx_packets", "reopens",
                         "link_downs"):
                if counters is not None and isinstance(getattr(counters, name, None), int):
                    out[f"port{port.port}_{name}"] = getattr(counters, name)
        return out

    # ------------------------------------------------------------------ one turn
    def turn(self) -> int:
        """One pass over the ports; how many frames came in."""
        now = time.time_ns()
        received = 0
        for port, batch in zip(self.ports, self._batches, strict=True):
            n = port.receive(batch, 0)
            if not n:
                continue
            received += n
            if self.management is not None:  # every port: tenants' frames to it are refused
                assert self.tap is not None
                split = self.management.split(batch, now)
                if len(split.punt):
                    self.tap.send(batch, split.punt)
                batch.remove(split.taken)
                if not batch.count:
                    continue
            with self.lock:
                made = self.process(batch, now)
                if self.counted is not None:
                    self.counted(batch, True)
                    for extra in made:
                        self.counted(extra, False)
            self._transmit(batch)
            for extra in made:
                self.counters.emitted += extra.count
                self._transmit(extra)
        if self.tap is not None:
            received += self._kernel_to_wire()
        if now - self._statistics_at >= STATISTICS_EVERY:
            # The ring's own drop counter is read from the kernel (and reset there) by
            # the thread that owns the port, once a second, so /stats shows ring overflows.
            self._statistics_at = now
            for port in self.ports:
                if hasattr(port, "statistics"):
                    port.statistics()
        self.counters.turns += 1
        self.counters.received += received
        return received

    def _transmit(self, batch: Batch) -> None:
        meta = batch.meta[: batch.count]
        leaving = np.flatnonzero((meta["drop"] == 0) & (meta["out_port"] >= 0))
        if not len(leaving):
            return
        out = meta["out_port"][leaving]
        for port_id in np.unique(out).tolist():
            rows = leaving[out == port_id]
            port = self.by_id.get(port_id)
            if port is None:
                self.counters.no_port += len(rows)
                continue
            self.counters.sent += port.send(batch, rows)

    def _kernel_to_wire(self) -> int:
        assert self.tap is not None and self.management is not None
        n = self.tap.receive(self._from_kernel, 0)
        if n:
            self.counters.from_kernel += n
            self.by_id[self.management.port].send(self._from_kernel, None)
        return n

    # ------------------------------------------------------------------ the thread
    def run(self, stop: threading.Event | None = None, *, idle: float = 0.05) -> None:
        """Turn until ``stop`` is set (or ``self.stop()``); sleep while nothing comes."""
        from portico.io.afpacket import wait

        stop = stop or self._stop
        nap = min(idle, self.tap_poll) if self.tap is not None else idle
        while not stop.is_set() and not self._stop.is_set():
            try:
                if not self.turn():
                    wait(self.ports, nap)
            except Exception as error:  # a bad turn must not take the gateway down
                self.counters.errors += 1
                self.counters.last_error = f"{type(error).__name__}: {error}"
                time.sleep(0.01)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="portico-live", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


# ---------------------------------------------------------------------- the fence
FENCE_TABLE = "portico_fence"


def fence(interfaces: Sequence[str], *, table: str = FENCE_TABLE) -> None:
    """Keep the kernel's stack off ``interfaces``: every frame is dropped at the netdev
    ingress hook, after the AF_PACKET taps (the gateway's rings still get it)."""
    lines = [f"table netdev {table} {{"]
    for k, name in enumerate(interfaces):
        lines += [f"  chain in{k} {{",
                  f'    type filter hook ingress device "{name}" priority 0; policy drop;',
                  "  }"]
    lines.append("}")
    unfence(table=table)
    subprocess.run(["nft", "-f", "-"], input="\n".join(lines), text=True, check=True,
                   capture_output=True, timeout=30)


def unfence(*, table: str = FENCE_TABLE) -> None:
    subprocess.run(["nft", "delete", "table", "netdev", table], capture_output=True,
                   timeout=30, check=False)


__all__ = ["LiveLoop", "LivePort", "LoopCounters", "fence", "unfence"]
