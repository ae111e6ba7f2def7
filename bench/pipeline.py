"""Workloads ``pipeline-hit``, ``pipeline-miss``, ``pipeline-flows``: the gateway, end to end.

Portico here is the real datapath, ``portico.datapath.gateway.Gateway``, over
``BENCH_CONFIG``: one tenant whose switch is port 1 untagged, its router at
10.0.0.1/8 (the generated sources are 10.0.0.0/8), egress rules allowing TCP
and UDP from the container ``inside`` (a real rule list, so the classifier runs
on the miss path), SNAT to a /22 pool, and the provider uplink on port 0 with a
default route via a static neighbour. A packet from inside goes ingress ->
switch -> route -> firewall-out -> nat-out -> provider-route -> output and
leaves by port 0 with its source translated to its binding's external
endpoint, its TTL decremented, the uplink's MAC as source and the upstream
router's as destination, checksums patched. ``Gateway`` makes its NAT and
conntrack tables for 65,536 entries whatever ``flows`` says, so ``make_gateway``
builds the two for the flow count and puts them where the stages hold them.

The traffic is ``bench.workloads``' pool (64-byte IPv4 TCP/UDP, uniform over
the flows), its frames addressed to the tenant router's MAC and received on
the tenant's port (``as_inside``). Its TCP segments carry ACK only, and the
gateway's conntrack opens a connection only on a SYN (an ACK without one is
``invalid``), so the flows are *opened* first, untimed (``open_flows``): one
packet per flow, TCP ones turned into SYNs (``opening``), then the SYN+ACK of
each TCP flow sent back in by the uplink (``replies``: the SYN as it left, its
addresses, ports and MACs swapped), which takes its connection to SYN_RECV
(the SYN+ACKs themselves wait for the inside hosts' ARP, which no one answers
here; only what conntrack learned matters). The first ACK of each TCP flow,
in the untimed pass that follows, completes the handshake where the gateway
sends it to conntrack. The gateway's clock (``now`` and the packets'
timestamps) only moves forward (``Clock``).

* ``pipeline-hit``: timed passes over the pool after one untimed pass, every
  packet a hit (the hit rate is measured and reported). The flow cache is
  sized for ``headroom`` times the flows: at the gateway's own sizing (load up
  to 0.5) a few buckets overflow, and under this round-robin traffic every
  flow of such a bucket evicts the next (LRU), so their packets keep missing
  and each batch holding one runs the whole pipeline; that is a cache figure
  (``flowcache``), not the hit path's. Peers (``struct``, dpkt, Scapy) do the
  same per packet with a dict as their flow cache, keyed by the 5-tuple,
  holding the external endpoint: parse, look up, rewrite both MACs, decrement
  the TTL, rewrite the source address and port, patch (dpkt and Scapy:
  recompute) the checksums. Their dict is filled by one untimed call whose
  misses look the flow's binding up in ``Gateway.nat.live()`` (their
  "stages"). Checked: every packet Portico ran left by the uplink, and its
  output equals the struct peer's byte for byte, as do dpkt's and Scapy's
  on their samples.
* ``pipeline-miss``: every packet a new flow (the opening packets: TCP SYNs and
  first UDP datagrams, distinct sources), each timed pass on a fresh
  ``Gateway`` made untimed; new flows per second. Checked on the last pass:
  every packet left by the uplink, one NAT binding, connection and cache entry
  per flow, every checksum valid, and the first ``check`` packets equal to the
  struct peer's (given the gateway's bindings) byte for byte.
* ``pipeline-flows``: ``pipeline-hit``'s cost per packet at each flow count
  (every flow opened and cached; the timed packets drawn from all of them), and
  the memory of the per-flow state as allocated for the count: the flow cache
  (``FlowCache.nbytes``), the NAT binding table and the conntrack table (their
  arrays); beside them the datapath's action table (one action per SNAT flow:
  each has its own external port) and the process's RSS growth while the
  gateway was made and its flows opened. The tables are also made, not
  filled, for ``memory_flows`` (1M) flows at the gateway's own cache sizing:
  the issue's budget.

Packets are rewritten in place, so each timed pass first restores its packets
from a pristine copy, as a port would deliver fresh ones; that is not timed.
"""

from __future__ import annotations

import functools
import gc
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import median_seconds
from bench.workloads import MismatchError, bench_spec, make_pool, views

TARGET_PPS = (256, 5.0)  # issue 4: pipeline-hit >= 5 Mpps at batch 256
RATIO_TARGETS = {"scapy": 1000.0, "dpkt": 50.0}
MISS_TARGET = 300_000  # issue 4: pipeline-miss >= 300k new flows/s
MEMORY_TARGET = (1_000_000, 1 << 30)  # issue 4: 1M cached flows in <= 1 GiB
PEER_NAMES = ("struct", "dpkt", "scapy")

