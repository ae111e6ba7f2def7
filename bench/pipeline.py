"""Workload ``pipeline-hit``: the datapath's hit path, parse → flow cache → apply, at 100k flows.

Portico runs ``portico.datapath.datapath.Datapath.process`` over batches of the
generated pool (64-byte IPv4 TCP/UDP, 100k flows), with the flow cache warmed
by one untimed pass: every packet then hits, and gets the action its flow's
stages decided, applied in one compiled step. The stages here are
representative, not the real ones (those arrive with the rest of the datapath
issue): a router that sends everything out of port 1 and decrements the TTL,
and a source NAT to ``NAT_ADDRESS`` with the source port of ``nat_port``.
Only the decision they leave in the cache matters on the hit path, and that is
what routing + NAT decide for a flow.

Peers do the same per packet in their own idiom, with a dict as their flow
cache (warmed by one untimed call): parse to the 5-tuple, look the flow up,
rewrite the source address and port, decrement the TTL, fix the checksums,
produce the packet. Before any figure is kept, Portico's output packets are
checked equal to the ``struct`` peer's, byte for byte, and so are dpkt's and
Scapy's on their samples.

Packets are rewritten in place, so each timed pass first restores the pool
from a pristine copy, as a port would deliver fresh packets; the restore is
not timed.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np

from bench.timing import median_seconds
from bench.workloads import NAT_ADDRESS, MismatchError, bench_spec, make_pool, nat_port, views

TARGET_PPS = (256, 5.0)  # issue 4: pipeline-hit >= 5 Mpps at batch 256
RATIO_TARGETS = {"scapy": 1000.0, "dpkt": 50.0}
PEER_NAMES = ("struct", "dpkt", "scapy")
OUT_PORT = 1


@dataclass(frozen=True)
class PipelineSettings:
    packets: int = 1 << 16
    flows: int = 100_000
    batches: tuple[int, ...] = (256, 4096)
    repeats: int = 5
    samples: tuple[tuple[str, int], ...] = (("struct", 65_536), ("dpkt", 20_000),
                                            ("scapy", 2_000))


FULL_PIPELINE = PipelineSettings()
QUICK_PIPELINE = PipelineSettings(packets=1 << 14, repeats=3,
                                  samples=(("struct", 16_384), ("dpkt", 5_000), ("scapy", 500)))


# ---------------------------------------------------------------- Portico's representative stages
def nat_ports(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
              proto: np.ndarray) -> np.ndarray:
    """``bench.workloads.nat_port`` over arrays (the same numbers, vectorized)."""
    u = np.uint64
    mixed = ((src.astype(u) * u(0x9E3779B1)) ^ (dst.astype(u) * u(0x85EBCA77))
             ^ ((sport.astype(u) << u(16)) | dport.astype(u)) ^ proto.astype(u)) & u(0xFFFFFFFF)
    return (1024 + mixed % u(65536 - 1024)).astype(np.int64)


class Router:
    NAME: ClassVar[str] = "router"
    NEXT: ClassVar[tuple[str, ...]] = ("snat",)
    DROPS: ClassVar[type[IntEnum] | None] = None

    def process(self, batch: Any, rows: np.ndarray, decision: np.ndarray, decided: Any) -> None:
        from portico.datapath.actions import Op

        decided.actions["ops"][rows] |= int(Op.OUTPUT | Op.DEC_TTL)
        decided.actions["out_port"][rows] = OUT_PORT
        decision[:] = 0


class SourceNat:
    NAME: ClassVar[str] = "snat"
    NEXT: ClassVar[tuple[str, ...]] = ()
    DROPS: ClassVar[type[IntEnum] | None] = None

    def process(self, batch: Any, rows: np.ndarray, decision: np.ndarray, decided: Any) -> None:
        from portico.datapath.actions import Op

        m = batch.meta
        ported = rows[np.isin(m["protocol"][rows], (6, 17)) & (m["frag"][rows] == 0)]
        decided.actions["ops"][ported] |= int(Op.SET_IP_SRC | Op.SET_SPORT)
        decided.actions["ip_src"][ported] = NAT_ADDRESS
        decided.actions["sport"][ported] = nat_ports(m["src4"][ported], m["dst4"][ported],
                                                     m["sport"][ported], m["dport"][ported],
                                                     m["protocol"][ported])
        decision[:] = -1


def make_datapath(flows: int) -> Any:
    from portico.datapath.datapath import Datapath
    from portico.datapath.flowcache import FlowCache, capacity_for
    from portico.datapath.pipeline import Pipeline

    pipeline = Pipeline([Router(), SourceNat()], entry="router")
    return Datapath(pipeline, cache=FlowCache(capacity_for(flows), idle_timeout=1 << 62, seed=5))


# ---------------------------------------------------------------- peers
_IPV4 = struct.Struct("!BBHHHBBH4s4s")


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _update(csum: int, old: int, new: int, bits: int) -> int:
    total = ~csum & 0xFFFF
    for shift in range(0, bits, 16):
        total += (~(old >> shift) & 0xFFFF) + ((new >> shift) & 0xFFFF)
    return ~_fold(total) & 0xFFFF


def hit_struct(frames: Sequence[bytes], flows: dict[tuple[int, ...], int]) -> list[bytes]:
    out = []
    for frame in frames:
        packet = bytearray(frame)
        ethertype = int.from_bytes(frame[12:14], "big")
        l3 = 14
        if ethertype == 0x8100:
            ethertype, l3 = int.from_bytes(frame[16:18], "big"), 18
        if ethertype != 0x0800:
            out.append(bytes(packet))
            continue
        ver_ihl, _, _, _, frag, ttl, proto, ip_sum, src_b, dst_b = _IPV4.unpack_from(frame, l3)
        src, dst = int.from_bytes(src_b, "big"), int.from_bytes(dst_b, "big")
        word = ttl << 8 | proto
        ip_sum = _update(ip_sum, word, word - 0x100, 16)
        packet[l3 + 8] = ttl - 1
        if proto in (6, 17) and frag & 0x3FFF == 0:
            l4 = l3 + (ver_ihl & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", frame, l4)
            key = (src, dst, proto, sport, dport)
            port = flows.get(key)
            if port is None:  # a miss: "run the stages" and remember the decision
                port = flows[key] = nat_port(src, dst, sport, dport, proto)
            ip_sum = _update(ip_sum, src, NAT_ADDRESS, 32)
            packet[l3 + 12 : l3 + 16] = NAT_ADDRESS.to_bytes(4, "big")
            at = l4 + (16 if proto == 6 else 6)
            l4_sum = int.from_bytes(frame[at : at + 2], "big")
            if proto == 6 or l4_sum:
                l4_sum = _update(_update(l4_sum, src, NAT_ADDRESS, 32), sport, port, 16)
                packet[at : at + 2] = (l4_sum or (0xFFFF if proto == 17 else 0)).to_bytes(2, "big")
            packet[l4 : l4 + 2] = port.to_bytes(2, "big")
        packet[l3 + 10 : l3 + 12] = ip_sum.to_bytes(2, "big")
        out.append(bytes(packet))
    return out


def hit_dpkt(frames: Sequence[bytes], flows: dict[tuple[int, ...], int]) -> list[bytes]:
    import dpkt

    out = []
    for frame in frames:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP):
            out.append(frame)
            continue
        ip.ttl -= 1
        l4 = ip.data
        if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) and not (ip.mf or ip.offset):
            src, dst = int.from_bytes(ip.src, "big"), int.from_bytes(ip.dst, "big")
            key = (src, dst, ip.p, l4.sport, l4.dport)
            port = flows.get(key)
            if port is None:
                port = flows[key] = nat_port(src, dst, l4.sport, l4.dport, ip.p)
            l4.sport = port
            ip.src = NAT_ADDRESS.to_bytes(4, "big")
            if isinstance(l4, dpkt.tcp.TCP) or l4.sum:
                l4.sum = 0  # dpkt recomputes a zero checksum when it serialises
        ip.sum = 0
        out.append(bytes(eth))
    return out


def hit_scapy(frames: Sequence[bytes], flows: dict[tuple[int, ...], int]) -> list[bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    out = []
    for frame in frames:
        packet = Ether(frame)
        ip = packet.getlayer(IP)
        if ip is None:
            out.append(frame)
            continue
        ip.ttl -= 1
        l4 = ip.payload
        if isinstance(l4, TCP | UDP) and ip.frag == 0 and not ip.flags.MF:
            src = int.from_bytes(bytes(map(int, ip.src.split("."))), "big")
            dst = int.from_bytes(bytes(map(int, ip.dst.split("."))), "big")
            key = (src, dst, ip.proto, l4.sport, l4.dport)
            port = flows.get(key)
            if port is None:
                port = flows[key] = nat_port(src, dst, l4.sport, l4.dport, ip.proto)
            l4.sport = port
            ip.src = ".".join(str(b) for b in NAT_ADDRESS.to_bytes(4, "big"))
            if isinstance(l4, TCP) or l4.chksum:
                del l4.chksum
        del ip.chksum
        out.append(bytes(packet))
    return out


PEERS: dict[str, Callable[[Sequence[bytes], dict[tuple[int, ...], int]], list[bytes]]] = {
    "struct": hit_struct, "dpkt": hit_dpkt, "scapy": hit_scapy}


# ---------------------------------------------------------------- the run
def run_pipeline(settings: PipelineSettings,
                 status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    status("pipeline-hit: generating traffic")
    pool = make_pool(bench_spec(settings.packets, flows=settings.flows))
    frames = pool.frames
    pristine_data = pool.batch.data.copy()
    pristine_meta = pool.batch.meta.copy()

    def restore() -> None:
        pool.batch.data[:] = pristine_data
        pool.batch.meta[:] = pristine_meta

    samples = dict(settings.samples)
    peers: dict[str, float] = {}
    outputs: dict[str, list[bytes]] = {}
    for name in PEER_NAMES:
        status(f"pipeline-hit: {name}")
        sample = frames[: min(samples[name], len(frames))]
        flows: dict[tuple[int, ...], int] = {}
        PEERS[name](sample, flows)  # warm the peer's flow cache
        peer = functools.partial(PEERS[name], sample, flows)
        seconds, result = median_seconds(peer, max(1, settings.repeats // 2))
        peers[name] = len(sample) / seconds
        outputs[name] = result  # type: ignore[assignment]
    entries = []
    for size in settings.batches:
        status(f"pipeline-hit: portico at batch {size}")
        datapath = make_datapath(settings.flows)
        cut = [view for view, _ in views(pool.batch, size)]
        restore()
        for now, view in enumerate(cut, start=1):  # warm the cache: every flow's entry made
            datapath.process(view, now)
        warm_misses = datapath.counters["misses"]
        warm_packets, warm_hits = datapath.counters["packets"], datapath.counters["hits"]
        restore()

        def once(cut: list[Any] = cut, datapath: Any = datapath) -> None:
            for view in cut:
                datapath.process(view, 2)

        times = []
        for _ in range(settings.repeats):
            restore()
            times.append(median_seconds(once, 1)[0])
        output = [pool.batch.packet(row) for row in range(pool.count)]
        _check(output, outputs)
        timed = datapath.counters["packets"] - warm_packets
        hits = datapath.counters["hits"] - warm_hits
        entries.append({
            "name": "pipeline-hit", "batch": size, "packets": pool.count,
            "flows": settings.flows, "pps": round(pool.count / float(np.median(times))),
            "hit_rate": round(hits / max(1, timed), 4), "warm_misses": warm_misses,
            "peers": {name: round(value) for name, value in peers.items()},
            "peer_packets": {name: min(samples[name], len(frames)) for name in PEER_NAMES},
            "ratios": {name: round(pool.count / float(np.median(times)) / value, 1)
                       for name, value in peers.items()},
        })
    return entries


def _check(portico: list[bytes], outputs: dict[str, list[bytes]]) -> None:
    """Portico and every peer produced the struct peer's packets, byte for byte."""
    reference = outputs["struct"]
    for name, produced in [("portico", portico), *outputs.items()]:
        for k, (got, want) in enumerate(zip(produced, reference, strict=False)):
            if got != want:
                raise MismatchError(f"pipeline-hit: {name} packet {k} differs from struct's: "
                                    f"{got.hex()} != {want.hex()}")


