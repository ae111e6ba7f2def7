"""Live ports, measured: round-trip time and forwarding rate through a Python forwarder.

The lab (``portico.lab``): a ``client`` and a ``server`` namespace, each joined
by a veth pair to a ``gw`` namespace. In ``gw`` runs one of

* ``kernel``: a Linux bridge over the two veth ends (the kernel's own path);
* ``socket``: the reference Python forwarder, plain packet sockets with one
  ``recv`` and one ``send`` per frame (the kernel wakes it per frame, as
  TPACKET_V2 would);
* a Portico forwarder (``forward``): one process, one thread, two
  ``AfPacketPort``s, every frame received on one sent out of the other in the
  same Batch (``receive`` then ``send``), waiting with ``afpacket.wait``. Its
  variants are the port's receive strategies: ``waker`` (the default: reads
  the open block, woken by the waker socket while the link is quiet),
  ``slices`` (reads the open block, no waker: the fanout default), ``retire``
  (retired blocks only, the plain TPACKET_V3 behaviour of the first prototype).

Round trip: the client sends ICMP echo requests to the server (the server's
kernel answers) from a raw socket, one at a time, ``interval`` apart, and
times each reply; p50/p90/p99 in ms. Rate: a sender in the client namespace
pushes 64-byte frames (a Portico port, batches of 256, for ``seconds``)
towards a MAC nobody has, so the server's kernel drops them at once;
``offered_pps`` is what left the sender, ``forwarded_pps`` what reached the
server interface (its receive counter). Drain (Portico forwarders only): with
the forwarder stopped (SIGSTOP), ``--drain`` frames are queued in its ring
(1024 blocks); ``drain_pps`` is how fast it empties it once continued, with
nobody else competing for the CPUs.

On a 2-core machine the sender, the forwarder and the kernel's softirq work
share the cores, so the live rates are a floor for the forwarder, not its
ceiling. Figures from this machine are in ``portico/io/afpacket.py``'s
module documentation.

Issue 6's side-by-side figures (a C generator; the kernel, nftables and
``portico up`` forwarding on one core) are the ``live-forward`` workload,
``bench/live_forward.py``, which uses this module's pinger (``round_trips``)
and interface counters.

Usage: ``python -m bench.live [--pings N] [--seconds S] [--variant V] [--json]``
(as root; the lab is removed afterwards, whatever happens).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from portico.batch import Batch
from portico.lab import Lab

VARIANTS = ("kernel", "socket", "waker", "slices", "retire")
PORT_VARIANTS = ("waker", "slices", "retire")
CLIENT_IP, SERVER_IP = "10.77.0.1", "10.77.0.2"
ROOT = Path(__file__).resolve().parents[1]


def topology() -> dict[str, Any]:
    return {
        "name": "live",
        "namespaces": ["client", "gw", "server"],
        "links": [
            {"name": "gc", "namespace": "gw", "ipv6": False,
             "peer": {"name": "c0", "namespace": "client", "ipv6": False,
                      "addresses": [f"{CLIENT_IP}/24"]}},
            {"name": "gs", "namespace": "gw", "ipv6": False,
             "peer": {"name": "s0", "namespace": "server", "ipv6": False,
                      "addresses": [f"{SERVER_IP}/24"]}},
        ],
    }


# ---------------------------------------------------------------- the forwarders
def forward(a: str, b: str, *, variant: str = "waker", batch: int = 256,
            block_count: int = 16) -> dict[str, Any]:
    """Forward frames between interfaces ``a`` and ``b`` until SIGTERM; the ports' counters."""
    from portico.io.afpacket import AfPacketPort, wait

    if variant == "socket":
        return forward_sockets(a, b)
    options: dict[str, Any] = {
        "waker": {},
        "slices": {"waker": False},
        "retire": {"waker": False, "read_open_block": False},
    }[variant]
    options["block_count"] = block_count
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    with AfPacketPort(a, port=0, **options) as left, AfPacketPort(b, port=1, **options) as right:
        from_left, from_right = Batch(batch), Batch(batch)
        ports = [left, right]
        print("ready", flush=True)
        while not stop:
            moved = 0
            if left.receive(from_left):
                right.send(from_left)
                moved += 1
            if right.receive(from_right):
                left.send(from_right)
                moved += 1
            if not moved:
                wait(ports, 0.2)
        return {"left": left.statistics().as_dict(), "right": right.statistics().as_dict()}


