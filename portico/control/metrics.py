"""metrics: a gateway's counters in the Prometheus text exposition format (version 0.0.4).

Synopsis. ``render(gateway, ports=port_counters)`` returns the text a
``/metrics`` endpoint serves (``Content-Type: text/plain; version=0.0.4``)::

    # HELP portico_stage_packets_total Packets a pipeline stage has processed.
    # TYPE portico_stage_packets_total counter
    portico_stage_packets_total{stage="ingress"} 7
    ...
    portico_port_packets_total{port="uplink",direction="rx"} 3

No client library: the format is lines of ``# HELP``, ``# TYPE`` and
``name{label="value",...} value``, written here with label values escaped
(backslash, double quote, newline), one ``# TYPE`` per family, every sample of
a family together.

What is exported, by owner (``Gateway.stats()`` holds the same numbers):

* the pipeline, per stage (``stage``): ``portico_stage_calls_total``,
  ``portico_stage_packets_total``, ``portico_stage_seconds_total`` and
  ``portico_stage_drops_total{stage,reason}``. The stages run for the packets the
  flow cache misses (and those that must see them), so these count decisions
  made, not packets forwarded: a flow's later packets are the cache's;
* the ports (``port``, ``direction`` = ``rx``/``tx``), if a ``PortCounters`` is
  given: ``portico_port_packets_total``, ``portico_port_bytes_total`` and
  ``portico_port_drops_total{port,reason}`` (by ingress port, every drop whoever
  made it: parse, a stage, a cached decision);
* the datapath: ``portico_datapath_packets_total`` and
  ``portico_datapath_events_total{event}`` (hits, misses, forced, uncacheable);
* the flow cache: ``portico_flow_cache_hits_total``, ``_misses_total``,
  ``portico_flow_cache_hit_ratio`` (hits / lookups since start; NaN before the
  first lookup), ``portico_flow_cache_entries`` (occupied slots, stale ones not
  yet freed included), ``portico_flow_cache_capacity`` and
  ``portico_flow_cache_events_total{event}`` (insertions, evictions, expirations,
  invalidations, insert failures). None of these without a cache;
* tables: ``portico_nat_bindings``, ``portico_conntrack_connections``,
  ``portico_neighbours``, ``portico_pending_packets`` (waiting for a neighbour) and
  ``portico_pending_neighbours`` (the neighbours they wait for),
  ``portico_generation`` (the config generation);
* events: ``portico_nat_events_total{event}``,
  ``portico_conntrack_events_total{event}``,
  ``portico_neighbour_events_total{event}``, ``portico_pending_events_total{event}``,
  ``portico_gateway_events_total{event}``, each the owner's ``counters()``.

Counters restart from zero when their owner is rebuilt (``Gateway.reconfigure``
compiles a new pipeline; a changed NAT config a new NAT table): Prometheus'
``rate()`` takes such resets in its stride.

Per-port counting. The gateway does not count per port; ``PortCounters`` does,
from the batches a caller hands it after processing them: received packets
and their wire bytes by ``port``, sent packets and their bytes by
``out_port`` (rows that leave: ``out_port >= 0`` and not dropped), drops by
ingress port and reason. Each is one ``np.bincount``. The batches the gateway
sends of its own accord (``Gateway.process``'s return value: ARP requests,
packets released once their neighbour answered) are counted with
``received=False``: they were not received, or were counted when they were::

    ports = PortCounters()
    sent = gateway.process(batch, now)
    ports.count(batch)
    for extra in sent:
        ports.count(extra, received=False)
    text = render(gateway, ports=ports)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from portico import drops
from portico.batch import Batch

if TYPE_CHECKING:
    from portico.datapath.gateway import Gateway

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RX, TX = "rx", "tx"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_KINDS = ("counter", "gauge", "untyped")

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


class PortCounters:
    """Packets, bytes and drops per gateway port, counted batch by batch (see the module).

    ``packets``/``bytes`` are (2, n) int64 arrays: row 0 received (``rx``), row 1
    sent (``tx``), column = port id; ``drops`` is (n, 256): ingress port by drop
    reason code. They grow to the largest port id seen.
    """

    def __init__(self) -> None:
        self.packets = np.zeros((2, 0), dtype=np.int64)
        self.bytes = np.zeros((2, 0), dtype=np.int64)
        self.drops = np.zeros((0, 256), dtype=np.int64)

    def _grow(self, ports: int) -> None:
        have = self.packets.shape[1]
        if ports <= have:
            return
        more = ports - have
        self.packets = np.pad(self.packets, ((0, 0), (0, more)))
        self.bytes = np.pad(self.bytes, ((0, 0), (0, more)))
        self.drops = np.pad(self.drops, ((0, more), (0, 0)))

    def count(self, batch: Batch, *, received: bool = True) -> None:
        """Count a processed batch: what it received (unless ``received=False``), what
        leaves, and what was dropped."""
        meta = batch.meta[: batch.count]
        port = meta["port"].astype(np.intp)
        out = meta["out_port"].astype(np.intp)
        drop = meta["drop"].astype(np.intp)
        leaving = (out >= 0) & (drop == 0)
        arrived = port >= 0
        dropped = arrived & (drop != 0)
        top = max(int(port.max(initial=-1)), int(out[leaving].max(initial=-1))) + 1
        self._grow(top)
        n = self.packets.shape[1]
        if received:
            self.packets[0] += np.bincount(port[arrived], minlength=n)
            self.bytes[0] += np.bincount(port[arrived], weights=meta["wire_length"][arrived],
                                         minlength=n).astype(np.int64)
        self.packets[1] += np.bincount(out[leaving], minlength=n)
        self.bytes[1] += np.bincount(out[leaving], weights=meta["length"][leaving],
                                     minlength=n).astype(np.int64)
        if dropped.any():
            self.drops += np.bincount(port[dropped] * 256 + drop[dropped],
                                      minlength=n * 256).reshape(n, 256)

    def ports(self) -> list[int]:
        """The port ids anything was counted for."""
        seen = (self.packets.sum(axis=0) + self.drops.sum(axis=1)) > 0
        return [int(p) for p in np.flatnonzero(seen)]

    def get(self, port: int, direction: str = RX) -> tuple[int, int]:
        """(packets, bytes) of ``port`` in ``direction`` (``rx`` or ``tx``)."""
        row = _direction(direction)
        if not 0 <= port < self.packets.shape[1]:
            return 0, 0
        return int(self.packets[row, port]), int(self.bytes[row, port])

    def drops_of(self, port: int) -> dict[str, int]:
        """Drops of packets received on ``port``, by reason name."""
        if not 0 <= port < self.drops.shape[0]:
            return {}
        return {drops.name(code): int(n) for code, n in enumerate(self.drops[port]) if n}


def _direction(direction: str) -> int:
    if direction not in (RX, TX):
        raise ValueError(f"direction: {direction!r} is not {RX!r} or {TX!r}")
    return 0 if direction == RX else 1


# ------------------------------------------------------------------ the format
def escape_label_value(value: str) -> str:
    """A label value as the text format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers as integers, floats in full, ``NaN``, ``+Inf``, ``-Inf``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1 << 53:
        return str(int(v))
    return repr(v)