TENANT_ID = 1
UPLINK_PORT, TENANT_PORT = 0, 1
ROUTER_MAC = "02:00:00:00:0a:01"  # the tenant router, on its switch
UPLINK_MAC = "02:00:00:00:01:01"  # the provider router, on the uplink
UPSTREAM_MAC = "02:00:00:00:01:fe"  # the upstream router 203.0.113.1 (static)
NAT_POOL = "198.51.100.0/22"  # 1024 addresses: ~64k ports each, far more than the flows
BENCH_CONFIG = f"""
ports:
  uplink: {{id: {UPLINK_PORT}}}
  inside: {{id: {TENANT_PORT}}}
provider:
  router:
    uplinks:
      - {{port: uplink, addresses: [203.0.113.2/24], mac: "{UPLINK_MAC}"}}
    routes:
      - {{prefix: 0.0.0.0/0, via: 203.0.113.1}}
    neighbours:
      - {{address: 203.0.113.1, mac: "{UPSTREAM_MAC}"}}
tenants:
  bench:
    id: {TENANT_ID}
    switches:
      lan: {{attach: [{{port: inside}}]}}
    router:
      interfaces:
        - {{switch: lan, addresses: [10.0.0.1/8], mac: "{ROUTER_MAC}"}}
      nat:
        snat:
          - {{source: 10.0.0.0/8, pool: [{NAT_POOL}]}}
      firewall:
        containers:
          inside: [10.0.0.0/8]
        egress:
          - {{id: out-tcp, priority: 10, action: allow, src: "container:inside", protocol: tcp}}
          - {{id: out-udp, priority: 20, action: allow, src: "container:inside", protocol: udp}}
        ingress:
          - {{id: in-default, priority: 1000, action: deny}}
"""
# What the peers write as the new Ethernet destination and source: the upstream
# router's MAC and the uplink's (a name of its own so a test can break it).
OUT_MACS = bytes.fromhex(UPSTREAM_MAC.replace(":", "") + UPLINK_MAC.replace(":", ""))

SYN, ACK = 0x02, 0x10
PACKET_NS = 1_000  # the clock's step between packets: 1 Mpps of synthetic time
START_NS = 1_000 * 1_000_000_000
SETTLE_NS = 5 * 1_000_000_000  # after the SYN+ACKs: past the hold queue's timeout (3 s)
OPEN_BATCH = 4096  # the (untimed) opening runs at this batch size


@dataclass(frozen=True)
class PipelineSettings:
    """``pipeline-hit``."""

    packets: int = 1 << 16
    flows: int = 100_000
    batches: tuple[int, ...] = (256, 4096)
    repeats: int = 5
    samples: tuple[tuple[str, int], ...] = (("struct", 65_536), ("dpkt", 20_000),
                                            ("scapy", 2_000))
    headroom: int = 2  # the flow cache is sized for this many times the flows


@dataclass(frozen=True)
class MissSettings:
    """``pipeline-miss``: ``flows`` new flows a timed pass, each pass on a fresh gateway."""

    flows: int = 1 << 15
    batches: tuple[int, ...] = (256, 4096)
    repeats: int = 3
    check: int = 4096  # rows compared with the struct peer's, byte for byte


@dataclass(frozen=True)
class FlowsSettings:
    """``pipeline-flows``: the hit path's cost per packet against the flows cached."""

    flows: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    packets: int = 1 << 16
    batches: tuple[int, ...] = (256,)
    repeats: int = 3
    check: int = 4096  # packets compared with the struct peer's, byte for byte
    headroom: int = 2
    memory_flows: int = 1_000_000  # tables also made (not filled) for this many flows


FULL_PIPELINE = PipelineSettings()
QUICK_PIPELINE = PipelineSettings(packets=1 << 14, repeats=3,
                                  samples=(("struct", 16_384), ("dpkt", 5_000), ("scapy", 500)))
FULL_MISS = MissSettings()
QUICK_MISS = MissSettings(repeats=2, check=2048)
FULL_FLOWS = FlowsSettings()
QUICK_FLOWS = FlowsSettings(flows=(1_000, 10_000, 100_000), packets=1 << 14, repeats=2,
                            check=2048)


# ---------------------------------------------------------------- the gateway
def bench_config() -> Any:
    from portico.control.model import parse_config

    return parse_config(BENCH_CONFIG)


def make_gateway(flows: int, *, headroom: int = 1, seed: int = 5) -> Any:
    """``Gateway(BENCH_CONFIG)`` with its flow cache sized for ``headroom * flows`` and
    its NAT and connection tables for ``flows`` (at least 65,536)."""
    from portico.datapath.gateway import Gateway

    capacity = max(flows, 1 << 16)
    return Gateway(bench_config(), flows=headroom * flows, seed=seed, connections=capacity,
                   bindings=capacity)