def format_pipeline(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "pipeline-hit"]
    if not rows:
        return []
    lines = ["", f"pipeline-hit: parse -> flow cache -> apply (route + SNAT decisions), "
             f"{rows[0]['flows']:,} flows, {rows[0]['packets']:,} packets; outputs checked "
             "equal to struct's", f"{'batch':>7}{'portico pps':>14}{'hit rate':>10}"
             + "".join(f"{n + ' pps':>13}" for n in PEER_NAMES)
             + "".join(f"{'x ' + n:>10}" for n in PEER_NAMES)]
    for e in rows:
        lines.append(f"{e['batch']:>7}{e['pps'] / 1e6:>12.2f} M{e['hit_rate']:>10.1%}"
                     + "".join(f"{e['peers'][n] / 1e3:>11.1f} k" for n in PEER_NAMES)
                     + "".join(f"{e['ratios'][n]:>10,.0f}" for n in PEER_NAMES))
    return lines


def pipeline_target_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    batch, mpps = TARGET_PPS
    for e in entries:
        if e["name"] != "pipeline-hit" or e["batch"] != batch:
            continue
        value = e["pps"] / 1e6
        lines.append(f"pipeline-hit >= {mpps:g} Mpps at batch {batch}: {value:.2f} Mpps, "
                     f"{'met' if value >= mpps else 'MISSED'} (representative route + SNAT "
                     "stages; the real stages are still to come)")
        for peer, ratio in RATIO_TARGETS.items():
            got = e["ratios"][peer]
            lines.append(f"pipeline-hit >= {ratio:g}x {peer} at batch {batch}: {got:,.0f}x, "
                         f"{'met' if got >= ratio else 'MISSED'}")
    return lines