class Exposition:
    """Families of samples, written in the text format; names are checked as they come."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One metric family: its HELP, its TYPE and every sample (none: just the header)."""
        if not _METRIC_NAME.match(name):
            raise ValueError(f"metric name {name!r} is not [a-zA-Z_:][a-zA-Z0-9_:]*")
        if name in self._names:
            raise ValueError(f"metric {name!r} is written twice")
        if kind not in _KINDS:
            raise ValueError(f"metric {name}: type {kind!r} is not one of {', '.join(_KINDS)}")
        self._names.add(name)
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(name, labels)} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n" if self._lines else ""


def _labels(name: str, labels: Labels) -> str:
    if not labels:
        return ""
    for label in labels:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"metric {name}: label name {label!r} is not allowed")
    inner = ",".join(f'{label}="{escape_label_value(str(v))}"' for label, v in labels.items())
    return "{" + inner + "}"


# ------------------------------------------------------------------ the gateway
def render(gateway: Gateway, *, ports: PortCounters | None = None,
           extra: dict[str, float] | None = None) -> str:
    """Every counter of ``gateway`` (and of ``ports``) in the text format. ``extra``: more
    samples by name (the caller's: config revision, uptime, scrape time), each its own
    family without labels: a counter if the name ends in ``_total``, else a gauge. A
    name that is not a metric name, or is one of the gateway's, raises ``ValueError``."""
    out = Exposition()
    out.family("portico_generation", "gauge", "The config generation the gateway runs.",
               [({}, gateway.topology.generation)])
    _pipeline(out, gateway)
    if ports is not None:
        _ports(out, gateway, ports)
    _datapath(out, gateway)
    _tables(out, gateway)
    for name, value in (extra or {}).items():
        kind = "counter" if name.endswith("_total") else "gauge"
        out.family(name, kind, "Supplied by the caller.", [({}, value)])
    return out.text()


def _events(out: Exposition, name: str, help_text: str, counters: Mapping[str, int]) -> None:
    out.family(name, "counter", help_text,
               [({"event": event}, value) for event, value in counters.items()])