def drive(gateway: Any, cut: Sequence[Any], nows: Sequence[int]) -> None:
    """Every view of ``cut`` through the gateway, each at its ``now``."""
    for view, now in zip(cut, nows, strict=True):
        gateway.process(view, now)


class Clock:
    """The gateway's time, only ever forward: stamps batches, one packet every ``PACKET_NS``."""

    def __init__(self, start: int = START_NS) -> None:
        self.now = start

    def stamp(self, batch: Any, cut: Sequence[Any] = ()) -> list[int]:
        """Timestamp ``batch``'s rows from now on; the ``now`` of each view of ``cut``."""
        n = batch.count
        batch.meta["timestamp"][:n] = self.now + np.arange(n, dtype=np.int64) * PACKET_NS
        self.now += n * PACKET_NS
        return [int(view.meta["timestamp"][view.count - 1]) for view in cut]

    def wait(self, ns: int) -> None:
        self.now += ns


# ---------------------------------------------------------------- traffic
def as_inside(batch: Any) -> None:
    """Frames from the tenant's hosts: to the router's MAC, in by the tenant's port."""
    n = batch.count
    rows = np.arange(n)
    start = batch.meta["start"][:n].astype(np.int64)
    for k, byte in enumerate(bytes.fromhex(ROUTER_MAC.replace(":", ""))):
        batch.data[rows, start + k] = byte
    batch.meta["port"][:n] = TENANT_PORT


def _patch16(data: np.ndarray, rows: np.ndarray, at: np.ndarray, old: np.ndarray,
             new: np.ndarray) -> None:
    """RFC 1624: the checksum at ``at`` after a 16-bit word went from ``old`` to ``new``."""
    total = ((~((data[rows, at].astype(np.int64) << 8) | data[rows, at + 1]) & 0xFFFF)
             + (~old & 0xFFFF) + new)
    total = (total & 0xFFFF) + (total >> 16)
    total = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    data[rows, at] = total >> 8
    data[rows, at + 1] = total & 0xFF


def set_tcp_flags(batch: Any, rows: np.ndarray, flags: int) -> None:
    """Give parsed TCP ``rows`` exactly ``flags``, checksum patched."""
    data, l4 = batch.data, batch.meta["l4"][rows].astype(np.int64)
    old = (data[rows, l4 + 12].astype(np.int64) << 8) | data[rows, l4 + 13]
    _patch16(data, rows, l4 + 16, old, (old & 0xFF00) | flags)
    data[rows, l4 + 13] = flags


def _swap(data: np.ndarray, rows: np.ndarray, a: np.ndarray, b: np.ndarray, width: int) -> None:
    for k in range(width):
        first = data[rows, a + k]
        data[rows, a + k] = data[rows, b + k]
        data[rows, b + k] = first


def opening(flows: int, *, seed: int = 1, chunk: int = 1 << 16) -> Iterator[Any]:
    """One packet for each of the pool's ``flows`` flows, from inside, its TCP ones SYNs:
    Batches of ``chunk`` packets (1M flows in one would take ~450 MiB)."""
    from portico.datapath.stages.parse import parse
    from portico.gen import generate

    for batch in generate(bench_spec(flows, flows=flows, seed=seed), batch_size=chunk):
        as_inside(batch)
        parse(batch)
        tcp = np.flatnonzero(batch.meta["protocol"][: batch.count] == 6)
        set_tcp_flags(batch, tcp, SYN)
        yield batch


def replies(sent: Any) -> Any:
    """The SYN+ACK answering each TCP SYN of ``sent`` (a batch as the gateway sent it out),
    arriving on the uplink: MACs, addresses and ports swapped (no checksum changes)."""
    from portico.batch import Batch
    from portico.datapath.stages.parse import parse

    parse(sent)
    meta = sent.meta[: sent.count]
    rows = np.flatnonzero((meta["protocol"] == 6) & (meta["out_port"] == UPLINK_PORT))
    batch = Batch(max(1, len(rows)), slot_size=sent.slot_size, headroom=sent.headroom)
    batch.reset(len(rows))
    batch.data[: len(rows)] = sent.data[rows]
    batch.meta[: len(rows)] = sent.meta[rows]
    parse(batch)
    every = np.arange(len(rows))
    m = batch.meta[: len(rows)]
    start, l3, l4 = (m[c].astype(np.int64) for c in ("start", "l3", "l4"))
    _swap(batch.data, every, start, start + 6, 6)
    _swap(batch.data, every, l3 + 12, l3 + 16, 4)
    _swap(batch.data, every, l4, l4 + 2, 2)
    set_tcp_flags(batch, every, SYN | ACK)
    m["port"] = UPLINK_PORT
    return batch


