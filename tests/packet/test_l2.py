"""Ethernet II, 802.1Q, 802.1ad (QinQ) and ARP against Scapy and tshark."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.l2 import ARP as ScapyARP
from scapy.layers.l2 import Dot1AD, Ether
from scapy.layers.l2 import Dot1Q as ScapyDot1Q

from portico.packet.arp import ARP, REPLY
from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.ethernet import Ethernet
from portico.packet.ipv4 import IPv4
from portico.packet.udp import UDP
from portico.packet.vlan import Dot1Q

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def qinq_frame() -> bytes:
    return build(
        Ethernet(dst=MAC_B, src=MAC_A),
        Dot1Q(pcp=5, vid=100),
        Dot1Q(pcp=1, dei=1, vid=200),
        IPv4(src="10.0.0.1", dst="10.0.0.2"),
        UDP(sport=1000, dport=2000),
        payload=b"qinq",
    )


def arp_frame() -> bytes:
    return build(
        Ethernet(dst=MAC_B, src=MAC_A),
        ARP(op=REPLY, sha=MAC_A, spa="10.0.0.1", tha=MAC_B, tpa="10.0.0.2"),
    )


def test_scapy_to_portico_vlan_and_qinq() -> None:
    frame = (
        Ether(dst=MAC_B, src=MAC_A)
        / Dot1AD(prio=3, vlan=10)
        / ScapyDot1Q(prio=2, dei=1, vlan=20)
        / IP(src="1.1.1.1", dst="2.2.2.2")
        / ScapyUDP(sport=7, dport=9)
    )
    d = decode(bytes(frame))
    assert d.error is None
    assert d.names == ["ethernet", "vlan", "vlan", "ipv4", "udp"]
    eth, outer, inner = d.headers[:3]
    assert (eth.dst, eth.src, eth.ethertype) == (0x02000000000B, 0x02000000000A, 0x88A8)
    assert (outer.pcp, outer.dei, outer.vid, outer.ethertype) == (3, 0, 10, 0x8100)
    assert (inner.pcp, inner.dei, inner.vid, inner.ethertype) == (2, 1, 20, 0x0800)


def test_scapy_to_portico_arp() -> None:
    frame = Ether(src=MAC_A) / ScapyARP(op=2, hwsrc=MAC_A, psrc="10.1.1.1", pdst="10.1.1.2")
    d = decode(bytes(frame))
    assert d.names == ["ethernet", "arp"] and d.error is None
    arp = d[ARP]
    assert arp.fields() == {
        "hwtype": 1, "ptype": 0x0800, "hwlen": 6, "plen": 4, "op": 2,
        "sha": 0x02000000000A, "spa": 0x0A010101, "tha": 0, "tpa": 0x0A010102,
    }  # fmt: skip


def test_portico_to_scapy_qinq(scapy_rebuilds_same) -> None:
    raw = qinq_frame()
    packet = scapy_rebuilds_same(raw)
    assert packet[Ether].type == 0x88A8
    assert packet[Dot1AD].prio == 5 and packet[Dot1AD].vlan == 100
    tag = packet[ScapyDot1Q]
    assert (tag.prio, tag.dei, tag.vlan, tag.type) == (1, 1, 200, 0x0800)
    assert packet[ScapyUDP].load == b"qinq"


def test_portico_to_scapy_single_vlan_and_arp(scapy_rebuilds_same) -> None:
    raw = build(Ethernet(), Dot1Q(vid=7), ARP(spa="10.0.0.9"))
    packet = scapy_rebuilds_same(raw)
    assert packet[Ether].type == 0x8100 and packet[ScapyDot1Q].type == 0x0806
    assert packet[ScapyARP].psrc == "10.0.0.9"
    arp = scapy_rebuilds_same(arp_frame())[ScapyARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2, MAC_A, "10.0.0.1", MAC_B, "10.0.0.2",
    )  # fmt: skip


def test_explicit_ethertype_wins() -> None:
    raw = build(Ethernet(ethertype=0x8100), Dot1Q(vid=1), Dot1Q(vid=2))
    assert decode(raw).headers[0].ethertype == 0x8100


@pytest.fixture(scope="module")
def tshark_trees(tmp_path_factory: pytest.TempPathFactory, tshark_decode) -> list:
    frames = [qinq_frame(), arp_frame()]
    return tshark_decode(frames, tmp_path_factory.mktemp("l2") / "l2.pcap")


def test_tshark_qinq(tshark_trees: list) -> None:
    tree = tshark_trees[0]
    assert tree.values("eth.type") == ["0x88a8"]
    assert tree.values("ieee8021ad.id") == ["100"]
    assert tree.values("ieee8021ad.priority") == ["5"]
    assert tree.values("vlan.id") == ["200"]
    assert tree.values("vlan.dei") == ["1"]
    assert tree.values("udp.srcport") == ["1000"]
    tree.assert_clean(checked=("ip", "udp"))


def test_tshark_arp(tshark_trees: list) -> None:
    tree = tshark_trees[1]
    assert tree.values("arp.opcode") == ["2"]
    assert tree.values("arp.src.proto_ipv4") == ["10.0.0.1"]
    assert tree.values("arp.dst.hw_mac") == [MAC_B]
    tree.assert_clean()
