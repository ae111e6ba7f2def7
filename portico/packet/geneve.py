"""Geneve (RFC 8926): UDP port 6081, a VNI and TLV options; the payload's type is an ethertype.

The options are ``GeneveOption`` TLVs, each a 4-byte header followed by its
data (in the option's ``options``, padded to 4 bytes; its ``length`` counts
those words). The Geneve header keeps all of them as wire bytes in
``options``; assigning a list of ``GeneveOption`` encodes it (deriving each
``length`` the user did not set) and ``option_list`` decodes it back. The
builder derives ``opt_len`` from the encoded bytes.
"""

from __future__ import annotations

from typing import Any

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

MAX_OPTIONS = 63 * 4  # opt_len is 6 bits of 4-byte words


class GeneveOption(Header):
    """One TLV option; ``length`` counts 4-byte words of data after these 4 bytes."""

    NAME = "geneve-option"
    FIELDS = (
        Field("option_class", 16),
        Field("option_type", 8),
        Field("reserved", 3),
        Field("length", 5),
    )

    def pack_variable(self) -> bytes:
        data = bytes(self.options)
        return data + b"\0" * (-len(data) % 4)

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        end = offset + 4 * self.length
        if end > len(buf):
            raise TruncatedError(self.NAME, need=4 + 4 * self.length, have=len(buf) - offset + 4)
        object.__setattr__(self, "options", bytes(buf[offset:end]))
        return end


def encode_options(options: list[GeneveOption]) -> bytes:
    out = bytearray()
    for option in options:
        if not isinstance(option, GeneveOption):
            raise PacketError(f"geneve: options must be GeneveOption, got {option!r}")
        option = option.copy()
        words = len(option.pack_variable()) // 4
        if words > 31:
            raise PacketError(f"geneve-option: {4 * words} bytes of data, at most 124")
        option.fill("length", words)
        out += option.pack()
    return bytes(out)


def decode_options(data: bytes) -> list[GeneveOption]:
    options: list[GeneveOption] = []
    at = 0
    while at < len(data):
        option, at = GeneveOption.unpack(data, at)
        options.append(option)  # type: ignore[arg-type]
    return options


class Geneve(Header):
    NAME = "geneve"
    FIELDS = (
        Field("version", 2),
        Field("opt_len", 6),  # options length in 4-byte words
        Field("oam", 1),
        Field("critical", 1),
        Field("reserved1", 6),
        Field("protocol", 16, 0x6558, kind="flags"),
        Field("vni", 24),
        Field("reserved2", 8),
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "options" and isinstance(value, list):
            value = encode_options(value)
        super().__setattr__(name, value)

    @property
    def option_list(self) -> list[GeneveOption]:
        return decode_options(bytes(self.options))

    def pack_variable(self) -> bytes:
        data = bytes(self.options)
        if len(data) % 4 or len(data) > MAX_OPTIONS:
            raise PacketError(f"geneve: {len(data)} bytes of options, need 4n <= {MAX_OPTIONS}")
        return data

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        if self.version != 0:
            raise PacketError(f"geneve: version {self.version} is not 0")
        end = offset + 4 * self.opt_len
        if end > len(buf):
            raise TruncatedError(self.NAME, need=8 + 4 * self.opt_len, have=len(buf) - offset + 8)
        options = bytes(buf[offset:end])
        try:
            decode_options(options)
        except PacketError as err:
            raise PacketError(f"geneve: options malformed: {err}") from None
        object.__setattr__(self, "options", options)
        return end

    def describe_variable(self) -> str:
        return f"options={self.option_list}" if self.options else ""