def open_flows(gateway: Any, batches: Iterable[Any], clock: Clock) -> dict[str, int]:
    """Run ``batches`` (``opening``'s) and the SYN+ACKs of their TCP flows through
    ``gateway``, untimed; the batches are left as the gateway sent them."""
    opened = answered = 0
    for batch in batches:
        cut = [view for view, _ in views(batch, OPEN_BATCH)]
        drive(gateway, cut, clock.stamp(batch, cut))
        _check_sent("opening the flows", batch)
        answers = replies(batch)
        cut = [view for view, _ in views(answers, OPEN_BATCH)]
        drive(gateway, cut, clock.stamp(answers, cut))
        opened, answered = opened + batch.count, answered + answers.count
    clock.wait(SETTLE_NS)
    return {"flows": opened, "syn_acks": answered}


def bindings_of(gateway: Any) -> dict[tuple[int, int, int], tuple[int, int]]:
    """The gateway's NAT bindings: (protocol, inside address, inside port) -> outside."""
    return {(b.protocol, b.internal, b.internal_port): (b.external, b.external_port)
            for b in gateway.nat.live() if b.tenant == TENANT_ID and not b.static}


class Replay:
    """A batch run again and again: restored from its state when this was made (the
    packets as received) and restamped before each pass, untimed."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.data = batch.data.copy()
        self.meta = batch.meta.copy()

    def cut(self, size: int) -> list[Any]:
        return [view for view, _ in views(self.batch, size)]

    def reset(self, clock: Clock, cut: Sequence[Any]) -> list[int]:
        self.batch.data[:] = self.data
        self.batch.meta[:] = self.meta
        return clock.stamp(self.batch, cut)


# ---------------------------------------------------------------- peers
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
Flows = dict[tuple[int, ...], tuple[int, int]]
Bindings = dict[tuple[int, int, int], tuple[int, int]]


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _update(csum: int, old: int, new: int, bits: int) -> int:
    total = ~csum & 0xFFFF
    for shift in range(0, bits, 16):
        total += (~(old >> shift) & 0xFFFF) + ((new >> shift) & 0xFFFF)
    return ~_fold(total) & 0xFFFF


def hit_struct(frames: Sequence[bytes], flows: Flows, bindings: Bindings) -> list[bytes]:
    macs = OUT_MACS
    out = []
    for frame in frames:
        if frame[12:14] != b"\x08\x00":  # not untagged IPv4: not this workload's traffic
            out.append(frame)
            continue
        ver_ihl, _, _, _, frag, ttl, proto, ip_sum, src_b, dst_b = _IPV4.unpack_from(frame, 14)
        if proto not in (6, 17) or frag & 0x3FFF:
            out.append(frame)
            continue
        packet = bytearray(frame)
        src, dst = int.from_bytes(src_b, "big"), int.from_bytes(dst_b, "big")
        l4 = 14 + (ver_ihl & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", frame, l4)
        key = (src, dst, proto, sport, dport)
        found = flows.get(key)
        if found is None:  # a miss: "run the stages" (the NAT binding) and remember
            found = flows[key] = bindings[(proto, src, sport)]
        address, port = found
        packet[0:12] = macs
        word = ttl << 8 | proto
        ip_sum = _update(_update(ip_sum, word, word - 0x100, 16), src, address, 32)
        packet[22] = ttl - 1
        packet[24:26] = ip_sum.to_bytes(2, "big")
        packet[26:30] = address.to_bytes(4, "big")
        at = l4 + (16 if proto == 6 else 6)
        l4_sum = int.from_bytes(frame[at : at + 2], "big")
        if proto == 6 or l4_sum:  # a zero UDP checksum means "none": kept
            l4_sum = _update(_update(l4_sum, src, address, 32), sport, port, 16)
            packet[at : at + 2] = (l4_sum or (0xFFFF if proto == 17 else 0)).to_bytes(2, "big")
        packet[l4 : l4 + 2] = port.to_bytes(2, "big")
        out.append(bytes(packet))
    return out


def hit_dpkt(frames: Sequence[bytes], flows: Flows, bindings: Bindings) -> list[bytes]:
    import dpkt

    dst_mac, src_mac = OUT_MACS[:6], OUT_MACS[6:]
    out = []
    for frame in frames:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP):
            out.append(frame)
            continue
        l4 = ip.data
        if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) or ip.mf or ip.offset:
            out.append(frame)
            continue
        src, dst = int.from_bytes(ip.src, "big"), int.from_bytes(ip.dst, "big")
        key = (src, dst, ip.p, l4.sport, l4.dport)
        found = flows.get(key)
        if found is None:
            found = flows[key] = bindings[(ip.p, src, l4.sport)]
        address, port = found
        eth.dst, eth.src = dst_mac, src_mac
        ip.ttl -= 1
        ip.src = address.to_bytes(4, "big")
        l4.sport = port
        if isinstance(l4, dpkt.tcp.TCP) or l4.sum:
            l4.sum = 0  # dpkt recomputes a zero checksum when it serialises
        ip.sum = 0
        out.append(bytes(eth))
    return out


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def hit_scapy(frames: Sequence[bytes], flows: Flows, bindings: Bindings) -> list[bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    dst_mac, src_mac = _mac_text(OUT_MACS[:6]), _mac_text(OUT_MACS[6:])
    out = []
    for frame in frames:
        packet = Ether(frame)
        ip = packet.getlayer(IP)
        if ip is None:
            out.append(frame)
            continue
        l4 = ip.payload
        if not isinstance(l4, TCP | UDP) or ip.frag or ip.flags.MF:
            out.append(frame)
            continue
        src = int.from_bytes(bytes(map(int, ip.src.split("."))), "big")
        dst = int.from_bytes(bytes(map(int, ip.dst.split("."))), "big")
        key = (src, dst, ip.proto, l4.sport, l4.dport)
        found = flows.get(key)
        if found is None:
            found = flows[key] = bindings[(ip.proto, src, l4.sport)]
        address, port = found
        packet.dst, packet.src = dst_mac, src_mac
        ip.ttl -= 1
        ip.src = ".".join(str(b) for b in address.to_bytes(4, "big"))
        l4.sport = port
        if isinstance(l4, TCP) or l4.chksum:
            del l4.chksum
        del ip.chksum
        out.append(bytes(packet))
    return out


PEERS: dict[str, Callable[[Sequence[bytes], Flows, Bindings], list[bytes]]] = {
    "struct": hit_struct, "dpkt": hit_dpkt, "scapy": hit_scapy}


# ---------------------------------------------------------------- checks
def _check(name: str, portico: list[bytes], outputs: dict[str, list[bytes]]) -> None:
    """Portico and every peer produced the struct peer's packets, byte for byte."""
    reference = outputs["struct"]
    for who, produced in [("portico", portico), *outputs.items()]:
        for k, (got, want) in enumerate(zip(produced, reference, strict=False)):
            if got != want:
                raise MismatchError(f"{name}: {who} packet {k} differs from struct's: "
                                    f"{got.hex()} != {want.hex()}")


