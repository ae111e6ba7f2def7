"""IPv6 and its extension headers (hop-by-hop, routing, destination options, fragment)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.inet6 import (
    IPv6 as ScapyIPv6,
)
from scapy.layers.inet6 import (
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
)
from scapy.layers.l2 import Ether

from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.ethernet import Ethernet
from portico.packet.ipv6 import (
    NO_NEXT_HEADER,
    ROUTER_ALERT,
    DestOptions,
    HopByHop,
    IPv6,
    IPv6Fragment,
    Routing,
)
from portico.packet.udp import UDP

SRC, DST = "2001:db8::1", "2001:db8::2"


def ext_chain() -> bytes:
    return build(
        Ethernet(),
        IPv6(src=SRC, dst=DST, traffic_class=0xB8, flow_label=0x12345, hop_limit=3),
        HopByHop(options=ROUTER_ALERT),
        DestOptions(options=bytes((0x1E, 9)) + b"\0" * 9),  # an unknown skippable option
        Routing(options=bytes((0, 0))),  # type 0, no segments left
        UDP(sport=40000, dport=40001),
        payload=b"through the chain",
    )


def fragments() -> list[bytes]:
    # The datagram's UDP checksum covers both pieces, so build it whole, then cut.
    whole = build(IPv6(src=SRC, dst=DST), UDP(sport=40000, dport=40001), payload=b"c" * 16)
    datagram = whole[IPv6.SIZE :]
    first = build(
        Ethernet(), IPv6(src=SRC, dst=DST), IPv6Fragment(next_header=17, ident=77, more=1),
        payload=datagram[:16],
    )  # fmt: skip
    last = build(
        Ethernet(), IPv6(src=SRC, dst=DST), IPv6Fragment(next_header=17, ident=77, frag_offset=2),
        payload=datagram[16:],
    )  # fmt: skip
    return [first, last]


def bare() -> bytes:
    return build(Ethernet(), IPv6(src=SRC, dst=DST))


def test_scapy_to_portico() -> None:
    frame = (
        Ether()
        / ScapyIPv6(src=SRC, dst=DST, tc=4, fl=5, hlim=6)
        / IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 4)])
        / IPv6ExtHdrFragment(id=99, m=1, offset=0)
        / ScapyUDP(sport=1, dport=2)
        / b"x"
    )
    raw = bytes(frame)
    d = decode(raw)
    assert d.error is None
    assert d.names == ["ethernet", "ipv6", "ipv6-hopopts", "ipv6-destopts", "ipv6-frag", "udp"]
    ip = d[IPv6]
    assert (ip.traffic_class, ip.flow_label, ip.hop_limit, ip.next_header) == (4, 5, 6, 0)
    assert ip.payload_length == len(raw) - 54
    hop, dest, frag = d.headers[2:5]
    assert (hop.next_header, hop.length, hop.options[:4]) == (60, 0, ROUTER_ALERT)
    assert (dest.next_header, dest.length) == (44, 0)
    assert (frag.next_header, frag.ident, frag.more, frag.frag_offset) == (17, 99, 1, 0)
    assert d.payload == b"x"


def test_scapy_routing_to_portico() -> None:
    raw = bytes(Ether() / ScapyIPv6() / IPv6ExtHdrRouting(addresses=["2001:db8::9"], segleft=0))
    d = decode(raw)
    routing = d.get(Routing)
    assert routing is not None and routing.length == 2
    assert routing.options[:2] == bytes((0, 0)) and routing.next_header == NO_NEXT_HEADER


def test_portico_to_scapy(scapy_rebuilds_same) -> None:
    packet = scapy_rebuilds_same(ext_chain())
    ip = packet[ScapyIPv6]
    assert (ip.tc, ip.fl, ip.hlim, ip.nh) == (0xB8, 0x12345, 3, 0)
    assert packet[IPv6ExtHdrHopByHop].nh == 60
    assert isinstance(packet[IPv6ExtHdrHopByHop].options[0], RouterAlert)
    assert packet[IPv6ExtHdrDestOpt].nh == 43 and packet[IPv6ExtHdrDestOpt].len == 1
    assert packet[IPv6ExtHdrRouting].nh == 17
    assert packet[ScapyUDP].load == b"through the chain"
    assert scapy_rebuilds_same(bare())[ScapyIPv6].nh == NO_NEXT_HEADER


def test_portico_fragments_to_scapy() -> None:
    first, last = (Ether(raw) for raw in fragments())
    assert first[IPv6ExtHdrFragment].m == 1 and first[IPv6ExtHdrFragment].id == 77
    assert last[IPv6ExtHdrFragment].offset == 2
    assert decode(fragments()[1]).names == ["ethernet", "ipv6", "ipv6-frag"]


def test_bad_extension_length_named() -> None:
    raw = bytearray(ext_chain())
    raw[55] = 200  # hop-by-hop length far past the packet
    error = decode(bytes(raw)).error
    assert error is not None and error.startswith("ipv6-hopopts: truncated")


@pytest.fixture(scope="module")
def tshark_trees(tmp_path_factory: pytest.TempPathFactory, tshark_decode) -> list:
    frames = [ext_chain(), *fragments(), bare()]
    return tshark_decode(frames, tmp_path_factory.mktemp("ipv6") / "ipv6.pcap")


def test_tshark(tshark_trees: list) -> None:
    chain, first, last, empty = tshark_trees
    assert chain.values("ipv6.flow") == ["0x012345"]
    assert chain.values("ipv6.hlim") == ["3"]
    assert chain.values("ipv6.opt.router_alert") == ["0"]
    assert chain.values("ipv6.routing.type") == ["0"]
    assert chain.values("udp.length") == ["25"]
    chain.assert_clean(checked=("udp",))
    assert first.values("ipv6.fraghdr.ident") == ["0x0000004d"]
    assert last.values("ipv6.fraghdr.offset") == ["2"]
    for tree in (first, empty):
        tree.assert_clean()
    last.assert_clean(checked=("udp",))  # reassembled
    assert empty.values("ipv6.nxt") == ["59"]