def forward_sockets(a: str, b: str) -> dict[str, Any]:
    """The reference: plain packet sockets, one ``recv`` and one ``send`` per frame in Python.

    The kernel wakes the reader for every frame (as TPACKET_V2 would): the
    floor for a Python process that is woken per frame, without batches.
    """
    ignore_outgoing = 23
    sockets = []
    for name in (a, b):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(263, ignore_outgoing, 1)
        sock.bind((name, 0x0003))
        sock.setblocking(False)
        sockets.append(sock)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN)
    other = {sockets[0].fileno(): sockets[1], sockets[1].fileno(): sockets[0]}
    by_fd = {sock.fileno(): sock for sock in sockets}
    moved = 0
    print("ready", flush=True)
    while not stop:
        for fd, _events in poller.poll(200):
            for _ in range(256):
                try:
                    frame = by_fd[fd].recv(65536)
                except BlockingIOError:
                    break
                other[fd].send(frame)
                moved += 1
    for sock in sockets:
        sock.close()
    return {"moved": moved}


def _forwarder_main(argv: Sequence[str]) -> int:
    a, b, variant, blocks = argv
    result = forward(a, b, variant=variant, block_count=int(blocks))
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- the measurements
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"portico-live"
    return body[:2] + struct.pack("!H", _checksum(body)) + body[4:]


def round_trips(lab: Lab, *, pings: int, interval: float, target: str = SERVER_IP,
                namespace: str = "client", timeout: float = 1.0) -> list[float]:
    """ICMP echo round trips from ``namespace`` to ``target``, in ms; lost ones are left out.

    Five untimed echoes go first (ARP, a forwarder's first kernel calls); each
    echo waits ``timeout`` seconds at most for its reply.
    """
    with lab.inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    times = []
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        # Warm up: ARP, the forwarder's first kernel calls.
        for seq in range(pings + 5):
            sent = time.perf_counter()
            sock.sendto(_echo(ident, seq), (target, 0))
            deadline = sent + timeout
            while (left := deadline - time.perf_counter()) > 0:
                if not poller.poll(left * 1000):
                    break
                reply = sock.recv(2048)
                header = (reply[0] & 0x0F) * 4
                kind, _code, _sum, got_ident, got_seq = struct.unpack_from("!BBHHH", reply, header)
                if kind == 0 and got_ident == ident and got_seq == seq:
                    if seq >= 5:
                        times.append((time.perf_counter() - sent) * 1000)
                    break
            time.sleep(interval)
    finally:
        sock.close()
    return times


def interface_counter(lab: Lab, namespace: str, name: str, counter: str) -> int:
    """An interface's kernel counter (``rx_packets``...), read in its namespace's sysfs."""
    done = lab.run(namespace, "cat", f"/sys/class/net/{name}/statistics/{counter}")
    return int(done.stdout)


def blast(lab: Lab, seconds: float, *, size: int = 64, batch: int = 256,
          count: int | None = None) -> int:
    """Send frames from the client for ``seconds`` (or ``count`` of them); how many left."""
    from portico.io.afpacket import AfPacketPort

    # A local experimental ethertype: no L3 code (br_netfilter would drop a bogus IPv4 header).
    frame = bytes.fromhex("02ffffffff01" "0200000000c0" "88b5") + bytes(size - 14)
    frames = Batch.from_packets([frame] * batch)
    with lab.inside("client"):
        sender = AfPacketPort("c0", port=0, promiscuous=False)
    sent = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end and (count is None or sent < count):
            sent += sender.send(frames)
    finally:
        sender.close()
    return sent