def _check_sent(name: str, batch: Any) -> None:
    """Every row of ``batch`` left by the uplink, none dropped or held."""
    from portico import drops

    meta = batch.meta[: batch.count]
    dropped = drops.count(meta["drop"])
    astray = int((meta["out_port"] != UPLINK_PORT).sum())
    if dropped or astray:
        raise MismatchError(f"{name}: of {batch.count} packets, {astray} did not leave by the "
                            f"uplink (drops: {dropped or 'none'})")


def _frames(batch: Any, rows: int) -> list[bytes]:
    return [batch.packet(row) for row in range(min(rows, batch.count))]


# ---------------------------------------------------------------- pipeline-hit
@dataclass
class Passes:
    seconds: float  # the median timed pass
    packets: int  # packets of the timed passes
    hits: int  # ... that hit the cache
    warm_misses: int  # misses of the untimed pass before them


def hit_passes(gateway: Any, replay: Replay, size: int, clock: Clock, repeats: int) -> Passes:
    """One untimed pass of ``replay`` in batches of ``size``, then ``repeats`` timed ones."""
    counters = gateway.datapath.counters
    cut = replay.cut(size)
    misses = counters["misses"]
    drive(gateway, cut, replay.reset(clock, cut))
    warm_misses = counters["misses"] - misses
    packets, hits = counters["packets"], counters["hits"]
    times = []
    for _ in range(repeats):
        nows = replay.reset(clock, cut)
        times.append(median_seconds(functools.partial(drive, gateway, cut, nows), 1)[0])
    return Passes(float(np.median(times)), counters["packets"] - packets,
                  counters["hits"] - hits, warm_misses)


