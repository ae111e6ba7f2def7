"""Output: the egress attachment's VLAN pushed, popped, translated or kept; routed MACs set.

Every case runs twice through a cached and an uncached datapath (the second
pass is decided by the cache) and the frames that leave are compared, byte
for byte, with what Scapy builds for the expected egress frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from l2net import ACCESS, EDGE, GATEWAY_MAC, ROUTER_B, STATIC_A, TRUNK, UPLINK, UPLINK_MAC, make_l2
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch
from portico.control.model import parse_config
from portico.datapath.actions import Op
from portico.datapath.pipeline import Decisions
from portico.datapath.stages.ingress import classify
from portico.datapath.stages.output import Output
from portico.datapath.stages.parse import parse
from portico.datapath.topology import compile_topology

X = "02:00:00:00:00:11"
Y = "02:00:00:00:00:12"
INNER = IP(src="10.0.0.2", dst="10.0.0.3") / UDP(sport=1000, dport=2000) / b"payload"


def frame(src: str, dst: str, tag: Dot1Q | None = None, inner: Packet = INNER) -> bytes:
    l2 = Ether(src=src, dst=dst)
    return bytes((l2 / tag / inner) if tag is not None else (l2 / inner))


def announce(src: str, port: int, vlan: int | None) -> tuple[int, bytes]:
    tag = None if vlan is None else Dot1Q(vlan=vlan)
    l2 = Ether(src=src, dst="ff:ff:ff:ff:ff:ff")
    return port, bytes((l2 / tag / ARP(hwsrc=src)) if tag is not None else (l2 / ARP(hwsrc=src)))


def through_both(learn: Sequence[tuple[int, bytes]], frames: Sequence[tuple[int, bytes]],
                 ) -> tuple[list[bytes], list[int]]:
    """``learn`` then ``frames`` twice, cached and not; what left (equal in all four runs)."""
    seen = []
    for cached in (True, False):
        net = make_l2(cached=cached)
        if learn:
            net.run(learn, now=1)
        for now in (2, 3):
            batch = net.run(frames, now=now)
            seen.append(([batch.packet(r) for r in range(batch.count)],
                         [int(p) for p in batch.meta["out_port"][: batch.count]],
                         [int(d) for d in batch.meta["drop"][: batch.count]]))
        if cached:
            assert net.cache is not None and net.datapath.counters["hits"] == len(frames)
    assert all(s == seen[0] for s in seen[1:])
    assert not any(seen[0][2]), [drops.name(d) for d in seen[0][2]]
    return seen[0][0], seen[0][1]


def test_same_vlan_out_keeps_the_frame_as_it_is() -> None:
    sent = frame(Y, X, Dot1Q(prio=3, vlan=10))
    out, ports = through_both([announce(X, TRUNK, 10)], [(ACCESS, sent)])
    assert ports == [TRUNK] and out == [sent]


def test_another_vlan_out_is_a_translation() -> None:
    out, ports = through_both([], [(EDGE, frame(Y, STATIC_A, Dot1Q(prio=5, vlan=30)))])
    # The priority is not carried over (the flow key holds the VID only): see output.py.
    assert ports == [ACCESS] and out == [frame(Y, STATIC_A, Dot1Q(prio=0, vlan=10))]


def test_tagged_in_untagged_out_pops_and_untagged_in_tagged_out_pushes() -> None:
    learn = [announce(X, EDGE, None), announce(Y, ACCESS, 20)]
    out, ports = through_both(learn, [(ACCESS, frame(Y, X, Dot1Q(vlan=20))),
                                      (EDGE, frame(X, Y))])
    assert ports == [EDGE, ACCESS]
    assert out == [frame(Y, X), frame(X, Y, Dot1Q(vlan=20))]


def test_a_priority_tag_counts_as_a_tag() -> None:
    out, ports = through_both([announce(Y, ACCESS, 20)],
                              [(EDGE, frame(X, Y, Dot1Q(prio=6, vlan=0)))])
    assert ports == [ACCESS] and out == [frame(X, Y, Dot1Q(vlan=20))]


def test_routed_frames_leave_with_the_egress_router_mac(
        checksums_valid: Callable[[Packet], None]) -> None:
    tcp = IP(src="10.0.0.2", dst="198.51.100.9", ttl=64) / TCP(sport=4000, dport=443, flags="A")
    out, ports = through_both([], [(EDGE, frame(X, ROUTER_B, inner=tcp)),
                                   (ACCESS, frame(X, ROUTER_B, Dot1Q(vlan=20), inner=tcp))])
    assert ports == [UPLINK, UPLINK]
    for sent in out:
        got = Ether(sent)
        assert Dot1Q not in got
        assert (got.src, got.dst, got[IP].ttl) == (UPLINK_MAC, GATEWAY_MAC, 63)
        checksums_valid(got)
    assert out[0] == out[1]  # the same packet, whichever attachment it came in by


def test_no_egress_is_a_named_drop() -> None:
    config = parse_config("""
ports: {p: {id: 1}}
tenants:
  t:
    id: 1
    switches: {bare: {attach: [{port: p, vlan: 5}]}}
""")
    topology = compile_topology(config)
    batch = Batch.from_packets([frame(X, Y, Dot1Q(vlan=5))] * 3, port=1)
    parse(batch)
    classify(batch, topology)
    rows = np.arange(3, dtype=np.int64)
    decided = Decisions(batch.capacity)
    decided.reset(rows)
    batch.meta["out_attachment"][:3] = [-1, 0, 0]
    # A routed frame (next hop MAC set) towards a segment without a router interface.
    decided.actions["ops"][1] = int(Op.SET_ETH_DST)
    Output(topology).process(batch, rows, np.full(3, -1, dtype=np.int64), decided)
    assert [drops.name(d) if d else "" for d in batch.meta["drop"][:3]] == [
        "no-egress", "no-egress", ""]
    assert Op(int(decided.actions["ops"][2])) == Op.OUTPUT  # same VLAN in and out: no tag ops
    assert decided.actions["out_port"][2] == 1