def _pipeline(out: Exposition, gateway: Gateway) -> None:
    counters = gateway.pipeline.counters
    out.family("portico_stage_calls_total", "counter",
               "Times a pipeline stage ran (once per batch it had packets in).",
               [({"stage": s}, c.calls) for s, c in counters.items()])
    out.family("portico_stage_packets_total", "counter",
               "Packets a pipeline stage processed (flow-cache misses and packets that "
               "must see the stages).",
               [({"stage": s}, c.packets) for s, c in counters.items()])
    out.family("portico_stage_seconds_total", "counter",
               "Time a pipeline stage spent processing, in seconds.",
               [({"stage": s}, c.nanoseconds / 1e9) for s, c in counters.items()])
    out.family("portico_stage_drops_total", "counter",
               "Packets a pipeline stage dropped, by reason.",
               [({"stage": s, "reason": reason}, n)
                for s, c in counters.items() for reason, n in sorted(c.drops.items())])


def _ports(out: Exposition, gateway: Gateway, ports: PortCounters) -> None:
    names = {p.id: name for name, p in gateway.config.ports.items()}
    ids = sorted(set(names) | set(ports.ports()))
    label = {i: names.get(i, str(i)) for i in ids}
    out.family("portico_port_packets_total", "counter",
               "Packets received (rx) and sent (tx) on a gateway port.",
               [({"port": label[i], "direction": d}, ports.get(i, d)[0])
                for i in ids for d in (RX, TX)])
    out.family("portico_port_bytes_total", "counter",
               "Bytes received (rx, as on the wire) and sent (tx) on a gateway port.",
               [({"port": label[i], "direction": d}, ports.get(i, d)[1])
                for i in ids for d in (RX, TX)])
    out.family("portico_port_drops_total", "counter",
               "Packets received on a gateway port and dropped, by reason.",
               [({"port": label[i], "reason": reason}, n)
                for i in ids for reason, n in sorted(ports.drops_of(i).items())])


def _datapath(out: Exposition, gateway: Gateway) -> None:
    counters = dict(gateway.datapath.counters)
    out.family("portico_datapath_packets_total", "counter",
               "Packets the datapath has been given.", [({}, counters.pop("packets", 0))])
    _events(out, "portico_datapath_events_total",
            "Datapath outcomes: cache hits, misses (forced included), forced (must see the "
            "stages), uncacheable.", counters)
    cache = gateway.cache
    if cache is None:
        return
    c = cache.counters
    hits, misses = c.pop("hits"), c.pop("misses")
    out.family("portico_flow_cache_hits_total", "counter",
               "Flow-cache lookups that found a current entry.", [({}, hits)])
    out.family("portico_flow_cache_misses_total", "counter",
               "Flow-cache lookups that found none.", [({}, misses)])
    out.family("portico_flow_cache_hit_ratio", "gauge",
               "Flow-cache hits per lookup since the start (NaN before the first lookup).",
               [({}, hits / (hits + misses) if hits + misses else math.nan)])
    out.family("portico_flow_cache_entries", "gauge",
               "Occupied flow-cache slots (stale entries not yet freed included).",
               [({}, len(cache))])
    out.family("portico_flow_cache_capacity", "gauge", "Flow-cache slots.",
               [({}, cache.capacity)])
    _events(out, "portico_flow_cache_events_total",
            "Flow-cache events: insertions, evictions, expirations, invalidations, "
            "insert failures.", c)


def _tables(out: Exposition, gateway: Gateway) -> None:
    out.family("portico_nat_bindings", "gauge",
               "NAT bindings held (static ones and expired ones not yet freed included).",
               [({}, len(gateway.nat))])
    out.family("portico_conntrack_connections", "gauge",
               "Tracked connections held (expired ones not yet freed included).",
               [({}, len(gateway.conns))])
    out.family("portico_neighbours", "gauge", "Neighbour (ARP/ND) entries, static and learned.",
               [({}, len(gateway.neighbours))])
    pending = gateway.pending.counters()
    out.family("portico_pending_packets", "gauge", "Packets waiting for a neighbour.",
               [({}, pending.pop("waiting"))])
    out.family("portico_pending_neighbours", "gauge", "Neighbours packets are waiting for.",
               [({}, pending.pop("neighbours"))])
    _events(out, "portico_nat_events_total", "NAT table events.", gateway.nat.counters())
    _events(out, "portico_conntrack_events_total", "Connection-tracking events.",
            gateway.conns.counters())
    neighbours = gateway.neighbours.counters()
    for now in ("static", "dynamic"):  # sizes, not events: portico_neighbours has them
        neighbours.pop(now, None)
    _events(out, "portico_neighbour_events_total", "Neighbour-table events.", neighbours)
    _events(out, "portico_pending_events_total",
            "Events of the queue of packets waiting for a neighbour.", pending)
    _events(out, "portico_gateway_events_total",
            "Packets the gateway held, refused to hold, released, and solicitations it sent.",
            gateway.counters)


__all__ = ["CONTENT_TYPE", "Exposition", "PortCounters", "escape_label_value", "format_value",
           "render"]
