"""The batch parser against Scapy-built packets and against its scalar twin.

Scapy is the independent producer: packets are built with it, and the columns
the compiled kernel fills are checked against the field values Scapy was given.
Hypothesis then holds the kernel to ``portico.packet.summary`` row by row on
valid, mutated and random packets: every row ends parsed or with a drop reason,
and nothing ever raises.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from portico import drops
from portico.batch import COLUMNS, Batch
from portico.datapath.stages.parse import INNER_DROP, ParseDrop, parse
from portico.packet.layers import Layer, layer_names
from portico.packet.summary import summarize

# Every column parse owns; the port's columns and the hash (a kernel detail) are not compared.
NOT_PARSE = {"start", "length", "wire_length", "timestamp", "port", "out_port", "tenant", "trace",
             "segment", "attachment", "out_attachment"}
COMPARED = [name for name, _, _ in COLUMNS if name not in NOT_PARSE | {"flow_hash"}]


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def parsed(*packets: bytes, **kw: str) -> Batch:
    batch = Batch.from_packets(packets)
    parse(batch, **kw)
    return batch


def assert_matches_scalar(batch: Batch, **kw: str) -> None:
    for row in range(batch.count):
        want = summarize(
            batch.packet(row),
            start=batch.headroom,
            wire_length=int(batch.meta["wire_length"][row]),
            **kw,
        )
        got = {name: int(batch.meta[name][row]) for name in COMPARED}
        diff = {k: (got[k], want[k]) for k in COMPARED if got[k] != want[k]}
        assert not diff, f"row {row} ({batch.packet(row).hex()}): kernel vs scalar {diff}"


# --------------------------------------------------------------- fields against Scapy
def test_ipv4_tcp_fields() -> None:
    pkt = (
        Ether()
        / IP(src="10.0.0.1", dst="192.0.2.9", ttl=17, tos=0x28)
        / TCP(sport=1234, dport=443, flags="SA")
        / b"hello"
    )
    m = parsed(bytes(pkt)).meta[0]
    assert (m["src4"], m["dst4"]) == (v4("10.0.0.1"), v4("192.0.2.9"))
    assert (m["sport"], m["dport"], m["protocol"]) == (1234, 443, 6)
    assert m["tcp_flags"] == 0x12 and m["ttl"] == 17 and m["tos"] == 0x28
    assert m["l3"] - m["l2"] == 14 and m["l4"] - m["l3"] == 20
    assert m["payload"] - m["l4"] == 20 and m["drop"] == 0
    assert layer_names(int(m["layers"])) == ["ethernet", "ipv4", "tcp"]


def test_qinq_ipv6_extension_headers_udp() -> None:
    pkt = (
        Ether()
        / Dot1AD(vlan=100)
        / Dot1Q(vlan=200)
        / IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=9)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=5353, dport=53)
        / b"q"
    )
    m = parsed(bytes(pkt)).meta[0]
    src = int(ipaddress.IPv6Address("2001:db8::1"))
    assert (m["vlan_count"], m["vlan_outer"], m["vlan_inner"]) == (2, 100, 200)
    assert m["ethertype"] == 0x86DD and m["ttl"] == 9
    assert (int(m["src6_hi"]) << 64 | int(m["src6_lo"])) == src
    assert (m["sport"], m["dport"], m["protocol"]) == (5353, 53, 17)
    assert m["l4"] - m["l3"] == 40 + 8 + 8 + 8
    assert m["layers"] >> Layer.IPV6_EXT & 1


@pytest.mark.parametrize(
    ("outer", "kind", "tunnel_id"),
    [
        (UDP(sport=1, dport=4789) / VXLAN(vni=77) / Ether(), Layer.VXLAN, 77),
        (UDP(dport=6081) / GENEVE(vni=5, proto=0x6558) / Ether(), Layer.GENEVE, 5),
        (UDP(dport=6081) / GENEVE(vni=6, proto=0x0800), Layer.GENEVE, 6),
        (
            UDP(sport=2152, dport=2152) / GTP_U_Header(teid=99) / GTPPDUSessionContainer(QFI=5),
            Layer.GTPU,
            99,
        ),
        (GRE(key_present=1, key=1234, proto=0x0800), Layer.GRE, 1234),
        (GRE(proto=0x6558) / Ether(), Layer.GRE, 0),
    ],
)
def test_tunnels_reach_the_inner_five_tuple(outer, kind: Layer, tunnel_id: int) -> None:
    inner = IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=9, dport=10, flags="A")
    m = parsed(bytes(Ether() / IP(src="9.9.9.9") / outer / inner)).meta[0]
    assert m["drop"] == 0
    assert (m["tunnel"], m["tunnel_id"]) == (kind, tunnel_id)
    assert (m["inner_src4"], m["inner_dst4"]) == (v4("1.1.1.1"), v4("2.2.2.2"))
    assert (m["inner_sport"], m["inner_dport"], m["inner_tcp_flags"]) == (9, 10, 0x10)
    assert m["src4"] == v4("9.9.9.9")


def test_icmp_echo_ident_is_the_port() -> None:
    batch = parsed(
        bytes(Ether() / IP() / ICMP(id=42, seq=1)),
        bytes(Ether() / IPv6() / ICMPv6EchoRequest(id=7)),
    )
    assert list(batch.meta["sport"][:2]) == [42, 7]
    assert list(batch.meta["dport"][:2]) == [42, 7]
    assert list(batch.meta["icmp_type"][:2]) == [8, 128]


def test_fragments() -> None:
    first = bytes(Ether() / IP(flags="MF") / UDP(sport=3, dport=4) / (b"x" * 16))
    later = bytes(Ether() / IP(frag=3) / (b"x" * 16))
    later6 = bytes(Ether() / IPv6() / IPv6ExtHdrFragment(offset=10, nh=17) / (b"y" * 16))
    batch = parsed(first, later, later6)
    assert list(batch.meta["frag"][:3]) == [1, 2, 2]
    assert batch.meta["dport"][0] == 4 and batch.meta["drop"][0] == 0
    assert [drops.name(d) for d in batch.meta["drop"][1:3]] == ["non-first-fragment"] * 2
    kept = parsed(later, later6, non_first_fragments="keep")
    assert list(kept.meta["drop"][:2]) == [0, 0] and list(kept.meta["l4"][:2]) == [-1, -1]


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (bytes(Ether())[:13], ParseDrop.TRUNCATED_ETHERNET),
        (bytes(Ether() / Dot1Q())[:16], ParseDrop.TRUNCATED_VLAN),
        (bytes(Ether() / Dot1Q() / Dot1Q() / Dot1Q() / IP()), ParseDrop.TOO_MANY_VLANS),
        (bytes(Ether(type=0x0806) / (b"\0" * 10)), ParseDrop.TRUNCATED_ARP),
        (bytes(Ether() / IP())[:30], ParseDrop.TRUNCATED_IPV4),
        (bytes(Ether() / IP(version=6)), ParseDrop.BAD_IP_VERSION),
        (bytes(Ether() / IP(ihl=4) / TCP()), ParseDrop.BAD_IHL),
        (bytes(Ether() / IP(ihl=15, len=40) / TCP()), ParseDrop.BAD_IHL),
        (bytes(Ether() / IP(len=400) / TCP()), ParseDrop.BAD_IPV4_LENGTH),
        (bytes(Ether() / IPv6())[:50], ParseDrop.TRUNCATED_IPV6),
        (bytes(Ether() / IPv6(plen=100) / UDP()), ParseDrop.BAD_IPV6_LENGTH),
        (bytes(Ether() / IPv6(nh=0, plen=8) / (b"\x11\x05" + b"\0" * 6)), ParseDrop.BAD_EXT_HEADER),
        (
            bytes(Ether() / IPv6(nh=60) / ((b"\x3c\x00" + b"\0" * 6) * 9)),
            ParseDrop.TOO_MANY_EXT_HEADERS,
        ),
        (bytes(Ether() / IP(proto=6) / (b"\0" * 10)), ParseDrop.TRUNCATED_TCP),
        (bytes(Ether() / IP() / TCP(dataofs=4)), ParseDrop.BAD_TCP_OFFSET),
        (bytes(Ether() / IP() / TCP(dataofs=15)), ParseDrop.BAD_TCP_OFFSET),
        (bytes(Ether() / IP(proto=17) / (b"\0" * 4)), ParseDrop.TRUNCATED_UDP),
        (bytes(Ether() / IP() / UDP(len=200)), ParseDrop.BAD_UDP_LENGTH),
        (bytes(Ether() / IP(proto=1) / b"\x08\0"), ParseDrop.TRUNCATED_ICMP),
        (bytes(Ether() / IP(proto=47) / b"\x80\0\x08\0"), ParseDrop.TRUNCATED_GRE),
        (bytes(Ether() / IP() / UDP(dport=4789) / b"\x08\0\0"), ParseDrop.TRUNCATED_VXLAN),
        (
            bytes(Ether() / IP() / UDP(dport=6081) / GENEVE(optionlen=10)),
            ParseDrop.TRUNCATED_GENEVE,
        ),
        (bytes(Ether() / IP() / UDP(dport=6081) / GENEVE(version=1)), ParseDrop.BAD_GENEVE_VERSION),
        (bytes(Ether() / IP() / UDP(dport=2152) / b"\x30\xff\0"), ParseDrop.TRUNCATED_GTPU),
        (
            bytes(Ether() / IP() / UDP(dport=2152) / GTP_U_Header(version=2)),
            ParseDrop.BAD_GTPU_VERSION,
        ),
    ],
)
def test_malformed_packets_get_their_named_reason(packet: bytes, reason: ParseDrop) -> None:
    batch = parsed(packet)
    assert drops.name(batch.meta["drop"][0]) == reason.name.lower().replace("_", "-")
    assert_matches_scalar(batch)


def test_inner_problems_are_named_inner() -> None:
    pkt = Ether() / IP() / UDP(dport=4789) / VXLAN(vni=1) / Ether() / IP(ihl=3)
    batch = parsed(bytes(pkt))
    assert batch.meta["drop"][0] == ParseDrop.BAD_IHL + INNER_DROP
    assert drops.name(batch.meta["drop"][0]) == "inner-bad-ihl"


def test_capture_truncated_packets_are_dropped() -> None:
    pkt = bytes(Ether() / IP() / UDP() / (b"z" * 3000))
    batch = parsed(pkt)  # a 2 KiB slot keeps 1920 bytes of it
    assert batch.meta["wire_length"][0] == len(pkt)
    assert drops.name(batch.meta["drop"][0]) in ("bad-ipv4-length", "capture-truncated")
    jumbo = Batch.from_packets([pkt], slot_size=9600)
    parse(jumbo)
    assert jumbo.meta["drop"][0] == 0 and jumbo.meta["dport"][0] == 53


def test_parse_is_idempotent() -> None:
    batch = parsed(bytes(Ether() / IP() / TCP()), bytes(Ether() / IP(ihl=2)))
    first = batch.meta.copy()
    parse(batch)
    assert np.array_equal(first, batch.meta)


def test_flow_hash_is_symmetric() -> None:
    a = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80)
    b = Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=1000)
    c = Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=81, dport=1000)
    h = parsed(bytes(a), bytes(b), bytes(c)).meta["flow_hash"]
    assert h[0] == h[1] != h[2]


# --------------------------------------------------------------- differential, Hypothesis
def _valid_packets() -> st.SearchStrategy[bytes]:
    # Tunnel ports announce a header that plain UDP does not carry: not 'valid' here.
    port = st.integers(0, 65535).filter(lambda p: p not in (4789, 6081, 2152))
    ip4 = st.builds(
        lambda a, b: IP(src=str(ipaddress.IPv4Address(a)), dst=str(ipaddress.IPv4Address(b))),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    )
    ip6 = st.builds(
        lambda a, b: IPv6(src=str(ipaddress.IPv6Address(a)), dst=str(ipaddress.IPv6Address(b))),
        st.integers(0, 2**128 - 1),
        st.integers(0, 2**128 - 1),
    )
    l4 = st.one_of(
        st.builds(lambda s, d, f: TCP(sport=s, dport=d, flags=f), port, port, st.integers(0, 255)),
        st.builds(lambda s, d: UDP(sport=s, dport=d), port, port),
        st.builds(lambda i: ICMP(id=i), port),
    )
    l4v6 = st.one_of(
        st.builds(lambda s, d: TCP(sport=s, dport=d), port, port),
        st.builds(lambda s, d: UDP(sport=s, dport=d), port, port),
        st.builds(lambda i: ICMPv6EchoRequest(id=i), port),
    )
    inner = st.one_of(
        st.builds(lambda i, t: i / t, ip4, l4), st.builds(lambda i, t: i / t, ip6, l4v6)
    )
    tunnel = st.one_of(
        st.just(None),
        st.builds(
            lambda v, i: UDP(dport=4789) / VXLAN(vni=v) / Ether() / i,
            st.integers(0, 2**24 - 1),
            inner,
        ),
        st.builds(
            lambda v, i: UDP(dport=6081) / GENEVE(vni=v, proto=0x6558) / Ether() / i,
            st.integers(0, 2**24 - 1),
            inner,
        ),
        st.builds(
            lambda t, i: UDP(dport=2152) / GTP_U_Header(teid=t) / i,
            st.integers(0, 2**32 - 1),
            inner,
        ),
        st.builds(lambda i: GRE(proto=0x0800) / i, ip4.map(lambda h: h / UDP())),
    )
    tags = st.lists(st.integers(0, 4095), max_size=2)

    def assemble(tag_list: list[int], net, transport, tun, pad: bytes) -> bytes:
        frame = Ether()
        for vid in tag_list:
            frame = frame / Dot1Q(vlan=vid)
        if tun is not None and isinstance(net, IP):
            return bytes(frame / net / tun) + pad
        return bytes(frame / net / transport) + pad

    return st.one_of(
        st.builds(assemble, tags, ip4, l4, tunnel, st.binary(max_size=8)),
        st.builds(assemble, tags, ip6, l4v6, st.just(None), st.binary(max_size=8)),
    )


def _mutate(packet: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(packet)
    for at, value in edits:
        data[at % len(data)] = value
    return bytes(data[: max(0, len(data) - cut)])


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(_valid_packets(), min_size=1, max_size=8))
def test_kernel_equals_scalar_on_valid_packets(packets: list[bytes]) -> None:
    batch = parsed(*packets)
    assert not batch.meta["drop"][: batch.count].any()
    assert_matches_scalar(batch)


@FAST
@given(
    st.lists(
        st.builds(
            _mutate,
            _valid_packets(),
            st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
            st.integers(0, 30),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_kernel_equals_scalar_on_mutated_packets(packets: list[bytes]) -> None:
    batch = parsed(*packets)
    assert_matches_scalar(batch)


@FAST
@given(st.lists(st.binary(max_size=160), min_size=1, max_size=8))
def test_arbitrary_bytes_never_raise(packets: list[bytes]) -> None:
    batch = parsed(*packets)
    m = batch.meta[: batch.count]
    # Parsed, or dropped with a reason that has a name.
    for row in range(batch.count):
        assert m["drop"][row] == 0 or not drops.name(m["drop"][row]).startswith("unknown")
    assert_matches_scalar(batch)
