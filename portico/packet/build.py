"""Build a packet from a stack of headers, deriving what the headers imply.

``build(Ethernet(), IPv4(src=..., dst=...), UDP(sport=1, dport=2), payload=b"hi")``
works like Scapy's ``/``: headers are listed outer to inner, and whatever the
user did not set explicitly (``Header.is_explicit``) is filled in:

* next-header selectors, from the binding tables of ``portico.packet.layers``
  (``SELECTOR_VALUE``): Ethernet/VLAN ethertype, IPv4 protocol, IPv6 and
  extension next_header, GRE and Geneve protocol, the UDP destination port of
  VXLAN/Geneve/GTP-U. Ethernet then VLAN then VLAN is QinQ: the Ethernet
  ethertype becomes the S-tag TPID 0x88A8 and the outer tag's the C-tag's.
  An IPv6 header or extension with no header after it gets "no next header";
* lengths: IPv4 ihl/total_length, IPv6 payload_length, extension length, UDP
  length, TCP data_offset, GTP-U length and flags, Geneve opt_len, GRE flags;
* checksums: IPv4 header; TCP, UDP and ICMPv6 over the pseudo-header of the
  nearest IP header outside them; ICMP; GRE when its checksum bit is set.
  A computed UDP checksum of 0 is sent as 0xFFFF (RFC 768).

It works from the innermost header outwards, since every length and checksum
depends on what is inside. The user's header objects are not modified.

The body of an ICMP or ICMPv6 header is a packet of its own (for errors, the
packet that caused it): headers after one are built as a separate packet and
become its payload, so their lengths and checksums are their own.

Not handled: the pseudo-header's destination when an IPv6 routing header has
segments left (the final destination should be used); the caller sets the
checksum explicitly in that case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from portico.packet.checksum import (
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    checksum,
    pseudo_header_sum,
)
from portico.packet.errors import PacketError
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve
from portico.packet.gre import GRE
from portico.packet.gtpu import GTPU
from portico.packet.header import Header
from portico.packet.icmp import ICMP
from portico.packet.icmpv6 import ICMPv6
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import NO_NEXT_HEADER, IPv6, IPv6ExtHeader, IPv6Fragment
from portico.packet.layers import ETHERTYPE, IP_PROTO, SELECTOR_VALUE, UDP_DPORT
from portico.packet.stack import layer_of
from portico.packet.tcp import TCP
from portico.packet.udp import UDP
from portico.packet.vlan import TPID_STAG, Dot1Q

# Which field of a header names the next one, and which binding table it uses.
SELECTOR_FIELD: dict[type[Header], tuple[str, str]] = {
    Ethernet: ("ethertype", ETHERTYPE),
    Dot1Q: ("ethertype", ETHERTYPE),
    IPv4: ("protocol", IP_PROTO),
    IPv6: ("next_header", IP_PROTO),
    IPv6ExtHeader: ("next_header", IP_PROTO),
    IPv6Fragment: ("next_header", IP_PROTO),
    GRE: ("protocol", ETHERTYPE),
    Geneve: ("protocol", ETHERTYPE),
    UDP: ("dport", UDP_DPORT),
}


_V = TypeVar("_V")


def build(*headers: Header, payload: bytes = b"") -> bytes:
    """Wire bytes of ``headers`` (outer first) followed by ``payload``."""
    for header in headers:
        if not isinstance(header, Header):
            raise PacketError(f"build: expected headers, got {header!r}")
    stack = [header.copy() for header in headers]
    for index, header in enumerate(stack):
        if isinstance(header, ICMP | ICMPv6) and index + 1 < len(stack):
            payload = build(*headers[index + 1 :], payload=payload)
            stack = stack[: index + 1]
            break
    _fill_selectors(stack)
    body = bytes(payload)
    for index in range(len(stack) - 1, -1, -1):
        header = stack[index]
        filler = _lookup(FILLERS, type(header))
        if filler is not None:
            filler(header, body, stack[:index])
        body = header.pack() + body
    return body


def _lookup(table: Mapping[type[Header], _V], cls: type) -> _V | None:
    for base in cls.__mro__:
        if base in table:
            return table[base]
    return None


def _fill_selectors(stack: list[Header]) -> None:
    for index, header in enumerate(stack):
        spec = _lookup(SELECTOR_FIELD, type(header))
        if spec is None:
            continue
        field, selector = spec
        if index + 1 == len(stack):
            # As Scapy does: raw bytes after IPv6 are "no next header", not hop-by-hop (0).
            if field == "next_header":
                header.fill(field, NO_NEXT_HEADER)
            continue
        value = selector_value(selector, stack[index + 1])
        if value is not None:
            header.fill(field, value)
    # QinQ: the outer tag right after Ethernet is an 802.1ad S-tag.
    if (
        len(stack) >= 3
        and isinstance(stack[0], Ethernet)
        and isinstance(stack[1], Dot1Q)
        and isinstance(stack[2], Dot1Q)
    ):
        stack[0].fill("ethertype", TPID_STAG)


def selector_value(selector: str, upper: Header) -> int | None:
    """The value a ``selector`` field takes when ``upper`` follows, or None if unbound."""
    if selector == IP_PROTO and hasattr(type(upper), "PROTOCOL"):
        return type(upper).PROTOCOL  # type: ignore[attr-defined]
    layer = layer_of(type(upper))
    return None if layer is None else SELECTOR_VALUE.get((selector, layer))


def _enclosing_ip(outer: list[Header]) -> IPv4 | IPv6 | None:
    for header in reversed(outer):
        if isinstance(header, IPv4 | IPv6):
            return header
    return None


def _transport_checksum(
    header: Header, body: bytes, outer: list[Header], protocol: int
) -> int | None:
    ip = _enclosing_ip(outer)
    if ip is None:
        return None
    header.fill("checksum", 0)
    segment = header.pack() + body
    version = 4 if isinstance(ip, IPv4) else 6
    initial = pseudo_header_sum(ip.src, ip.dst, protocol, len(segment), version=version)
    return checksum(segment, initial)


def _fill_ipv4(header: IPv4, body: bytes, outer: list[Header]) -> None:
    options = header.pack_variable()
    header.fill("ihl", 5 + len(options) // 4)
    header.fill("total_length", header.SIZE + len(options) + len(body))
    if not header.is_explicit("checksum"):
        header.fill("checksum", 0)
        header.fill("checksum", checksum(header.pack()))


def _fill_ipv6(header: IPv6, body: bytes, outer: list[Header]) -> None:
    header.fill("payload_length", len(body))


def _fill_ipv6_ext(header: IPv6ExtHeader, body: bytes, outer: list[Header]) -> None:
    header.fill("length", header.wire_length())


def _fill_udp(header: UDP, body: bytes, outer: list[Header]) -> None:
    header.fill("length", header.SIZE + len(body))
    if not header.is_explicit("checksum"):
        value = _transport_checksum(header, body, outer, PROTO_UDP)
        if value is not None:
            header.fill("checksum", value or 0xFFFF)


def _fill_tcp(header: TCP, body: bytes, outer: list[Header]) -> None:
    header.fill("data_offset", 5 + len(header.pack_variable()) // 4)
    if not header.is_explicit("checksum"):
        value = _transport_checksum(header, body, outer, PROTO_TCP)
        if value is not None:
            header.fill("checksum", value)


def _fill_icmp(header: ICMP, body: bytes, outer: list[Header]) -> None:
    if not header.is_explicit("checksum"):
        header.fill("checksum", 0)
        header.fill("checksum", checksum(header.pack() + body))


def _fill_icmpv6(header: ICMPv6, body: bytes, outer: list[Header]) -> None:
    if not header.is_explicit("checksum"):
        value = _transport_checksum(header, body, outer, PROTO_ICMPV6)
        if value is not None:
            header.fill("checksum", value)


def _fill_gre(header: GRE, body: bytes, outer: list[Header]) -> None:
    # Giving a key or sequence number asks for its word; flags are never cleared.
    if header.is_explicit("key"):
        header.fill("key_present", 1)
    if header.is_explicit("seq"):
        header.fill("seq_present", 1)
    if header.checksum_present and not header.is_explicit("checksum"):
        header.fill("checksum", 0)
        header.fill("checksum", checksum(header.pack() + body))


def _fill_geneve(header: Geneve, body: bytes, outer: list[Header]) -> None:
    header.fill("opt_len", len(header.pack_variable()) // 4)


def _fill_gtpu(header: GTPU, body: bytes, outer: list[Header]) -> None:
    # Giving a value asks for its field; flags are never cleared.
    if header.is_explicit("seq"):
        header.fill("seq_flag", 1)
    if header.is_explicit("npdu"):
        header.fill("npdu_flag", 1)
    if header.extensions:
        header.fill("ext_flag", 1)
    header.fill("length", len(header.pack_variable()) + len(body))


Filler = Callable[[Header, bytes, list[Header]], None]
FILLERS: dict[type[Header], Filler] = {
    IPv4: _fill_ipv4,  # type: ignore[dict-item]
    IPv6: _fill_ipv6,  # type: ignore[dict-item]
    IPv6ExtHeader: _fill_ipv6_ext,  # type: ignore[dict-item]
    UDP: _fill_udp,  # type: ignore[dict-item]
    TCP: _fill_tcp,  # type: ignore[dict-item]
    ICMP: _fill_icmp,  # type: ignore[dict-item]
    ICMPv6: _fill_icmpv6,  # type: ignore[dict-item]
    GRE: _fill_gre,  # type: ignore[dict-item]
    Geneve: _fill_geneve,  # type: ignore[dict-item]
    GTPU: _fill_gtpu,  # type: ignore[dict-item]
}
