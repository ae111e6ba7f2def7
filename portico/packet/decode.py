"""Decode one packet's bytes into its stack of headers, never raising.

``decode(frame)`` starts at Ethernet and walks inwards: each header's scalar
``unpack`` reads it, then a dispatch table keyed by header class says which
header comes next, looking the selector field up in the binding tables of
``portico.packet.layers`` (the same tables the batch parser indexes), so
VLAN/QinQ, IPv6 extension headers and the inner packets of VXLAN, Geneve, GRE
and GTP-U are followed without a chain of ifs.

Length fields bound what follows: an IPv4 total_length, IPv6 payload_length,
UDP length or GTP-U length limits the bytes the inner headers and the payload
may use (bytes past the outermost bound, such as Ethernet padding, are the
``trailer``). A length that runs past the bytes present, or any header that
``unpack`` rejects, stops decoding with ``error`` naming the header and the
problem; the headers before it are kept.

Fragments: a non-first fragment's bytes are payload; a first fragment's
transport header is decoded without checking its length against the data.
ICMP and ICMPv6 errors keep the offending packet as their payload and also
decode it, leniently (it is usually cut short), as ``carried``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from portico.packet.errors import PacketError
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve
from portico.packet.gre import GRE
from portico.packet.gtpu import G_PDU, GTPU
from portico.packet.header import Header
from portico.packet.icmp import ICMP
from portico.packet.icmpv6 import ICMPv6
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import EXTENSION_HEADERS, IPv6, IPv6ExtHeader, IPv6Fragment
from portico.packet.layers import ETHERTYPE_NEXT, IP_PROTO_NEXT, UDP_PORT_NEXT, Layer
from portico.packet.stack import HEADER_OF_LAYER
from portico.packet.udp import UDP
from portico.packet.vlan import Dot1Q
from portico.packet.vxlan import VXLAN


@dataclass
class Decoded:
    """A decoded packet: headers outer to inner, what follows them, and why it stopped."""

    headers: list[Header] = field(default_factory=list)
    payload: bytes = b""
    error: str | None = None  # set when malformed bytes stopped the decoding
    carried: Decoded | None = None  # the offending packet inside an ICMP/ICMPv6 error
    trailer: bytes = b""  # bytes past the outermost length field (Ethernet padding)

    def get(self, cls: type[Header], nth: int = 0) -> Header | None:
        """The ``nth`` header of class ``cls`` (0 = outermost), or None."""
        found = [h for h in self.headers if isinstance(h, cls)]
        return found[nth] if nth < len(found) else None

    def __getitem__(self, cls: type[Header]) -> Header:
        header = self.get(cls)
        if header is None:
            raise KeyError(cls.__name__)
        return header

    def __contains__(self, cls: type[Header]) -> bool:
        return self.get(cls) is not None

    @property
    def names(self) -> list[str]:
        return [h.NAME for h in self.headers]

    def show(self, indent: str = "") -> str:
        """A readable multi-line description, one header a line."""
        lines = []
        for header in self.headers:
            shown = " ".join(f"{f.name}={f.show(getattr(header, f.name))}" for f in header.FIELDS)
            extra = header.describe_variable()
            lines.append(f"{indent}{header.NAME:<14} {shown}{'  ' + extra if extra else ''}")
        if self.payload:
            preview = self.payload[:32].hex() + ("…" if len(self.payload) > 32 else "")
            lines.append(f"{indent}{'payload':<14} {len(self.payload)} bytes {preview}")
        if self.trailer:
            lines.append(f"{indent}{'trailer':<14} {len(self.trailer)} bytes {self.trailer.hex()}")
        if self.carried is not None:
            lines.append(f"{indent}carried packet:")
            lines.append(self.carried.show(indent + "  "))
        if self.error:
            lines.append(f"{indent}error: {self.error}")
        return "\n".join(lines)


# ------------------------------------------------------------------ dispatch
def _ip_next(protocol: int) -> type[Header] | None:
    layer = IP_PROTO_NEXT[protocol]
    if layer == Layer.IPV6_EXT:
        return EXTENSION_HEADERS[protocol]
    return HEADER_OF_LAYER.get(layer)  # type: ignore[call-overload]


def _ether_next(ethertype: int) -> type[Header] | None:
    return HEADER_OF_LAYER.get(ETHERTYPE_NEXT[ethertype])  # type: ignore[call-overload]


def _ipv4_next(h: IPv4, rest: memoryview) -> type[Header] | None:
    if h.frag_offset:
        return None
    upper = _ip_next(h.protocol)
    # The extension-header numbers mean something only after IPv6.
    return None if upper in EXTENSION_HEADERS.values() else upper


def _gtpu_next(h: GTPU, rest: memoryview) -> type[Header] | None:
    if h.message_type != G_PDU or not rest:
        return None
    return {4: IPv4, 6: IPv6}.get(rest[0] >> 4)


NextHeader = Callable[[Header, memoryview], "type[Header] | None"]
# Header class -> what follows it. Classes not listed end the stack.
NEXT: dict[type[Header], NextHeader] = {
    Ethernet: lambda h, rest: _ether_next(h.ethertype),  # type: ignore[attr-defined]
    Dot1Q: lambda h, rest: _ether_next(h.ethertype),  # type: ignore[attr-defined]
    IPv4: _ipv4_next,  # type: ignore[dict-item]
    IPv6: lambda h, rest: _ip_next(h.next_header),  # type: ignore[attr-defined]
    IPv6ExtHeader: lambda h, rest: _ip_next(h.next_header),  # type: ignore[attr-defined]
    IPv6Fragment: lambda h, rest: (
        None if h.frag_offset else _ip_next(h.next_header)  # type: ignore[attr-defined]
    ),
    UDP: lambda h, rest: HEADER_OF_LAYER.get(UDP_PORT_NEXT[h.dport]),  # type: ignore[attr-defined]
    GRE: lambda h, rest: _ether_next(h.protocol),  # type: ignore[attr-defined]
    Geneve: lambda h, rest: _ether_next(h.protocol),  # type: ignore[attr-defined]
    VXLAN: lambda h, rest: Ethernet,
    GTPU: _gtpu_next,  # type: ignore[dict-item]
}

# ICMP errors: which header starts the carried packet.
CARRIED_BY: dict[type[Header], type[Header]] = {ICMP: IPv4, ICMPv6: IPv6}


def _lookup_next(cls: type[Header]) -> NextHeader | None:
    for base in cls.__mro__:
        if base in NEXT:
            return NEXT[base]
    return None


# ------------------------------------------------------------------ length bounds
def _bound(header: Header, start: int, after: int) -> tuple[int | None, str]:
    """The end a header's length field gives its packet, or None; and what it measures."""
    if isinstance(header, IPv4):
        if header.total_length < header.ihl * 4:
            return -1, f"total_length {header.total_length} is shorter than the header"
        return start + header.total_length, f"total_length {header.total_length}"
    if isinstance(header, IPv6):
        return after + header.payload_length, f"payload_length {header.payload_length}"
    if isinstance(header, UDP):
        if header.length < UDP.SIZE:
            return -1, f"length {header.length} is shorter than the header"
        return start + header.length, f"length {header.length}"
    if isinstance(header, GTPU):
        end = start + GTPU.SIZE + header.length
        if after > end:
            return -1, f"length {header.length} is shorter than its optional fields"
        return end, f"length {header.length}"
    return None, ""


