"""Properties over many inputs: decode never raises, build then decode gives the fields back."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve, GeneveOption
from portico.packet.gre import GRE
from portico.packet.gtpu import GTPU, pdu_session_container
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import DestOptions, HopByHop, IPv6, IPv6Fragment
from portico.packet.tcp import TCP
from portico.packet.udp import UDP
from portico.packet.vlan import Dot1Q
from portico.packet.vxlan import VXLAN

SEEDS = [
    build(Ethernet(), Dot1Q(vid=5), IPv4(options=b"\x94\x04\0\0"), TCP(options=[("mss", 1)])),
    build(Ethernet(), IPv6(), HopByHop(), DestOptions(), IPv6Fragment(), UDP(), payload=b"x"),
    build(Ethernet(), IPv4(), UDP(), VXLAN(), Ethernet(), IPv4(), UDP(), payload=b"y"),
    build(Ethernet(), IPv4(), UDP(), Geneve(options=[GeneveOption(options=b"ab")]), Ethernet()),
    build(Ethernet(), IPv4(), UDP(), GTPU(seq=1, extensions=[pdu_session_container(3)]), IPv6()),
    build(Ethernet(), IPv4(), GRE(checksum_present=1, key=1, seq=2), IPv4(), TCP()),
]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_never_raises(data: bytes) -> None:
    result = decode(data)
    assert result.error is None or isinstance(result.error, str)
    result.show()


@FAST
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_decode_mutated_packets_never_raises(seed: bytes, flips: list, cut: int) -> None:
    data = bytearray(seed)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    result = decode(bytes(data[: len(data) - cut % (len(data) + 1)]))
    result.show()


u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


@FAST
@given(
    vid=st.integers(0, 4095), pcp=st.integers(0, 7), tos=u8, ident=u16, ttl=u8,
    src=u32, dst=u32, sport=u16, dport=u16, seq=u32, window=u16, mss=u16,
    payload=st.binary(max_size=40),
)  # fmt: skip
def test_tcp_over_vlan_round_trip(vid, pcp, tos, ident, ttl, src, dst, sport, dport, seq, window,
                                  mss, payload) -> None:  # fmt: skip
    headers = [
        Ethernet(), Dot1Q(vid=vid, pcp=pcp),
        IPv4(tos=tos, ident=ident, ttl=ttl, src=src, dst=dst),
        TCP(sport=sport, dport=dport, seq=seq, window=window, options=[("mss", mss)]),
    ]  # fmt: skip
    d = decode(build(*headers, payload=payload))
    assert d.error is None and d.payload == payload
    assert d[Dot1Q].vid == vid and d[IPv4].ident == ident and d[IPv4].src == src
    tcp = d[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.window) == (sport, dport, seq, window)
    assert tcp.option_list == [("mss", mss)]
    # Re-building the decoded headers reproduces the same bytes.
    assert build(*d.headers, payload=d.payload) == build(*headers, payload=payload)


@FAST
@given(
    src=st.integers(0, 2**128 - 1), flow=st.integers(0, 2**20 - 1), sport=u16,
    teid=u32, qfi=st.integers(0, 63), vni=st.integers(0, 2**24 - 1),
    data=st.binary(max_size=9), key=u32, payload=st.binary(max_size=30),
)  # fmt: skip
def test_tunnels_round_trip(src, flow, sport, teid, qfi, vni, data, key, payload) -> None:
    stacks = [
        [IPv6(src=src, flow_label=flow), UDP(sport=sport), GTPU(teid=teid,
         extensions=[pdu_session_container(qfi)]), IPv4(), UDP(sport=sport, dport=1)],
        [IPv4(), UDP(sport=sport), Geneve(vni=vni, options=[GeneveOption(options=data)]),
         Ethernet(), IPv6(src=src)],
        [IPv4(), GRE(key=key, checksum_present=1), IPv4(), UDP(sport=sport, dport=2)],
        [IPv4(), UDP(sport=sport), VXLAN(vni=vni), Ethernet(), IPv4()],
    ]  # fmt: skip
    for stack in stacks:
        raw = build(Ethernet(), *stack, payload=payload)
        d = decode(raw)
        assert d.error is None, d.error
        assert [type(h) for h in d.headers] == [Ethernet] + [type(h) for h in stack]
        assert d.payload == payload
        assert build(*d.headers, payload=d.payload) == raw
    assert decode(build(Ethernet(), *stacks[0], payload=payload))[GTPU].qfi == qfi
