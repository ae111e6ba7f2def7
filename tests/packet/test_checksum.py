"""The scalar Internet checksum, pseudo-header sums and RFC 1624 updates, against Scapy."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.inet6 import IPv6 as ScapyIPv6
from scapy.layers.inet6 import in6_chksum
from scapy.utils import checksum as scapy_checksum

from portico.packet.checksum import checksum, fold_sum, ones_sum, pseudo_header_sum, update


@given(st.binary(max_size=300))
def test_checksum_matches_scapy(data: bytes) -> None:
    assert checksum(data) == scapy_checksum(data)


def test_known_vectors() -> None:
    # RFC 1071 §3 example: the words sum to 0x2ddf0, folded 0xddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert fold_sum(ones_sum(data)) == 0xDDF2
    assert checksum(data) == 0x220D
    assert checksum(b"") == 0xFFFF
    assert checksum(b"\xff\xff") == 0x0000


@given(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=64),
)  # fmt: skip
def test_udp_pseudo_header_v4_matches_scapy(src: int, dst: int, payload: bytes) -> None:
    packet = IP(bytes(IP(src=str(ipaddress.IPv4Address(src)), dst=str(ipaddress.IPv4Address(dst)))
                      / ScapyUDP(sport=1, dport=2) / payload))  # fmt: skip
    segment = bytearray(bytes(packet[ScapyUDP]))
    segment[6:8] = b"\0\0"
    ours = checksum(segment, pseudo_header_sum(src, dst, 17, len(segment), version=4))
    assert (ours or 0xFFFF) == packet[ScapyUDP].chksum


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1), st.binary(max_size=64))
def test_pseudo_header_v6_matches_scapy(src: int, dst: int, payload: bytes) -> None:
    ip = ScapyIPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)))
    theirs = in6_chksum(58, ip / payload, payload)
    ours = checksum(payload, pseudo_header_sum(src, dst, 58, len(payload), version=6))
    assert ours == theirs


@given(
    st.binary(min_size=20, max_size=20).map(bytearray), st.integers(0, 9), st.integers(0, 0xFFFF)
)
def test_update_matches_recomputation(header: bytearray, word: int, new: int) -> None:
    header[10:12] = b"\0\0"
    header[10:12] = checksum(header).to_bytes(2, "big")
    at = 2 * word if word != 5 else 0  # never the checksum field itself
    old = int.from_bytes(header[at : at + 2], "big")
    updated = update(int.from_bytes(header[10:12], "big"), old, new)
    header[at : at + 2] = new.to_bytes(2, "big")
    header[10:12] = b"\0\0"
    full = checksum(header)
    if any(header):
        assert updated == full  # eqn. 3 is exact whenever some data is non-zero
    else:
        # All-zero data is the one case where +0 and -0 differ (RFC 1624 §3; it
        # cannot occur in an IP header, whose version field is non-zero).
        assert {updated, full} <= {0x0000, 0xFFFF}


def test_update_corner_cases() -> None:
    # RFC 1624 §3's example: a header whose sum is 0xCD7A (checksum 0x3285) has a
    # word changed from 0x5555 to 0x3285; eqn. 3 gives 0x0000, never -0 (0xFFFF).
    assert update(0xDD2F, 0x5555, 0x3285) == 0x0000
    assert checksum(bytes.fromhex("cd7a")) == 0x3285
    # Changing 0x0001 -> 0x0000 where that was the only non-zero word: the data
    # becomes all zeros, whose checksum eqn. 3 gives as 0x0000 (+0 complemented).
    assert update(0xFFFE, 0x0001, 0x0000) == 0x0000
    assert update(0x0000, 0x0000, 0x0000) == 0x0000
    assert update(0x1234, 0x5678, 0x5678) == 0x1234
    # 32-bit fields (addresses) in one call equal two 16-bit updates.
    one = update(0xABCD, 0x0A000001, 0xC0A80001, bits=32)
    two = update(update(0xABCD, 0x0A00, 0xC0A8), 0x0001, 0x0001)
    assert one == two


def test_update_on_real_packet_matches_scapy() -> None:
    packet = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ScapyUDP()))
    rewritten = IP(bytes(IP(src="192.168.7.9", dst="10.0.0.2") / ScapyUDP()))
    ours = update(packet.chksum, 0x0A000001, int(ipaddress.IPv4Address("192.168.7.9")), bits=32)
    assert ours == rewritten.chksum
