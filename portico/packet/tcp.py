"""TCP (RFC 9293) and its options: MSS, window scale, SACK-permitted, timestamps.

``options`` holds the option bytes as they go on the wire. Assigning a list of
typed options encodes them, and ``option_list`` decodes them back::

    TCP(flags=SYN, options=[("mss", 1460), ("nop", None), ("wscale", 7),
                            ("sackok", None), ("timestamp", (tsval, tsecr))])

Known names: ``eol``, ``nop``, ``mss`` (int), ``wscale`` (int), ``sackok``,
``sack`` (list of (left, right) edges), ``timestamp`` ((tsval, tsecr)); any
other option is ``(kind, data_bytes)``. The bytes are padded with zeros (EOL)
to a multiple of 4 and ``data_offset`` counts them; decoding stops at EOL
(which is listed, everything after it being padding).
"""

from __future__ import annotations

import struct
from typing import Any

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

MAX_OPTIONS = 40  # data_offset is 4 bits: at most 15 words, 5 of them fixed

TcpOption = tuple[str | int, Any]

# name -> (kind, struct format of the value, or None for options without one)
_CODECS: dict[str, tuple[int, str | None]] = {
    "mss": (2, "!H"),
    "wscale": (3, "!B"),
    "sackok": (4, None),
    "timestamp": (8, "!II"),
}
_BY_KIND = {kind: (name, fmt) for name, (kind, fmt) in _CODECS.items()}
KIND_EOL = 0
KIND_NOP = 1
KIND_SACK = 5


def encode_options(options: list[TcpOption]) -> bytes:
    """Wire bytes (unpadded) of a list of typed options."""
    out = bytearray()
    for name, value in options:
        try:
            if name == "eol":
                out.append(KIND_EOL)
            elif name == "nop":
                out.append(KIND_NOP)
            elif name == "sack":
                edges = b"".join(struct.pack("!II", left, right) for left, right in value)
                out += bytes((KIND_SACK, 2 + len(edges))) + edges
            elif isinstance(name, int):
                out += bytes((name, 2 + len(value))) + bytes(value)
            elif name in _CODECS:
                kind, fmt = _CODECS[name]
                data = b"" if fmt is None else struct.pack(fmt, *_as_tuple(value))
                out += bytes((kind, 2 + len(data))) + data
            else:
                raise PacketError(f"tcp: unknown option {name!r}")
        except (struct.error, TypeError, ValueError) as err:
            if isinstance(err, PacketError):
                raise
            raise PacketError(f"tcp: option {name!r}: bad value {value!r}") from None
    return bytes(out)


def decode_options(data: bytes) -> list[TcpOption]:
    """Typed options of wire bytes; PacketError names the first malformed one."""
    options: list[TcpOption] = []
    at = 0
    while at < len(data):
        kind = data[at]
        if kind == KIND_EOL:
            options.append(("eol", None))
            break
        if kind == KIND_NOP:
            options.append(("nop", None))
            at += 1
            continue
        if at + 2 > len(data):
            raise PacketError(f"tcp: option kind {kind} has no length byte")
        length = data[at + 1]
        if length < 2 or at + length > len(data):
            raise PacketError(f"tcp: option kind {kind} has bad length {length}")
        body = data[at + 2 : at + length]
        at += length
        if kind == KIND_SACK:
            if len(body) % 8:
                raise PacketError(f"tcp: sack option of {len(body)} bytes, not 8n")
            edges = [struct.unpack_from("!II", body, i) for i in range(0, len(body), 8)]
            options.append(("sack", edges))
            continue
        name, fmt = _BY_KIND.get(kind, (None, None))
        if name is None:
            options.append((kind, bytes(body)))
        elif fmt is None:
            options.append((name, None))
        elif len(body) != struct.calcsize(fmt):
            raise PacketError(f"tcp: {name} option has length {length}")
        else:
            values = struct.unpack(fmt, body)
            options.append((name, values if len(values) > 1 else values[0]))
    return options


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


class TCP(Header):
    NAME = "tcp"
    FIELDS = (
        Field("sport", 16),
        Field("dport", 16),
        Field("seq", 32),
        Field("ack", 32),
        Field("data_offset", 4, 5),  # in 4-byte words, options included
        Field("reserved", 4),
        Field("flags", 8, SYN, kind="flags"),
        Field("window", 16, 65535),
        Field("checksum", 16, kind="flags"),
        Field("urgent", 16),
    )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "options" and isinstance(value, list):
            value = encode_options(value)
        super().__setattr__(name, value)

    @property
    def option_list(self) -> list[TcpOption]:
        return decode_options(bytes(self.options))

    def pack_variable(self) -> bytes:
        options = bytes(self.options)
        padded = options + b"\0" * (-len(options) % 4)
        if len(padded) > MAX_OPTIONS:
            raise PacketError(f"tcp: {len(padded)} bytes of options, at most {MAX_OPTIONS}")
        return padded

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        if self.data_offset < 5:
            raise PacketError(f"tcp: data_offset {self.data_offset} is below the minimum of 5")
        end = offset + (self.data_offset - 5) * 4
        if end > len(buf):
            raise TruncatedError(
                self.NAME, need=self.data_offset * 4, have=len(buf) - offset + self.SIZE
            )
        object.__setattr__(self, "options", bytes(buf[offset:end]))
        decode_options(self.options)  # malformed options are an error here, not later
        return end

    def describe_variable(self) -> str:
        if not self.options:
            return ""
        try:
            return f"options={self.option_list}"
        except PacketError:
            return f"options={self.options.hex()}"
