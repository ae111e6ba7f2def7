"""ICMPv4 and ICMPv6: echo, errors carrying the offending packet, neighbour discovery."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP as ScapyICMP
from scapy.layers.inet import IP, IPerror, UDPerror
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPerror6,
)
from scapy.layers.inet6 import IPv6 as ScapyIPv6
from scapy.layers.l2 import Ether

from portico.packet import icmp, icmpv6
from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.ethernet import Ethernet
from portico.packet.icmp import ICMP
from portico.packet.icmpv6 import NA_OVERRIDE, NA_SOLICITED, ICMPv6
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6
from portico.packet.udp import UDP

MAC = "02:00:00:00:00:0a"
V6A, V6B = "fe80::1", "fe80::2"


def echo_v4() -> bytes:
    return build(
        Ethernet(), IPv4(src="10.0.0.1", dst="10.0.0.2"),
        ICMP(type=icmp.ECHO_REQUEST, ident=0x1234, seq=7), payload=b"ping" * 5,
    )  # fmt: skip


def unreachable_v4() -> bytes:
    return build(
        Ethernet(), IPv4(src="10.0.0.254", dst="10.0.0.1"),
        ICMP(type=icmp.DEST_UNREACHABLE, code=3),
        IPv4(src="10.0.0.1", dst="10.0.0.2"), UDP(sport=40000, dport=40001),
        payload=b"lost",
    )  # fmt: skip


def echo_v6() -> bytes:
    return build(
        Ethernet(), IPv6(src=V6A, dst=V6B),
        ICMPv6(type=icmpv6.ECHO_REQUEST, ident=9, seq=10), payload=b"v6 ping",
    )  # fmt: skip


def solicit() -> bytes:
    return build(
        Ethernet(src=MAC), IPv6(src=V6A, dst="ff02::1:ff00:2", hop_limit=255),
        ICMPv6(type=icmpv6.NEIGHBOR_SOLICIT, target=V6B, options=[("src_lladdr", MAC)]),
    )  # fmt: skip


def advert() -> bytes:
    return build(
        Ethernet(src=MAC), IPv6(src=V6B, dst=V6A, hop_limit=255),
        ICMPv6(type=icmpv6.NEIGHBOR_ADVERT, ident=NA_SOLICITED | NA_OVERRIDE, target=V6B,
               options=[("tgt_lladdr", MAC)]),
    )  # fmt: skip


def unreachable_v6() -> bytes:
    return build(
        Ethernet(), IPv6(src=V6B, dst=V6A),
        ICMPv6(type=icmpv6.DEST_UNREACHABLE, code=4),
        IPv6(src=V6A, dst="2001:db8::9"), UDP(sport=40000, dport=40001), payload=b"lost",
    )  # fmt: skip


ALL = [echo_v4, unreachable_v4, echo_v6, solicit, advert, unreachable_v6]


def test_scapy_to_portico_v4() -> None:
    raw = bytes(Ether() / IP() / ScapyICMP(type=8, id=3, seq=4) / b"abc")
    d = decode(raw)
    assert d[ICMP].fields() == {
        "type": 8, "code": 0, "checksum": Ether(raw)[ScapyICMP].chksum, "ident": 3, "seq": 4,
    }  # fmt: skip
    assert d.payload == b"abc"
    err = Ether() / IP(src="9.9.9.9") / ScapyICMP(type=11, code=0) / IP(dst="8.8.8.8") / ScapyUDP()
    d = decode(bytes(err))
    assert d.names == ["ethernet", "ipv4", "icmp"] and d.error is None
    assert d.carried is not None and d.carried.names == ["ipv4", "udp"]
    assert d.carried[IPv4].dst == 0x08080808 and d.payload == bytes(err[ScapyICMP].payload)


def test_scapy_to_portico_v6() -> None:
    ns = Ether() / ScapyIPv6(src=V6A) / ICMPv6ND_NS(tgt=V6B) / ICMPv6NDOptSrcLLAddr(lladdr=MAC)
    d = decode(bytes(ns))
    message = d[ICMPv6]
    assert (message.type, message.target) == (135, int.from_bytes(bytes(ns)[62:78], "big"))
    assert message.option_list == [("src_lladdr", MAC)]
    na = ScapyIPv6() / ICMPv6ND_NA(R=0, S=1, O=1, tgt=V6B) / ICMPv6NDOptDstLLAddr(lladdr=MAC)
    message = decode(bytes(Ether() / na))[ICMPv6]
    assert message.ident == NA_SOLICITED | NA_OVERRIDE
    assert message.option_list == [("tgt_lladdr", MAC)]
    err = Ether() / ScapyIPv6() / ICMPv6DestUnreach(code=1) / ScapyIPv6(dst=V6B) / ScapyUDP()
    d = decode(bytes(err))
    assert d.carried is not None and d.carried.names == ["ipv6", "udp"]
    echo = decode(bytes(Ether() / ScapyIPv6() / ICMPv6EchoRequest(id=5, seq=6, data=b"q")))
    assert (echo[ICMPv6].ident, echo[ICMPv6].seq, echo.payload) == (5, 6, b"q")


def test_portico_to_scapy(scapy_rebuilds_same) -> None:
    for make in (echo_v4, echo_v6, solicit, advert):
        scapy_rebuilds_same(make())
    assert Ether(echo_v4())[ScapyICMP].id == 0x1234
    ns = Ether(solicit())
    assert ns[ICMPv6ND_NS].tgt == V6B and ns[ICMPv6NDOptSrcLLAddr].lladdr == MAC
    na = Ether(advert())[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 1, 1, V6B)


def test_portico_errors_to_scapy() -> None:
    # Scapy decodes the carried packet as IPerror/UDPerror; recheck the outer checksums.
    packet = Ether(unreachable_v4())
    assert packet[IPerror].dst == "10.0.0.2" and packet[UDPerror].dport == 40001
    outer = packet.copy()
    del outer[IP].chksum, outer[ScapyICMP].chksum
    assert bytes(outer) == unreachable_v4()
    packet = Ether(unreachable_v6())
    assert packet[ICMPv6DestUnreach].code == 4 and packet[IPerror6].dst == "2001:db8::9"
    outer = packet.copy()
    del outer[ICMPv6DestUnreach].cksum
    assert bytes(outer) == unreachable_v6()


def test_decode_gives_carried_packet() -> None:
    d = decode(unreachable_v4())
    assert d.carried is not None and d.carried.names == ["ipv4", "udp"]
    assert d.carried.payload == b"lost" and d.carried.error is None
    offending = build(IPv6(src=V6A, dst=V6B), UDP(sport=1, dport=2), payload=b"lost")
    cut = build(Ethernet(), IPv6(), ICMPv6(type=icmpv6.TIME_EXCEEDED), payload=offending[:44])
    d = decode(cut)  # the carried UDP header is cut short, as routers may do
    assert d.error is None and d.carried is not None
    assert d.carried.names == ["ipv6"] and d.carried.error.startswith("udp: truncated")
    assert "carried packet:" in d.show()


@pytest.fixture(scope="module")
def tshark_trees(tmp_path_factory: pytest.TempPathFactory, tshark_decode) -> list:
    frames = [make() for make in ALL]
    return tshark_decode(frames, tmp_path_factory.mktemp("icmp") / "icmp.pcap")


def test_tshark(tshark_trees: list) -> None:
    ping, unreach, ping6, ns, na, unreach6 = tshark_trees
    assert ping.values("icmp.ident")[0] == "4660"  # tshark also shows it little-endian
    ping.assert_clean(checked=("ip", "icmp"))
    assert unreach.values("icmp.type") == ["3"]
    assert unreach.values("udp.dstport") == ["40001"]
    unreach.assert_clean(checked=("icmp",))
    assert ping6.values("icmpv6.echo.sequence_number") == ["10"]
    assert ns.values("icmpv6.nd.ns.target_address") == [V6B]
    assert ns.values("icmpv6.opt.linkaddr") == [MAC]
    assert na.values("icmpv6.nd.na.flag.s") == ["1"]
    assert na.values("icmpv6.nd.na.target_address") == [V6B]
    assert unreach6.values("icmpv6.code") == ["4"]
    for tree in (ping6, ns, na, unreach6):
        tree.assert_clean(checked=("icmpv6",))