def _is_fragment(header: Header) -> bool:
    if isinstance(header, IPv4):
        return header.is_fragment()
    return isinstance(header, IPv6Fragment)


# ------------------------------------------------------------------ the walk
def decode(data: bytes | bytearray | memoryview, first: type[Header] = Ethernet) -> Decoded:
    """Decode ``data`` starting with header class ``first``; never raises on any bytes."""
    return _decode(memoryview(bytes(data)), first, lenient=False)


def _decode(buf: memoryview, first: type[Header], *, lenient: bool) -> Decoded:
    result = Decoded()
    offset, end = 0, len(buf)
    frame_end: int | None = None  # the first (outermost) bound: what lies past it is trailer
    cls: type[Header] | None = first
    while cls is not None:
        try:
            header, after = cls.unpack(buf[:end], offset)
        except PacketError as err:
            result.error = str(err)
            break
        result.headers.append(header)
        bound, what = _bound(header, offset, after)
        if bound is not None:
            if bound < 0:
                result.error = f"{header.NAME}: {what}"
                break
            if bound > end:
                if not lenient:
                    result.error = (
                        f"{header.NAME}: {what} runs past the end"
                        f" ({end - offset} bytes from the header's start)"
                    )
                    break
            else:
                end = bound
                if frame_end is None:
                    frame_end = bound
        if _is_fragment(header):
            lenient = True  # the transport's length covers the reassembled datagram
        offset = after
        if isinstance(header, ICMP | ICMPv6) and header.is_error():
            result.carried = _decode(buf[offset:end], CARRIED_BY[type(header)], lenient=True)
            break
        follow = _lookup_next(type(header))
        cls = follow(header, buf[offset:end]) if follow is not None else None
    result.payload = bytes(buf[offset:end]) if result.error is None else bytes(buf[offset:])
    if frame_end is not None and result.error is None:
        result.trailer = bytes(buf[frame_end:])
    return result
