"""GRE (RFC 2784, with the key and sequence number of RFC 2890).

The optional checksum (+reserved), key and sequence words follow the fixed part
in that order, each present when its flag bit is set. They are the typed
attributes ``checksum``, ``key`` and ``seq``. The builder sets ``key_present``
and ``seq_present`` when ``key``/``seq`` were given, and computes ``checksum``
(over the GRE header and payload) when ``checksum_present`` is set.
"""

from __future__ import annotations

from typing import Any

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

_WORD = Field("word", 32)


class GRE(Header):
    NAME = "gre"
    FIELDS = (
        Field("checksum_present", 1),
        Field("reserved_r", 1),
        Field("key_present", 1),
        Field("seq_present", 1),
        Field("reserved0", 9),
        Field("version", 3),
        Field("protocol", 16, 0, kind="flags"),
    )
    checksum: int = 0
    reserved1: int = 0
    key: int = 0
    seq: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("checksum", "reserved1"):
            value = Field(name, 16).coerce(self.NAME, value)
        elif name in ("key", "seq"):
            value = _WORD.coerce(self.NAME, value)
        super().__setattr__(name, value)

    def pack_variable(self) -> bytes:
        out = b""
        if self.checksum_present:
            out += self.checksum.to_bytes(2, "big") + self.reserved1.to_bytes(2, "big")
        if self.key_present:
            out += self.key.to_bytes(4, "big")
        if self.seq_present:
            out += self.seq.to_bytes(4, "big")
        return out + bytes(self.options)

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        if self.version != 0:
            raise PacketError(f"gre: version {self.version} is not supported (only 0)")
        need = 4 * (self.checksum_present + self.key_present + self.seq_present)
        if offset + need > len(buf):
            raise TruncatedError(self.NAME, need=4 + need, have=len(buf) - offset + 4)
        if self.checksum_present:
            object.__setattr__(self, "checksum", int.from_bytes(buf[offset : offset + 2], "big"))
            object.__setattr__(
                self, "reserved1", int.from_bytes(buf[offset + 2 : offset + 4], "big")
            )
            offset += 4
        for flag, name in ((self.key_present, "key"), (self.seq_present, "seq")):
            if flag:
                object.__setattr__(self, name, int.from_bytes(buf[offset : offset + 4], "big"))
                offset += 4
        return offset

    def describe_variable(self) -> str:
        shown = []
        if self.checksum_present:
            shown.append(f"checksum={self.checksum:#06x}")
        if self.key_present:
            shown.append(f"key={self.key}")
        if self.seq_present:
            shown.append(f"seq={self.seq}")
        return ", ".join(shown)