def _drain(lab: Lab, forwarder: subprocess.Popen[str], frames: int) -> tuple[float, int]:
    """Queue ``frames`` while the forwarder is stopped, then time it emptying its ring.

    The forwarder rate without a sender competing for the CPUs: frames per
    second from SIGCONT to the last frame reaching the server.
    """
    forwarder.send_signal(signal.SIGSTOP)
    try:
        queued = blast(lab, 60.0, count=frames)
        time.sleep(0.2)
        before = interface_counter(lab, "server", "s0", "rx_packets")
    finally:
        started = time.monotonic()
        forwarder.send_signal(signal.SIGCONT)
    last_change, seen = started, before
    while time.monotonic() - last_change < 0.3:
        time.sleep(0.005)
        now_seen = interface_counter(lab, "server", "s0", "rx_packets")
        if now_seen != seen:
            seen, last_change = now_seen, time.monotonic()
    moved = seen - before
    return moved / max(last_change - started, 1e-9), queued - moved


def measure(variant: str, *, pings: int, interval: float, seconds: float,
            drain: int = 0) -> dict[str, Any]:
    prefix = f"pl{os.getpid() % 0xFFFF:04x}"
    with Lab(topology(), prefix=prefix) as lab:
        forwarder: subprocess.Popen[str] | None = None
        if variant == "kernel":
            lab.run("gw", "ip", "link", "add", "br0", "type", "bridge")
            for name in ("gc", "gs", "br0"):
                if name != "br0":
                    lab.run("gw", "ip", "link", "set", name, "master", "br0")
                lab.run("gw", "ip", "link", "set", name, "up")
        else:
            forwarder = subprocess.Popen(
                lab.exec_args("gw", sys.executable, "-m", "bench.live", "--forwarder",
                              "gc", "gs", variant, "1024" if drain else "64"),
                stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert forwarder.stdout is not None
            if forwarder.stdout.readline().strip() != "ready":
                raise RuntimeError("the forwarder did not start")
        try:
            times = round_trips(lab, pings=pings, interval=interval)
            before = interface_counter(lab, "server", "s0", "rx_packets")
            started = time.monotonic()
            offered = blast(lab, seconds)
            elapsed = time.monotonic() - started
            time.sleep(0.2)
            arrived = interface_counter(lab, "server", "s0", "rx_packets") - before
            drained: tuple[float, int] | None = None
            if drain and forwarder is not None and variant != "socket":
                drained = _drain(lab, forwarder, drain)
        finally:
            counters: dict[str, Any] = {}
            if forwarder is not None:
                forwarder.send_signal(signal.SIGTERM)
                out, _ = forwarder.communicate(timeout=30)
                lines = out.strip().splitlines()
                counters = json.loads(lines[-1]) if lines else {}
    result: dict[str, Any] = {"variant": variant, "pings": len(times)}
    if times:
        ordered = sorted(times)
        result.update(
            rtt_p50_ms=round(statistics.median(ordered), 4),
            rtt_p90_ms=round(ordered[int(0.9 * (len(ordered) - 1))], 4),
            rtt_p99_ms=round(ordered[int(0.99 * (len(ordered) - 1))], 4))
    result.update(offered_pps=round(offered / elapsed), forwarded_pps=round(arrived / elapsed))
    if drained is not None:
        result.update(drain_pps=round(drained[0]), drain_lost=drained[1])
    if counters:
        result["forwarder"] = counters
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--forwarder":
        return _forwarder_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between pings")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the rate test")
    parser.add_argument("--variant", action="append", choices=VARIANTS)
    parser.add_argument("--drain", type=int, default=150_000, metavar="FRAMES",
                        help="frames queued for the forwarder-alone rate (0: skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [measure(v, pings=args.pings, interval=args.interval, seconds=args.seconds,
                       drain=args.drain)
               for v in (args.variant or VARIANTS)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'variant':<10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'offered':>12}"
          f"{'forwarded':>12}{'drain pps':>12}")
    for r in results:
        drain = f"{r['drain_pps']:>12,}" if "drain_pps" in r else f"{'-':>12}"
        print(f"{r['variant']:<10}{r.get('rtt_p50_ms', float('nan')):>10.3f}"
              f"{r.get('rtt_p90_ms', float('nan')):>10.3f}"
              f"{r.get('rtt_p99_ms', float('nan')):>10.3f}"
              f"{r['offered_pps']:>12,}{r['forwarded_pps']:>12,}{drain}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