def run_pipeline(settings: PipelineSettings,
                 status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    status("pipeline-hit: generating traffic")
    pool = make_pool(bench_spec(settings.packets, flows=settings.flows))
    as_inside(pool.batch)
    frames = pool.batch.packets()
    status(f"pipeline-hit: opening {settings.flows} flows")
    clock = Clock()
    gateway = make_gateway(settings.flows, headroom=settings.headroom)
    opened = open_flows(gateway, opening(settings.flows), clock)
    bindings = bindings_of(gateway)
    replay = Replay(pool.batch)

    samples = dict(settings.samples)
    peers: dict[str, float] = {}
    outputs: dict[str, list[bytes]] = {}
    for name in PEER_NAMES:
        status(f"pipeline-hit: {name}")
        sample = frames[: min(samples[name], len(frames))]
        flows: Flows = {}
        PEERS[name](sample, flows, bindings)  # fill the peer's flow cache
        peer = functools.partial(PEERS[name], sample, flows, bindings)
        seconds, result = median_seconds(peer, max(1, settings.repeats // 2))
        peers[name] = len(sample) / seconds
        outputs[name] = result  # type: ignore[assignment]
    entries = []
    for size in settings.batches:
        status(f"pipeline-hit: portico at batch {size}")
        passes = hit_passes(gateway, replay, size, clock, settings.repeats)
        _check_sent("pipeline-hit", pool.batch)
        _check("pipeline-hit", _frames(pool.batch, pool.count), outputs)
        pps = pool.count / passes.seconds
        entries.append({
            "name": "pipeline-hit", "batch": size, "packets": pool.count,
            "flows": settings.flows, "pps": round(pps),
            "hit_rate": round(passes.hits / max(1, passes.packets), 4),
            "warm_misses": passes.warm_misses, "opened": opened,
            "cache_capacity": int(gateway.cache.capacity), "headroom": settings.headroom,
            "peers": {name: round(value) for name, value in peers.items()},
            "peer_packets": {name: min(samples[name], len(frames)) for name in PEER_NAMES},
            "ratios": {name: round(pps / value, 1) for name, value in peers.items()},
        })
    return entries


# ---------------------------------------------------------------- pipeline-miss
def run_miss(settings: MissSettings,
             status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    status("pipeline-miss: generating traffic")
    batch = next(opening(settings.flows, chunk=settings.flows))
    meta = batch.meta[: batch.count]
    tcp = int((meta["protocol"] == 6).sum())
    keys = np.unique(meta[["src4", "dst4", "protocol", "sport", "dport"]])
    if len(keys) != batch.count:
        raise MismatchError(f"pipeline-miss: {batch.count} packets but {len(keys)} flows")
    inside = batch.packets()
    replay = Replay(batch)
    entries = []
    for size in settings.batches:
        status(f"pipeline-miss: portico at batch {size}")
        cut = replay.cut(size)
        times = []
        for _ in range(settings.repeats):
            gateway = make_gateway(settings.flows)
            nows = replay.reset(Clock(), cut)
            times.append(median_seconds(functools.partial(drive, gateway, cut, nows), 1)[0])
        _check_miss(gateway, batch, inside, settings.check)
        seconds = float(np.median(times))
        failures = gateway.cache.counters["insert_failures"]
        entries.append({
            "name": "pipeline-miss", "batch": size, "flows": settings.flows,
            "tcp_syn": tcp, "udp": settings.flows - tcp, "passes": settings.repeats,
            "fps": round(settings.flows / seconds),
            "ns_per_flow": round(seconds / settings.flows * 1e9),
            "checked_packets": min(settings.check, batch.count),
            "insert_failures": failures,
        })
    return entries


def _check_miss(gateway: Any, batch: Any, inside: list[bytes], check: int) -> None:
    """The last pass: every flow made (binding, connection, cache entry), every packet out
    by the uplink with valid checksums, and the first ``check`` as the struct peer has them."""
    from portico.datapath.stages.parse import parse
    from portico.packet.checksum import checksums_valid

    n = batch.count
    _check_sent("pipeline-miss", batch)
    cache = gateway.cache.counters
    made = {"nat bindings": gateway.nat.counters()["allocations"],
            "connections": gateway.conns.counters()["created"],
            # a full bucket is an insert failure: the packet is right, its flow uncached
            "cache entries": cache["insertions"] + cache["insert_failures"],
            "misses": gateway.datapath.counters["misses"]}
    wrong = {what: count for what, count in made.items() if count != n}
    if wrong:
        raise MismatchError(f"pipeline-miss: {n} new flows, but {wrong}")
    parse(batch)
    bad = np.flatnonzero(~checksums_valid(batch.data, batch.meta, n))
    if len(bad):
        raise MismatchError(f"pipeline-miss: {len(bad)} packets left with a bad checksum, "
                            f"the first row {bad[0]}")
    sample = inside[:check]
    outputs = {"struct": hit_struct(sample, {}, bindings_of(gateway))}
    _check("pipeline-miss", _frames(batch, len(sample)), outputs)


# ---------------------------------------------------------------- pipeline-flows
def _array_bytes(table: Any) -> int:
    """The bytes of the NumPy arrays an object holds (the NAT and conntrack tables)."""
    return sum(value.nbytes for value in vars(table).values() if isinstance(value, np.ndarray))


def state_bytes(gateway: Any) -> dict[str, int]:
    """The per-flow state's tables, as allocated: flow cache, NAT bindings, conntrack."""
    parts = {"flow_cache": int(gateway.cache.nbytes), "nat": _array_bytes(gateway.nat),
             "conntrack": _array_bytes(gateway.conns)}
    return {**parts, "total": sum(parts.values())}


def _rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_flows(settings: FlowsSettings,
              status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    entries = []
    for count in settings.flows:
        status(f"pipeline-flows: {count} flows: generating traffic")
        pool = make_pool(bench_spec(settings.packets, flows=count))
        as_inside(pool.batch)
        frames = pool.batch.packets()[: settings.check]
        flows = opening(count)
        gc.collect()
        rss = _rss()
        status(f"pipeline-flows: {count} flows: opening them")
        clock = Clock()
        gateway = make_gateway(count, headroom=settings.headroom)
        began = time.perf_counter()
        open_flows(gateway, flows, clock)
        opened_s = time.perf_counter() - began
        rss_after = _rss()
        del flows
        outputs = {"struct": hit_struct(frames, {}, bindings_of(gateway))}
        memory = state_bytes(gateway)
        actions = gateway.datapath.actions
        replay = Replay(pool.batch)
        for size in settings.batches:
            status(f"pipeline-flows: {count} flows at batch {size}")
            passes = hit_passes(gateway, replay, size, clock, settings.repeats)
            _check_sent("pipeline-flows", pool.batch)
            _check("pipeline-flows", _frames(pool.batch, len(frames)), outputs)
            entries.append({
                "name": "pipeline-flows", "flows": count, "batch": size,
                "packets": pool.count, "pps": round(pool.count / passes.seconds),
                "ns_per_packet": round(passes.seconds / pool.count * 1e9, 1),
                "hit_rate": round(passes.hits / max(1, passes.packets), 4),
                "cache_capacity": int(gateway.cache.capacity), "headroom": settings.headroom,
                "open_fps": round(count / opened_s),
                "state_bytes": memory,
                "actions": {"count": len(actions), "bytes": _array_bytes(actions)},
                "rss_growth_bytes": (None if rss is None or rss_after is None
                                     else rss_after - rss),
            })
        del gateway, pool
        gc.collect()
    status(f"pipeline-flows: tables for {settings.memory_flows} flows")
    from portico.datapath.actions import ActionTable

    sized = make_gateway(settings.memory_flows)
    entries.append({"name": "pipeline-flows-memory", "flows": settings.memory_flows,
                    "state_bytes": state_bytes(sized),
                    "actions_bytes": _array_bytes(ActionTable(settings.memory_flows))})
    return entries


# ---------------------------------------------------------------- reporting
def format_pipeline(entries: Sequence[dict[str, Any]]) -> list[str]:
    return _format_hit(entries) + _format_miss(entries) + _format_flows(entries)


def _format_hit(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "pipeline-hit"]
    if not rows:
        return []
    first = rows[0]
    lines = ["", f"pipeline-hit: the gateway (route + firewall + SNAT) and its flow cache, "
             f"{first['flows']:,} flows opened first, {first['packets']:,} packets, the cache "
             f"sized for {first['headroom']}x the flows; outputs checked equal to struct's",
             f"{'batch':>7}{'portico pps':>14}{'hit rate':>10}"
             + "".join(f"{n + ' pps':>13}" for n in PEER_NAMES)
             + "".join(f"{'x ' + n:>10}" for n in PEER_NAMES)]
    for e in rows:
        lines.append(f"{e['batch']:>7}{e['pps'] / 1e6:>12.2f} M{e['hit_rate']:>10.2%}"
                     + "".join(f"{e['peers'][n] / 1e3:>11.1f} k" for n in PEER_NAMES)
                     + "".join(f"{e['ratios'][n]:>10,.0f}" for n in PEER_NAMES))
    lines.append("peers timed on the first " + ", ".join(
        f"{count} packets ({name})" for name, count in first["peer_packets"].items()))
    return lines


def _format_miss(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "pipeline-miss"]
    if not rows:
        return []
    first = rows[0]
    return ["", f"pipeline-miss: every packet a new flow ({first['tcp_syn']:,} TCP SYNs, "
            f"{first['udp']:,} UDP a pass), a fresh gateway each pass; checked: all out by "
            "the uplink, a binding, connection and cache entry each, the first "
            f"{first['checked_packets']:,} equal to struct's",
            f"{'batch':>7}{'new flows/s':>14}{'ns/flow':>10}"] + [
        f"{e['batch']:>7}{e['fps'] / 1e3:>12.1f} k{e['ns_per_flow']:>10,}" for e in rows]


def _format_flows(entries: Sequence[dict[str, Any]]) -> list[str]:
    rows = [e for e in entries if e["name"] == "pipeline-flows"]
    sized = [e for e in entries if e["name"] == "pipeline-flows-memory"]
    if not rows and not sized:
        return []
    mib = 2**20
    lines = ["", "pipeline-flows: pipeline-hit against the flows cached (every flow opened; "
             "packets drawn from all of them); per-flow state as allocated, MiB",
             f"{'flows':>9}{'batch':>7}{'pps':>10}{'ns/pkt':>8}{'hit rate':>10}{'cache':>8}"
             f"{'nat':>7}{'conntrack':>11}{'sum':>7}{'actions':>9}{'rss +':>7}"]
    for e in rows:
        s, rss = e["state_bytes"], e["rss_growth_bytes"]
        lines.append(f"{e['flows']:>9,}{e['batch']:>7}{e['pps'] / 1e6:>8.2f} M"
                     f"{e['ns_per_packet']:>8}{e['hit_rate']:>10.2%}"
                     f"{s['flow_cache'] / mib:>8.1f}{s['nat'] / mib:>7.1f}"
                     f"{s['conntrack'] / mib:>11.1f}{s['total'] / mib:>7.0f}"
                     f"{e['actions']['bytes'] / mib:>9.1f}"
                     + (f"{rss / mib:>7.0f}" if rss is not None else f"{'-':>7}"))
    if rows:
        lines.append(f"the cache sized for {rows[0]['headroom']}x the flows; actions: the "
                     "datapath's action table (an action per SNAT flow); rss +: the process's "
                     "growth while the gateway was made and filled")
    for size, (low, high, ratio) in flatness(rows).items():
        lines.append(f"cost per packet, {high:,} flows against {low:,}, batch {size}: "
                     f"{ratio:.2f}x")
    for e in sized:
        s = e["state_bytes"]
        lines.append(f"tables for {e['flows']:,} flows (the gateway's own cache sizing, not "
                     f"filled): flow cache {s['flow_cache'] / mib:.0f} + NAT "
                     f"{s['nat'] / mib:.0f} + conntrack {s['conntrack'] / mib:.0f} = "
                     f"{s['total'] / mib:.0f} MiB; an action table for as many flows "
                     f"{e['actions_bytes'] / mib:.0f} MiB more")
    return lines


def flatness(rows: Sequence[dict[str, Any]]) -> dict[int, tuple[int, int, float]]:
    """Per batch size: (fewest flows, most flows, ns per packet at most / at fewest)."""
    out = {}
    for size in dict.fromkeys(e["batch"] for e in rows):
        at = sorted((e for e in rows if e["batch"] == size), key=lambda e: e["flows"])
        if len(at) > 1:
            out[size] = (at[0]["flows"], at[-1]["flows"],
                         at[-1]["ns_per_packet"] / at[0]["ns_per_packet"])
    return out


def pipeline_target_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    batch, mpps = TARGET_PPS
    for e in entries:
        if e["name"] != "pipeline-hit" or e["batch"] != batch:
            continue
        value = e["pps"] / 1e6
        lines.append(f"pipeline-hit >= {mpps:g} Mpps at batch {batch}: {value:.2f} Mpps, "
                     f"{'met' if value >= mpps else 'MISSED'}")
        for peer, ratio in RATIO_TARGETS.items():
            got = e["ratios"][peer]
            lines.append(f"pipeline-hit >= {ratio:g}x {peer} at batch {batch}: {got:,.0f}x, "
                         f"{'met' if got >= ratio else 'MISSED'}")
    for e in entries:
        if e["name"] == "pipeline-miss":
            lines.append(f"pipeline-miss >= {MISS_TARGET / 1e3:g}k new flows/s at batch "
                         f"{e['batch']}: {e['fps'] / 1e3:.1f}k, "
                         f"{'met' if e['fps'] >= MISS_TARGET else 'MISSED'}")
    flows, budget = MEMORY_TARGET
    for size, (low, high, ratio) in flatness(
            [e for e in entries if e["name"] == "pipeline-flows"]).items():
        short = "" if high >= flows else f"; not run to {flows:,} (--quick)"
        lines.append(f"pipeline-flows cost per packet nearly flat from {low:,} flows: "
                     f"{ratio:.2f}x at {high:,}, batch {size} (the issue gives no number"
                     f"{short})")
    for e in entries:
        if e["name"] == "pipeline-flows-memory" and e["flows"] >= flows:
            total = e["state_bytes"]["total"]
            more = total + e["actions_bytes"]
            lines.append(f"pipeline-flows {flows:,} cached flows <= {budget / 2**30:g} GiB "
                         f"(flow cache + NAT + conntrack): {total / 2**20:.0f} MiB, "
                         f"{'met' if total <= budget else 'MISSED'}; with the action table "
                         f"{more / 2**20:.0f} MiB, {'met' if more <= budget else 'MISSED'}")
    return lines
