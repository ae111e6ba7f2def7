"""Actions applied to real packets, judged by Scapy: fields rewritten, checksums still valid."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet

from portico import drops
from portico.batch import Batch
from portico.datapath.actions import Action, ActionTable, Op, apply
from portico.datapath.stages.parse import parse

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def run(packets: list[Packet], *actions: Action) -> tuple[Batch, list[Packet]]:
    """Apply ``actions[k]`` to packet k (the last action repeats); return Scapy's view."""
    batch = Batch.from_packets([bytes(p) for p in packets])
    parse(batch)
    table = ActionTable(capacity=2)  # small, so that growing is exercised too
    ids = [table.add(actions[min(k, len(actions) - 1)]) for k in range(len(packets))]
    apply(batch, np.arange(batch.count), np.array(ids), table)
    return batch, [Ether(batch.packet(row)) for row in range(batch.count)]


SNAT = Action(ops=Op.SET_IP_SRC | Op.SET_SPORT | Op.DEC_TTL | Op.OUTPUT,
              ip_src=v4("203.0.113.7"), sport=40000, out_port=3)


def test_snat_on_tcp_udp_and_icmp_echo(checksums_valid: Callable[[Packet], None]) -> None:
    packets = [
        Ether(**MACS) / IP(src="10.0.0.1", dst="198.51.100.2", ttl=9) / TCP(sport=1234, dport=80)
        / b"payload",
        Ether(**MACS) / IP(src="10.0.0.1", dst="198.51.100.2", ttl=9) / UDP(sport=5353, dport=53)
        / b"q",
        Ether(**MACS) / IP(src="10.0.0.1", dst="198.51.100.2", ttl=9) / ICMP(id=77, seq=1),
    ]
    batch, out = run(packets, SNAT)
    for pkt in out:
        assert pkt[IP].src == "203.0.113.7" and pkt[IP].dst == "198.51.100.2"
        assert pkt[IP].ttl == 8
        checksums_valid(pkt)
    assert out[0][TCP].sport == 40000 and out[0][TCP].dport == 80
    assert out[1][UDP].sport == 40000 and out[1][UDP].dport == 53
    assert out[2][ICMP].id == 40000 and out[2][ICMP].seq == 1
    meta = batch.meta[: batch.count]
    assert list(meta["out_port"]) == [3, 3, 3] and not meta["drop"].any()
    assert list(meta["src4"]) == [v4("203.0.113.7")] * 3 and list(meta["ttl"]) == [8] * 3
    reparsed = Batch.from_packets(batch.packets())
    parse(reparsed)  # the metadata apply kept equals what a fresh parse of the output says
    for column in ("src4", "dst4", "sport", "dport", "ttl", "protocol"):
        assert list(reparsed.meta[column][:3]) == list(meta[column]), column


def test_dnat_rewrites_destination_and_port(checksums_valid: Callable[[Packet], None]) -> None:
    dnat = Action(ops=Op.SET_IP_DST | Op.SET_DPORT | Op.OUTPUT, ip_dst=v4("10.1.1.5"),
                  dport=8080, out_port=1)
    _, (pkt,) = run([Ether(**MACS) / IP(src="192.0.2.1", dst="203.0.113.7")
                     / TCP(sport=5555, dport=443)], dnat)
    assert (pkt[IP].dst, pkt[TCP].dport, pkt[TCP].sport) == ("10.1.1.5", 8080, 5555)
    checksums_valid(pkt)


def test_udp_without_checksum_stays_without(checksums_valid: Callable[[Packet], None]) -> None:
    packet = Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2,
                                                                       chksum=0) / b"x"
    _, (pkt,) = run([packet], SNAT)
    assert pkt[UDP].chksum == 0 and pkt[UDP].sport == 40000
    checksums_valid(pkt)


def test_vlan_push_pop_and_mac_rewrite(checksums_valid: Callable[[Packet], None]) -> None:
    tagged = Ether(**MACS) / Dot1Q(vlan=10) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"a"
    plain = Ether(**MACS) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"b"
    retag = Action(ops=Op.POP_VLAN | Op.PUSH_VLAN | Op.SET_ETH_SRC | Op.SET_ETH_DST,
                   vlan_tci=(5 << 13) | 20, eth_src=0x0200000000AA, eth_dst=0x0200000000BB)
    untag = Action(ops=Op.POP_VLAN)
    tag = Action(ops=Op.PUSH_VLAN, vlan_tci=30)
    batch, out = run([tagged, tagged, plain], retag, untag, tag)
    assert out[0][Dot1Q].vlan == 20 and out[0][Dot1Q].prio == 5
    assert (out[0].src, out[0].dst) == ("02:00:00:00:00:aa", "02:00:00:00:00:bb")
    assert Dot1Q not in out[1] and out[1][UDP].load == b"a"
    assert out[2][Dot1Q].vlan == 30 and out[2][UDP].load == b"b"
    assert list(batch.meta["vlan_count"][:3]) == [1, 0, 1]
    assert list(batch.meta["length"][:3]) == [len(tagged), len(tagged) - 4, len(plain) + 4]
    for pkt in out:
        assert pkt[IP].src == "10.0.0.1"
        checksums_valid(pkt)


@pytest.mark.parametrize(("packet", "action", "reason"), [
    (Ether(**MACS) / IP(ttl=1) / UDP(), Action(ops=Op.DEC_TTL), "ttl-expired"),
    (Ether(**MACS) / IP(frag=5) / (b"x" * 8), Action(ops=Op.SET_SPORT, sport=1), "no-transport"),
    (Ether(**MACS) / IP() / TCP(), Action(ops=Op.POP_VLAN), "no-vlan"),
    (Ether(**MACS, type=0x0806) / (b"\0" * 28), Action(ops=Op.SET_IP_SRC), "not-ipv4"),
    (Ether(**MACS) / IP() / ICMP(), Action(ops=Op.SET_DPORT, dport=1), "no-transport"),
    (Ether(**MACS) / IP() / TCP(), Action(ops=Op.DROP, reason=13), "non-first-fragment"),
])
def test_refusals_are_named_drops_and_leave_the_packet_alone(packet: Packet, action: Action,
                                                             reason: str) -> None:
    batch = Batch.from_packets([bytes(packet)])
    parse(batch, non_first_fragments="keep")
    before = batch.packet(0)
    table = ActionTable()
    apply(batch, np.array([0]), np.array([table.add(action)]), table)
    assert drops.name(batch.meta["drop"][0]) == reason
    assert batch.packet(0) == before


def test_interning_and_bad_actions() -> None:
    table = ActionTable()
    assert table.add(SNAT) == table.add(Action(**{**SNAT.__dict__})) == 0
    assert table.add(Action(ops=Op.OUTPUT, out_port=1)) == 1 and len(table) == 2
    with pytest.raises(ValueError, match="output and drop"):
        Action(ops=Op.OUTPUT | Op.DROP, out_port=1, reason=1)
    with pytest.raises(ValueError, match="action.sport"):
        Action(ops=Op.SET_SPORT, sport=70000)
    with pytest.raises(ValueError, match="action.reason"):
        Action(ops=Op.DROP)
    batch = Batch.from_packets([bytes(Ether(**MACS) / IP() / TCP())])
    parse(batch)
    apply(batch, np.array([0]), np.array([5]), table)  # an id the table does not have
    assert drops.name(batch.meta["drop"][0]) == "no-action"
