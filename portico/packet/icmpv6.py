"""ICMPv6 (RFC 4443) and neighbour discovery (RFC 4861).

Errors carry the offending packet as their payload, as ICMPv4's do (see
``portico.packet.icmp``). Neighbour solicitations and advertisements have a
variable part decoded here: the 16-byte ``target`` address, then ND options
kept as wire bytes in ``options``. A list of typed options may be assigned
instead and ``option_list`` gives it back::

    ICMPv6(type=NEIGHBOR_SOLICIT, target="fe80::1",
           options=[("src_lladdr", "02:00:00:00:00:01")])

Known option names are ``src_lladdr`` and ``tgt_lladdr`` (a MAC); others are
``(type, data_bytes)`` with data padded so the option fills whole 8-octet
units. For an advertisement the R/S/O flags are the top bits of ``ident``.
"""

from __future__ import annotations

from typing import Any

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

DEST_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICIT = 133
ROUTER_ADVERT = 134
NEIGHBOR_SOLICIT = 135
NEIGHBOR_ADVERT = 136
ERROR_TYPES = (DEST_UNREACHABLE, PACKET_TOO_BIG, TIME_EXCEEDED, PARAMETER_PROBLEM)
ND_TYPES = (NEIGHBOR_SOLICIT, NEIGHBOR_ADVERT)

# Neighbour-advertisement flags, as bits of ``ident`` (the top of the second word).
NA_ROUTER = 0x8000
NA_SOLICITED = 0x4000
NA_OVERRIDE = 0x2000

OPT_SRC_LLADDR = 1
OPT_TGT_LLADDR = 2
_OPTION_NAMES = {"src_lladdr": OPT_SRC_LLADDR, "tgt_lladdr": OPT_TGT_LLADDR}
_OPTION_BY_TYPE = {value: name for name, value in _OPTION_NAMES.items()}

_TARGET = Field("target", 128, 0, kind="ipv6")
_MAC = Field("lladdr", 48, 0, kind="mac")

NdOption = tuple[str | int, Any]


def encode_nd_options(options: list[NdOption]) -> bytes:
    out = bytearray()
    for name, value in options:
        if isinstance(name, str):
            if name not in _OPTION_NAMES:
                raise PacketError(f"icmpv6: unknown ND option {name!r}")
            kind, data = _OPTION_NAMES[name], _MAC.coerce("icmpv6", value).to_bytes(6, "big")
        elif isinstance(value, bytes | bytearray):
            kind, data = name, bytes(value)
        else:
            raise PacketError(f"icmpv6: ND option {name!r} needs bytes, got {value!r}")
        data += b"\0" * (-(len(data) + 2) % 8)
        units = (len(data) + 2) // 8
        if units > 255:
            raise PacketError(f"icmpv6: ND option {name!r} is too long")
        out += bytes((kind, units)) + data
    return bytes(out)


def decode_nd_options(data: bytes) -> list[NdOption]:
    options: list[NdOption] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise PacketError("icmpv6: ND option cut short before its length")
        kind, units = data[at], data[at + 1]
        if units == 0:
            raise PacketError(f"icmpv6: ND option type {kind} has length 0")
        end = at + 8 * units
        if end > len(data):
            raise PacketError(f"icmpv6: ND option type {kind} runs past the message")
        body = data[at + 2 : end]
        name = _OPTION_BY_TYPE.get(kind)
        if name is not None and units == 1:
            options.append((name, _MAC.show(int.from_bytes(body[:6], "big"))))
        else:
            options.append((kind, bytes(body)))
        at = end
    return options


class ICMPv6(Header):
    """The second word is (ident, seq) for echo, the MTU for packet-too-big,
    the pointer for parameter problems, flags + reserved for neighbour discovery."""

    NAME = "icmpv6"
    FIELDS = (
        Field("type", 8, ECHO_REQUEST),
        Field("code", 8),
        Field("checksum", 16, kind="flags"),
        Field("ident", 16),
        Field("seq", 16),
    )
    target: int = 0  # neighbour discovery only

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "target":
            value = _TARGET.coerce(self.NAME, value)
        elif name == "options" and isinstance(value, list):
            value = encode_nd_options(value)
        super().__setattr__(name, value)

    def is_error(self) -> bool:
        return self.type in ERROR_TYPES

    def is_neighbor_discovery(self) -> bool:
        return self.type in ND_TYPES

    @property
    def option_list(self) -> list[NdOption]:
        return decode_nd_options(bytes(self.options))

    def pack_variable(self) -> bytes:
        if not self.is_neighbor_discovery():
            return bytes(self.options)
        return self.target.to_bytes(16, "big") + bytes(self.options)

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        """An ND message's options run to the end of ``buf``, which the decoder bounds."""
        if not self.is_neighbor_discovery():
            return offset
        if offset + 16 > len(buf):
            raise TruncatedError(self.NAME, need=self.SIZE + 16, have=len(buf) - offset + self.SIZE)
        object.__setattr__(self, "target", int.from_bytes(buf[offset : offset + 16], "big"))
        options = bytes(buf[offset + 16 :])
        decode_nd_options(options)
        object.__setattr__(self, "options", options)
        return len(buf)

    def describe_variable(self) -> str:
        if not self.is_neighbor_discovery():
            return super().describe_variable()
        try:
            shown: object = self.option_list
        except PacketError:
            shown = self.options.hex()
        return f"target={_TARGET.show(self.target)}, options={shown}"
