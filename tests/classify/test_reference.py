"""The reference matcher: each dimension's meaning, case by case, and its Batch reader.

These are the cases the fast classifier is later held to through the
reference: any/container/prefix, IPv4 and IPv6 kept apart, port-range edges,
ports only for protocols that have them, ICMP by type and code (never by the
echo identifier the parser puts in the port columns), no match. The Batch
reader is checked against packets built and described by Scapy, not by
Portico's own parser.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.sctp import SCTP

from portico.batch import Batch
from portico.classify.reference import (
    PacketKey,
    address_matches,
    classify_rows,
    first_match,
    first_match_index,
    holds_from_prefixes,
    matches,
    no_containers,
    packet_keys,
)
from portico.classify.rules import Match, Rule
from portico.datapath.stages.parse import parse

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rule(rule_id: str, priority: int = 100, **fields: object) -> Rule:
    return Rule.from_dict({"id": rule_id, "priority": priority, "action": "allow", **fields})


def v4(text: str) -> int:
    return int(IPv4Address(text))


def v6(text: str) -> int:
    return int(IPv6Address(text))


def key(
    src: str,
    dst: str,
    protocol: int = 6,
    sport: int = 1234,
    dport: int = 80,
    icmp_type: int = 0,
    icmp_code: int = 0,
) -> PacketKey:
    a, b = ip_address(src), ip_address(dst)
    return PacketKey(a.version, int(a), int(b), protocol, sport, dport, icmp_type, icmp_code)


HOLDS = holds_from_prefixes(
    {
        "web": ["10.0.1.0/24", "2001:db8:1::/48"],  # both families
        "db": ["10.0.2.5"],
        "big": [IPv4Network("10.0.0.0/8")],
        "v6only": [IPv6Network("2001:db8::/32")],
    }
)


# -- addresses ------------------------------------------------------------------


def test_any_matches_every_ip_packet() -> None:
    r = rule("all")
    for k in (key("1.2.3.4", "5.6.7.8"), key("2001:db8::1", "::1"), key("0.0.0.0", "0.0.0.0")):
        assert matches(r, k, no_containers)


def test_non_ip_matches_nothing() -> None:
    assert first_match([rule("all")], PacketKey(0, 0, 0), HOLDS) is None
    calls: list[tuple[str, int, int]] = []

    def spy(name: str, version: int, address: int) -> bool:
        calls.append((name, version, address))
        return True

    assert not matches(rule("c", src="container:web"), PacketKey(0, 0, 0), spy)
    assert calls == []


def test_prefix_containment_and_edges() -> None:
    r = rule("p", src="10.1.0.0/16", dst="10.0.0.0/8")
    assert matches(r, key("10.1.0.0", "10.255.255.255"), HOLDS)
    assert matches(r, key("10.1.255.255", "10.0.0.0"), HOLDS)
    assert not matches(r, key("10.2.0.0", "10.0.0.1"), HOLDS)
    assert not matches(r, key("10.0.255.255", "10.0.0.1"), HOLDS)
    assert not matches(r, key("10.1.0.1", "11.0.0.0"), HOLDS)
    host = rule("h", dst="2001:db8::1")
    assert matches(host, key("::1", "2001:db8::1"), HOLDS)
    assert not matches(host, key("::1", "2001:db8::2"), HOLDS)
    everything = rule("e", src="0.0.0.0/0")
    assert matches(everything, key("255.255.255.255", "1.1.1.1"), HOLDS)


def test_families_kept_apart() -> None:
    ipv4_rule = rule("v4", dst="10.0.0.0/8")
    # the same low 32 bits in IPv6: IPv4-compatible and IPv4-mapped forms
    assert not matches(ipv4_rule, key("::1", "::10.0.0.1"), HOLDS)
    assert not matches(ipv4_rule, key("::1", "::ffff:10.0.0.1"), HOLDS)
    assert matches(ipv4_rule, key("1.1.1.1", "10.0.0.1"), HOLDS)
    ipv6_rule = rule("v6", src="::/0")
    assert not matches(ipv6_rule, key("10.0.0.1", "10.0.0.2"), HOLDS)
    assert matches(ipv6_rule, key("::", "::"), HOLDS)
    # a container of IPv6 prefixes only never holds an IPv4 address, and vice versa
    assert not matches(rule("c6", dst="container:v6only"), key("1.1.1.1", "32.1.13.184"), HOLDS)
    assert not matches(rule("c4", dst="container:big"), key("::1", "::10.0.0.1"), HOLDS)


def test_container_of_both_families() -> None:
    r = rule("web", dst="container:web", src="container:big")
    assert matches(r, key("10.9.9.9", "10.0.1.77"), HOLDS)
    assert not matches(r, key("10.9.9.9", "10.0.2.77"), HOLDS)
    assert not matches(r, key("11.0.0.0", "10.0.1.77"), HOLDS)
    v6_rule = rule("web6", dst="container:web")
    assert matches(v6_rule, key("::1", "2001:db8:1:ffff::1"), HOLDS)
    assert not matches(v6_rule, key("::1", "2001:db8:2::1"), HOLDS)
    assert not matches(rule("none", dst="container:unknown"), key("::1", "::1"), HOLDS)


def test_holds_is_asked_with_family_and_int() -> None:
    calls: list[tuple[str, int, int]] = []

    def spy(name: str, version: int, address: int) -> bool:
        calls.append((name, version, address))
        return True

    assert matches(
        rule("c", src="container:a", dst="container:b"),
        key("::2", "10.0.0.1" if False else "::3"),
        spy,
    )
    assert calls == [("a", 6, 2), ("b", 6, 3)]


@FAST
@given(
    st.sampled_from([4, 6]).flatmap(
        lambda version: st.tuples(
            st.just(version),
            st.integers(0, 2 ** (32 if version == 4 else 128) - 1),
            st.integers(0, 32 if version == 4 else 128),
            st.integers(0, 2 ** (32 if version == 4 else 128) - 1),
        )
    ),
    st.sampled_from([4, 6]),
)
def test_prefix_match_equals_ipaddress(case: tuple[int, int, int, int], packet_family: int) -> None:
    version, raw, length, address = case
    network_type = IPv4Network if version == 4 else IPv6Network
    network = network_type((raw, length), strict=False)
    bits = 32 if packet_family == 4 else 128
    address &= (1 << bits) - 1
    packet_address = (IPv4Address if packet_family == 4 else IPv6Address)(address)
    expected = packet_address.version == network.version and packet_address in network
    assert address_matches(Match(prefix=network), packet_family, address, no_containers) == (
        expected
    )
    holds = holds_from_prefixes({"c": [network]})
    assert holds("c", packet_family, address) == expected
    assert address_matches(Match(container="c"), packet_family, address, holds) == expected


# -- protocol and ports -------------------------------------------------------------


def test_protocol_equality() -> None:
    tcp = rule("tcp", protocol="tcp")
    assert matches(tcp, key("1.1.1.1", "2.2.2.2", protocol=6), HOLDS)
    assert not matches(tcp, key("1.1.1.1", "2.2.2.2", protocol=17), HOLDS)
    assert matches(rule("n", protocol=250), key("::1", "::2", protocol=250), HOLDS)


@pytest.mark.parametrize(
    ("port", "hit"),
    [
        (0, False),
        (999, False),
        (1000, True),
        (1500, True),
        (2000, True),
        (2001, False),
        (65535, False),
    ],
)
def test_port_range_edges(port: int, hit: bool) -> None:
    by_dport = rule("d", protocol="udp", dport="1000-2000")
    by_sport = rule("s", protocol="udp", sport="1000-2000")
    assert matches(by_dport, key("1.1.1.1", "2.2.2.2", 17, sport=7, dport=port), HOLDS) == hit
    assert matches(by_sport, key("1.1.1.1", "2.2.2.2", 17, sport=port, dport=7), HOLDS) == hit


def test_full_range_edges() -> None:
    r = rule("r", protocol="tcp", sport="0-0", dport="65535")
    assert matches(r, key("1.1.1.1", "2.2.2.2", 6, sport=0, dport=65535), HOLDS)
    assert not matches(r, key("1.1.1.1", "2.2.2.2", 6, sport=1, dport=65535), HOLDS)
    assert not matches(r, key("1.1.1.1", "2.2.2.2", 6, sport=0, dport=65534), HOLDS)


def test_ports_only_for_protocols_with_ports() -> None:
    ssh = rule("ssh", dport=22)  # protocol any
    for protocol in (6, 17, 132):
        assert matches(ssh, key("1.1.1.1", "2.2.2.2", protocol, dport=22), HOLDS)
        assert not matches(ssh, key("1.1.1.1", "2.2.2.2", protocol, dport=23), HOLDS)
    # the parser stores the ICMP echo identifier in sport/dport: not a port
    echo = key("1.1.1.1", "2.2.2.2", 1, sport=22, dport=22, icmp_type=8)
    assert not matches(ssh, echo, HOLDS)
    assert not matches(ssh, key("1.1.1.1", "2.2.2.2", 47, dport=22), HOLDS)
    # the full range is no constraint: it matches packets without ports too
    assert matches(rule("all", sport="any", dport="0-65535"), echo, HOLDS)


# -- ICMP -------------------------------------------------------------------------


def test_icmp_type_and_code() -> None:
    echo = rule("echo", protocol="icmp", icmp_type=8)
    echo0 = rule("echo0", protocol="icmp", icmp_type=8, icmp_code=0)
    request = key("1.1.1.1", "2.2.2.2", 1, 77, 77, icmp_type=8, icmp_code=0)
    odd = key("1.1.1.1", "2.2.2.2", 1, 77, 77, icmp_type=8, icmp_code=1)
    reply = key("1.1.1.1", "2.2.2.2", 1, 77, 77, icmp_type=0, icmp_code=0)
    assert matches(echo, request, HOLDS) and matches(echo, odd, HOLDS)
    assert matches(echo0, request, HOLDS) and not matches(echo0, odd, HOLDS)
    assert not matches(echo, reply, HOLDS)
    assert matches(rule("any-icmp", protocol="icmp"), reply, HOLDS)
    # ICMPv6 echo request (128) is not ICMP type 128, and the other way round
    v6_echo = rule("v6echo", protocol="icmpv6", icmp_type=128)
    assert matches(v6_echo, key("::1", "::2", 58, icmp_type=128), HOLDS)
    assert not matches(v6_echo, key("1.1.1.1", "2.2.2.2", 1, icmp_type=128), HOLDS)
    assert not matches(echo, key("::1", "::2", 58, icmp_type=8), HOLDS)
    # a TCP packet whose icmp columns happen to hold 8 is not an echo request
    assert not matches(echo, key("1.1.1.1", "2.2.2.2", 6, icmp_type=8), HOLDS)


# -- first match --------------------------------------------------------------------


def test_first_match_in_given_order_and_no_match() -> None:
    rules = sorted(
        [
            rule("deny-db", 10, dst="container:db"),
            rule("web", 20, dst="container:web", protocol="tcp", dport="80-443"),
            rule("ten", 30, dst="10.0.0.0/8"),
        ],
        key=lambda r: r.order_key,
    )
    assert first_match(rules, key("1.1.1.1", "10.0.2.5"), HOLDS) is rules[0]
    assert first_match(rules, key("1.1.1.1", "10.0.1.5", dport=443), HOLDS) is rules[1]
    assert first_match(rules, key("1.1.1.1", "10.0.1.5", dport=444), HOLDS) is rules[2]
    assert first_match(rules, key("1.1.1.1", "11.0.0.1"), HOLDS) is None
    assert first_match_index(rules, key("1.1.1.1", "11.0.0.1"), HOLDS) == -1
    assert first_match([], key("1.1.1.1", "10.0.2.5"), HOLDS) is None
    # the caller's order is the match order: nothing is re-sorted here
    assert first_match(rules[::-1], key("1.1.1.1", "10.0.2.5"), HOLDS) is rules[2]


# -- reading a Batch ------------------------------------------------------------------

A6 = "2001:db8:1:2:3:4:5:6"
B6 = "fe80::8000:0:0:1"  # bit 63 of the low half set: the halves must not be signed
PACKETS = [
    Ether() / IP(src="10.0.1.9", dst="10.0.2.5") / TCP(sport=40000, dport=443),
    Ether() / IP(src="192.0.2.1", dst="10.0.1.1") / UDP(sport=53, dport=1000),
    Ether() / IP(src="10.0.1.2", dst="8.8.8.8") / ICMP(type=8, code=0, id=22),
    Ether() / IPv6(src=A6, dst=B6) / TCP(sport=22, dport=65535),
    Ether() / IPv6(src=B6, dst="2001:db8:1::ffff") / UDP(sport=0, dport=22),
    Ether() / IPv6(src=A6, dst="::10.0.2.5") / ICMPv6EchoRequest(id=22),
    Ether() / IP(src="10.0.2.5", dst="10.0.1.3") / SCTP(sport=5000, dport=22),
    Ether() / ARP(psrc="10.0.1.1", pdst="10.0.2.5"),
]


# The parser reads ports for TCP and UDP only; an SCTP packet's port columns stay 0
# (rules do allow SCTP port ranges: they will match once the parser decodes SCTP).
PARSER_PORT_PROTOCOLS = (6, 17)


def scapy_key(packet: Ether) -> PacketKey:
    """The key as Scapy reads the packet (no Portico parsing involved)."""
    ip = packet.getlayer(IP) or packet.getlayer(IPv6)
    if ip is None:
        return PacketKey(0, 0, 0)
    version = 4 if packet.haslayer(IP) else 6
    protocol = ip.proto if version == 4 else ip.nh
    l4 = ip.payload
    sport = dport = icmp_type = icmp_code = 0
    if protocol in PARSER_PORT_PROTOCOLS:
        sport, dport = l4.sport, l4.dport
    elif protocol in (1, 58):
        icmp_type, icmp_code = l4.type, l4.code
        sport = dport = l4.id  # the echo identifier, as the parser stores it
    return PacketKey(
        version,
        int(ip_address(ip.src)),
        int(ip_address(ip.dst)),
        protocol,
        sport,
        dport,
        icmp_type,
        icmp_code,
    )


@pytest.fixture(scope="module")
def parsed() -> np.ndarray:
    batch = Batch.from_packets(bytes(p) for p in PACKETS)
    parse(batch)
    meta = batch.meta[: batch.count].copy()
    assert not meta["drop"].any()
    return meta


def test_packet_keys_read_the_columns(parsed: np.ndarray) -> None:
    assert packet_keys(parsed) == [scapy_key(p) for p in PACKETS]


def test_classify_rows_cases(parsed: np.ndarray) -> None:
    rules = [
        rule("ssh", 1, dport=22),
        rule("echo", 2, protocol="icmp", icmp_type=8),
        rule("web6", 3, dst="container:web"),
        rule("db", 4, dst="container:db"),
        rule("v6any", 5, src="::/0"),
    ]
    got = classify_rows(rules, parsed, HOLDS)
    assert got.dtype == np.int32 and got.shape == (len(PACKETS),)
    #              tcp4 db, udp4 web, echo4, tcp6 any, udp6 :22, echo6, sctp :22, arp
    assert got.tolist() == [3, 2, 1, 4, 0, 4, 2, -1]  # sctp ports read as 0 for now
    assert classify_rows([], parsed, HOLDS).tolist() == [-1] * len(PACKETS)


ADDRESSES = [
    "any",
    "container:web",
    "container:db",
    "container:big",
    "10.0.0.0/8",
    "10.0.1.0/24",
    "2001:db8::/32",
    "fe80::/10",
    "::/0",
]


@st.composite
def random_rule(draw: st.DrawFn, index: int) -> Rule:
    kind = draw(st.sampled_from(["ports", "icmp", "icmpv6", "plain"]))
    fields: dict[str, object] = {}
    address = st.sampled_from(ADDRESSES)
    src, dst = draw(address), draw(address)
    if "." in src and ":" in dst or ":" in src[:5] and "." in dst:
        dst = "any"
    fields.update(src=src, dst=dst)
    if kind == "ports":
        fields["protocol"] = draw(st.sampled_from(["tcp", "udp", "sctp", "any"]))
        for name in ("sport", "dport"):
            lo = draw(st.sampled_from([0, 22, 53, 443, 1000, 40000]))
            fields[name] = draw(st.sampled_from(["any", lo, f"{lo}-{lo + 1000}"]))
    elif kind in ("icmp", "icmpv6"):
        family_ok = all(
            ("." not in a if kind == "icmpv6" else ":" not in a[:5])
            for a in (src, dst)
            if not a.startswith(("any", "container"))
        )
        if family_ok:
            fields["protocol"] = kind
            if draw(st.booleans()):
                fields["icmp_type"] = draw(st.sampled_from([0, 8, 128]))
                if draw(st.booleans()):
                    fields["icmp_code"] = 0
    return rule(f"r{index}", draw(st.integers(0, 3)), **fields)


@FAST
@given(st.integers(0, 12).flatmap(lambda n: st.tuples(*(random_rule(i) for i in range(n)))))
def test_classify_rows_equals_first_match_on_scapy_keys(
    parsed: np.ndarray, drawn: tuple[Rule, ...]
) -> None:
    rules = sorted(drawn, key=lambda r: r.order_key)
    expected = [first_match_index(rules, scapy_key(p), HOLDS) for p in PACKETS]
    assert classify_rows(rules, parsed, HOLDS).tolist() == expected
    for index, packet in zip(expected, PACKETS, strict=True):
        found = first_match(rules, scapy_key(packet), HOLDS)
        assert (found is None) == (index == -1)
        if found is not None:
            assert found is rules[index]
            assert not any(matches(r, scapy_key(packet), HOLDS) for r in rules[:index])
