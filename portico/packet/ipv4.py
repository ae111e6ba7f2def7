"""IPv4 (RFC 791): the fixed 20 bytes, options, fragments.

Options are kept as their raw bytes in ``options`` (RFC 791 §3.1 lists the
kinds; nothing in the gateway interprets them). On the wire they are padded
with zeros (End of Option List) to a multiple of 4 bytes, and ``ihl`` counts
them: the builder derives it, the decoder reads exactly ``ihl * 4`` bytes.
"""

from __future__ import annotations

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

FLAG_DF = 0b010
FLAG_MF = 0b001
MAX_OPTIONS = 40  # ihl is 4 bits: at most 15 words, 5 of them fixed


class IPv4(Header):
    NAME = "ipv4"
    FIELDS = (
        Field("version", 4, 4),
        Field("ihl", 4, 5),
        Field("tos", 8),
        Field("total_length", 16),
        Field("ident", 16),
        Field("flags", 3, kind="flags"),
        Field("frag_offset", 13),  # in 8-byte units
        Field("ttl", 8, 64),
        Field("protocol", 8),
        Field("checksum", 16, kind="flags"),
        Field("src", 32, 0, kind="ipv4"),
        Field("dst", 32, 0, kind="ipv4"),
    )

    def pack_variable(self) -> bytes:
        options = bytes(self.options)
        padded = options + b"\0" * (-len(options) % 4)
        if len(padded) > MAX_OPTIONS:
            raise PacketError(f"ipv4: {len(padded)} bytes of options, at most {MAX_OPTIONS}")
        return padded

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        if self.version != 4:
            raise PacketError(f"ipv4: version is {self.version}, not 4")
        if self.ihl < 5:
            raise PacketError(f"ipv4: ihl {self.ihl} is below the minimum of 5")
        end = offset + (self.ihl - 5) * 4
        if end > len(buf):
            raise TruncatedError(self.NAME, need=self.ihl * 4, have=len(buf) - offset + self.SIZE)
        object.__setattr__(self, "options", bytes(buf[offset:end]))
        return end

    def is_fragment(self) -> bool:
        """True for any piece of a fragmented datagram (first, middle or last)."""
        return bool(self.flags & FLAG_MF) or self.frag_offset != 0
