"""Ingress: port and VLAN (or VNI) to tenant and segment; frames that belong nowhere dropped."""

from __future__ import annotations

import numpy as np
from l2net import ACCESS, EDGE, FABRIC, L2, TRUNK, UPLINK, make_l2
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from portico import drops
from portico.batch import Batch
from portico.datapath.pipeline import Decisions
from portico.datapath.stages.ingress import Ingress, classify
from portico.datapath.stages.parse import parse

HOST = "02:00:00:00:00:11"
PEER = "02:00:00:00:00:12"


def udp(vlan: int | None = None, *, src: str = HOST, dst: str = PEER) -> bytes:
    l2 = Ether(src=src, dst=dst)
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return bytes(l2 / IP(src="10.0.0.2", dst="10.0.0.3") / UDP(sport=1000, dport=2000))


def vxlan(vni: int, *, outer_vlan: int | None = None) -> bytes:
    outer = Ether(src="02:00:00:00:99:01", dst="02:00:00:00:99:02")
    if outer_vlan is not None:
        outer = outer / Dot1Q(vlan=outer_vlan)
    return bytes(outer / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=49152, dport=4789)
                 / VXLAN(vni=vni) / Ether(src=HOST, dst="02:00:00:00:0b:77")
                 / IP(src="10.9.0.2", dst="10.9.0.3") / UDP(sport=1, dport=2))


def classified(l2: L2, frames: list[tuple[int, bytes]]) -> tuple[Batch, Decisions]:
    """Only the ingress stage, on parsed frames."""
    batch = Batch.from_packets([f for _, f in frames])
    batch.meta["port"][: len(frames)] = [p for p, _ in frames]
    parse(batch)
    rows = np.arange(batch.count, dtype=np.int64)
    decided = Decisions(batch.capacity)
    decided.reset(rows)
    Ingress(l2.topology).process(batch, rows, np.full(len(rows), -1, dtype=np.int64), decided)
    return batch, decided


def test_port_and_vlan_name_the_tenant_and_segment() -> None:
    net = make_l2()
    frames = [
        (ACCESS, udp(10)),  # a.lan
        (TRUNK, udp(10)),  # a.lan too, another attachment
        (EDGE, udp(30)),  # a.lan
        (ACCESS, udp(20)),  # b.lan
        (EDGE, udp()),  # b.lan, untagged
        (EDGE, udp(0)),  # priority-tagged (VID 0) counts as untagged: b.lan
        (UPLINK, udp()),  # the provider's uplink: tenant 0
    ]
    batch, _ = classified(net, frames)
    m = batch.meta[: batch.count]
    a, b = net.segment("a.lan"), net.segment("b.lan")
    uplink = net.topology.uplink_segment(0)
    assert list(m["segment"]) == [a, a, a, b, b, b, uplink]
    assert list(m["tenant"]) == [1, 1, 1, 2, 2, 2, 0]
    t = net.topology
    assert list(m["attachment"]) == [t.attachment_at(ACCESS, 10), t.attachment_at(TRUNK, 10),
                                     t.attachment_at(EDGE, 30), t.attachment_at(ACCESS, 20),
                                     t.attachment_at(EDGE), t.attachment_at(EDGE),
                                     t.attachment_at(UPLINK)]
    assert not m["drop"].any()


def test_frames_that_belong_nowhere_are_dropped_and_counted() -> None:
    net = make_l2()
    qinq = bytes(Ether(src=HOST, dst=PEER) / Dot1AD(vlan=10) / Dot1Q(vlan=5)
                 / IP(src="10.0.0.2", dst="10.0.0.3") / UDP(sport=1, dport=2))
    frames = [
        (ACCESS, udp()),  # access carries only VLANs 10 and 20
        (ACCESS, udp(99)),
        (UPLINK, udp(10)),  # the uplink is untagged only
        (9, udp(10)),  # no such port
        (FABRIC, udp()),  # the underlay port: only VXLAN with a known VNI
        (ACCESS, qinq),
    ]
    batch = net.run(frames)
    m = batch.meta[: batch.count]
    assert [drops.name(d) for d in m["drop"]] == ["no-segment"] * 5 + ["double-tagged"]
    assert list(m["tenant"]) == [-1] * 6 and list(m["out_port"]) == [-1] * 6
    assert net.counted("ingress") == {"no-segment": 5, "double-tagged": 1}
    assert net.pipeline.counters["switch"].packets == 0


def test_a_vni_places_a_frame_only_where_no_port_vlan_does() -> None:
    net = make_l2()
    overlay = net.segment("b.overlay")
    batch, decided = classified(net, [
        (FABRIC, vxlan(5001)),  # the underlay: by VNI
        (FABRIC, vxlan(5002)),  # an unknown VNI
        (ACCESS, vxlan(5001, outer_vlan=10)),  # tenant a's VLAN: a's, whatever it carries
    ])
    m = batch.meta[: batch.count]
    assert list(m["segment"]) == [overlay, -1, net.segment("a.lan")]
    assert list(m["tenant"]) == [2, -1, 1]
    assert drops.name(m["drop"][1]) == "no-segment"
    # The flow key holds outer headers only: a tunnelled frame is not cached.
    assert list(decided.overflow[:3]) == [True, False, False]


def test_classify_before_the_cache_is_the_stage_without_drops() -> None:
    net = make_l2()
    frames = [(ACCESS, udp(10)), (ACCESS, udp(99)), (EDGE, udp()), (FABRIC, vxlan(5001))]
    staged, _ = classified(net, frames)
    batch = Batch.from_packets([f for _, f in frames])
    batch.meta["port"][: len(frames)] = [p for p, _ in frames]
    parse(batch)
    classify(batch, net.topology)
    for column in ("tenant", "segment", "attachment"):
        assert list(batch.meta[column][:4]) == list(staged.meta[column][:4])
    assert not batch.meta["drop"][:4].any()
