"""The Internet checksum (RFC 1071): full, incremental (RFC 1624), scalar and over a batch.

One's-complement sums are associative and byte-order independent (RFC 1071
§2), so a sum can be taken in pieces (pseudo-header, header, payload) and
folded at the end. Three uses:

* scalar (``checksum``, ``pseudo_header_sum``): the builder and the tests;
* Numba helpers (``fold``, ``sum_bytes``, ``update16``, ``update32``) that kernels
  inline per packet;
* batch kernels (``ipv4_header_checksums``, ``l4_checksums``) that compute every
  row's checksum at once, for verification and for writing.

Incremental update follows RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), which,
unlike eqn. 2 of RFC 1141, never produces 0x0000 from a non-zero sum.
A UDP checksum of 0 means "none" over IPv4 and is left as it is; a computed
UDP checksum of 0 is sent as 0xFFFF (RFC 768).
"""

from __future__ import annotations

import numpy as np
from numba import njit

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58


# ---------------------------------------------------------------- scalar
def ones_sum(data: bytes | memoryview, initial: int = 0) -> int:
    """Unfolded one's-complement sum of ``data`` as 16-bit big-endian words."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    words = np.frombuffer(data, dtype=">u2")
    return initial + int(words.sum(dtype=np.uint64))


def fold_sum(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | memoryview, initial: int = 0) -> int:
    """The checksum to write into a header whose checksum field is zero in ``data``."""
    return ~fold_sum(ones_sum(data, initial)) & 0xFFFF


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int, *, version: int) -> int:
    """Sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1)."""
    width = 4 if version == 4 else 16
    addresses = src.to_bytes(width, "big") + dst.to_bytes(width, "big")
    return ones_sum(addresses) + protocol + length


def update(csum: int, old: int, new: int, *, bits: int = 16) -> int:
    """RFC 1624 eqn. 3: the checksum after a ``bits``-wide field changed from old to new."""
    total = ~csum & 0xFFFF
    for shift in range(0, bits, 16):
        total += (~(old >> shift) & 0xFFFF) + ((new >> shift) & 0xFFFF)
    return ~fold_sum(total) & 0xFFFF


# ---------------------------------------------------------------- Numba helpers
@njit(cache=True, inline="always")
def fold(total: int | np.int64) -> int | np.int64:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


@njit(cache=True, inline="always")
def sum_bytes(
    data: np.ndarray, row: int, start: int, end: int, total: int | np.int64
) -> int | np.int64:
    """Add bytes [start, end) of slot ``row`` to an unfolded sum, as big-endian words.

    Takes the 2-D slot array and a row number rather than a row view: Numba
    reference-counts every view it creates, which costs more than the sum itself.
    """
    at = start
    while at + 1 < end:
        total += (np.int64(data[row, at]) << 8) | np.int64(data[row, at + 1])
        at += 2
    # The odd last byte is read whether there is one or not (byte 0 stands in): read
    # under the test, it would cost a reference-count pair per call (see lookup4 in
    # portico/classify/lpm4.py).
    last = np.int64(data[row, at if at < end else 0])
    if at < end:
        total += last << 8
    return total


@njit(cache=True, inline="always")
def update16(csum: int | np.int64, old: int | np.int64, new: int | np.int64) -> int | np.int64:
    return ~fold((~csum & 0xFFFF) + (~old & 0xFFFF) + (new & 0xFFFF)) & 0xFFFF


@njit(cache=True, inline="always")
def update32(csum: int | np.int64, old: int | np.int64, new: int | np.int64) -> int | np.int64:
    total = (~csum & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    return ~fold(total + ((new >> 16) & 0xFFFF) + (new & 0xFFFF)) & 0xFFFF


@njit(cache=True, inline="always")
def pseudo_sum(
    data: np.ndarray, row: int, l3: int, version: int, protocol: int, length: int
) -> int | np.int64:
    """Pseudo-header sum read from the IP header at ``l3`` of slot ``row``."""
    # One sum over the version's address bytes rather than a sum on each branch
    # (see sum_bytes): ``data`` is used the same way whatever the version.
    first, end = (l3 + 12, l3 + 20) if version == 4 else (l3 + 8, l3 + 40)
    return sum_bytes(data, row, first, end, 0) + protocol + length


# ---------------------------------------------------------------- batch kernels
@njit(cache=True)
def ipv4_header_checksums(data: np.ndarray, meta: np.ndarray, count: int) -> np.ndarray:
    """Checksum each IPv4 row's header would need (its checksum field taken as zero).

    Rows that are not IPv4 get -1.
    """
    out = np.full(count, -1, dtype=np.int32)
    for i in range(count):
        m = meta[i]
        if m.ip_version != 4 or m.l3 < 0:
            continue
        l3 = m.l3
        end = l3 + (data[i, l3] & 0x0F) * 4
        total = sum_bytes(data, i, l3, end, 0)
        total -= (np.int64(data[i, l3 + 10]) << 8) | np.int64(data[i, l3 + 11])
        out[i] = ~fold(total) & 0xFFFF
    return out


@njit(cache=True)
def l4_checksums(data: np.ndarray, meta: np.ndarray, count: int) -> np.ndarray:
    """Checksum each row's TCP/UDP/ICMP/ICMPv6 header would need (field taken as zero).

    Covers the whole transport segment as the IP header bounds it. Rows with no
    such transport, or fragments, get -1.
    """
    out = np.full(count, -1, dtype=np.int32)
    for i in range(count):
        m = meta[i]
        if m.l4 < 0 or m.frag != 0:
            continue
        proto = m.protocol
        if proto == PROTO_TCP:
            field = 16
        elif proto == PROTO_UDP:
            field = 6
        elif proto in (PROTO_ICMP, PROTO_ICMPV6):
            field = 2
        else:
            continue
        l4 = m.l4
        end = m.l3 + m.l3_length
        length = end - l4
        total: int | np.int64 = 0
        if proto != PROTO_ICMP:
            total = pseudo_sum(data, i, m.l3, m.ip_version, proto, length)
        total = sum_bytes(data, i, l4, end, total)
        total -= (np.int64(data[i, l4 + field]) << 8) | np.int64(data[i, l4 + field + 1])
        value = ~fold(total) & 0xFFFF
        if proto == PROTO_UDP and value == 0:
            value = 0xFFFF
        out[i] = value
    return out


def checksums_valid(data: np.ndarray, meta: np.ndarray, count: int) -> np.ndarray:
    """Per row: True when every IPv4 header and transport checksum present is right.

    A zero UDP checksum over IPv4 ("none sent") counts as valid.
    """
    rows = np.arange(count)
    ok = np.ones(count, dtype=bool)
    ip = ipv4_header_checksums(data, meta, count)
    has_ip = ip >= 0
    l3 = meta["l3"][:count]
    stored_ip = (data[rows, l3 + 10].astype(np.int32) << 8) | data[rows, l3 + 11]
    ok &= ~has_ip | (stored_ip == ip)
    l4s = l4_checksums(data, meta, count)
    has_l4 = l4s >= 0
    proto = meta["protocol"][:count]
    offset = np.select([proto == PROTO_TCP, proto == PROTO_UDP], [16, 6], 2)
    at = np.where(has_l4, meta["l4"][:count] + offset, 0)
    stored = (data[rows, at].astype(np.int32) << 8) | data[rows, at + 1]
    udp_none = (proto == PROTO_UDP) & (meta["ip_version"][:count] == 4) & (stored == 0)
    ok &= ~has_l4 | (stored == l4s) | udp_none
    return ok
