"""IPv6 (RFC 8200): the fixed 40 bytes and the extension headers the parser walks.

Extension headers are headers of their own in a packet's stack, each naming
the next one, as on the wire::

    build(Ethernet(), IPv6(...), HopByHop(options=ROUTER_ALERT), IPv6Fragment(ident=7), UDP())

Hop-by-hop, routing and destination options share one shape
(``IPv6ExtHeader``: next header, length in 8-octet units beyond the first,
then data); the subclasses only say which protocol number announces them.
``options`` holds the data after the first two bytes. Padding to a multiple of
8 uses Pad1/PadN options (RFC 8200 §4.2) for the two option headers and zeros
for routing. The fragment header is fixed-size (``IPv6Fragment``).
"""

from __future__ import annotations

from typing import ClassVar

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT = 44
DEST_OPTIONS = 60
NO_NEXT_HEADER = 59

OPT_PAD1 = 0
OPT_PADN = 1
ROUTER_ALERT = bytes((5, 2, 0, 0))  # hop-by-hop option: router alert, MLD


class IPv6(Header):
    NAME = "ipv6"
    FIELDS = (
        Field("version", 4, 6),
        Field("traffic_class", 8),
        Field("flow_label", 20),
        Field("payload_length", 16),
        Field("next_header", 8),
        Field("hop_limit", 8, 64),
        Field("src", 128, 0, kind="ipv6"),
        Field("dst", 128, 0, kind="ipv6"),
    )

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        if self.version != 6:
            raise PacketError(f"ipv6: version is {self.version}, not 6")
        return offset


def option_padding(count: int) -> bytes:
    """``count`` bytes of Pad1/PadN options (RFC 8200 §4.2)."""
    if count == 0:
        return b""
    if count == 1:
        return bytes((OPT_PAD1,))
    return bytes((OPT_PADN, count - 2)) + b"\0" * (count - 2)


class IPv6ExtHeader(Header):
    """Hop-by-hop, routing and destination options share this shape.

    ``length`` counts 8-byte units beyond the first 8, so the header is
    ``8 * (length + 1)`` bytes; the bytes after the fixed pair are in ``options``.
    Used directly it is a hop-by-hop header.
    """

    NAME = "ipv6-ext"
    PROTOCOL: ClassVar[int] = HOP_BY_HOP  # the next_header value that announces it
    PAD_WITH_OPTIONS: ClassVar[bool] = True
    FIELDS = (
        Field("next_header", 8),
        Field("length", 8),
    )

    def pack_variable(self) -> bytes:
        data = bytes(self.options)
        missing = -(len(data) + self.SIZE) % 8
        if self.PAD_WITH_OPTIONS:
            return data + option_padding(missing)
        return data + b"\0" * missing

    def wire_length(self) -> int:
        """The ``length`` field this header's data needs."""
        return (self.SIZE + len(self.pack_variable())) // 8 - 1

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        end = offset + 8 * (self.length + 1) - self.SIZE
        if end > len(buf):
            raise TruncatedError(
                self.NAME, need=8 * (self.length + 1), have=len(buf) - offset + self.SIZE
            )
        object.__setattr__(self, "options", bytes(buf[offset:end]))
        return end


class HopByHop(IPv6ExtHeader):
    NAME = "ipv6-hopopts"
    PROTOCOL = HOP_BY_HOP


class Routing(IPv6ExtHeader):
    """``options`` starts with the routing type and segments left, then type-specific data."""

    NAME = "ipv6-routing"
    PROTOCOL = ROUTING
    PAD_WITH_OPTIONS = False


class DestOptions(IPv6ExtHeader):
    NAME = "ipv6-destopts"
    PROTOCOL = DEST_OPTIONS


class IPv6Fragment(Header):
    NAME = "ipv6-frag"
    PROTOCOL: ClassVar[int] = FRAGMENT
    FIELDS = (
        Field("next_header", 8),
        Field("reserved", 8),
        Field("frag_offset", 13),  # in 8-byte units
        Field("reserved2", 2),
        Field("more", 1),
        Field("ident", 32),
    )


# Which header class a next_header value announces, for the decoder.
EXTENSION_HEADERS: dict[int, type[Header]] = {
    HOP_BY_HOP: HopByHop,
    ROUTING: Routing,
    FRAGMENT: IPv6Fragment,
    DEST_OPTIONS: DestOptions,
}
