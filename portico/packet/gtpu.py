"""GTP-U (3GPP TS 29.281): UDP port 2152, a TEID, an IP packet inside.

When any of the E, S or PN flags is set, four more bytes follow the fixed part
(sequence number, N-PDU number, next extension header type), then a chain of
extension headers, each ``4 * length`` bytes ending in the next type.

Those are the typed attributes ``seq``, ``npdu`` and ``extensions``, a list of
``(type, content)`` where content is what lies between an extension's length
byte and its next-type byte (padded to fill whole 4-byte units). The next-type
bytes are derived from the list. The builder sets the S, PN and E flags when
``seq``, ``npdu`` or ``extensions`` were given, and ``length``.
``pdu_session_container(qfi)`` makes the 5G extension (TS 38.415) and
``qfi`` reads it back.
"""

from __future__ import annotations

from typing import Any

from portico.packet.errors import PacketError, TruncatedError
from portico.packet.header import Field, Header

G_PDU = 255
ECHO_REQUEST = 1
ECHO_RESPONSE = 2
EXT_PDU_SESSION_CONTAINER = 0x85
PDU_TYPE_DL = 0
PDU_TYPE_UL = 1

Extension = tuple[int, bytes]


def pdu_session_container(qfi: int, *, pdu_type: int = PDU_TYPE_DL) -> Extension:
    """A PDU session container carrying ``qfi`` (DL: type 0, UL: type 1), no optional fields."""
    if not 0 <= qfi < 64 or pdu_type not in (PDU_TYPE_DL, PDU_TYPE_UL):
        raise PacketError(f"gtpu: bad PDU session container qfi={qfi} type={pdu_type}")
    return EXT_PDU_SESSION_CONTAINER, bytes((pdu_type << 4, qfi))


class GTPU(Header):
    NAME = "gtpu"
    FIELDS = (
        Field("version", 3, 1),
        Field("protocol_type", 1, 1),
        Field("reserved", 1),
        Field("ext_flag", 1),
        Field("seq_flag", 1),
        Field("npdu_flag", 1),
        Field("message_type", 8, G_PDU),
        Field("length", 16),  # bytes after the first 8
        Field("teid", 32),
    )
    seq: int = 0
    npdu: int = 0
    extensions: tuple[Extension, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "seq":
            value = Field("seq", 16).coerce(self.NAME, value)
        elif name == "npdu":
            value = Field("npdu", 8).coerce(self.NAME, value)
        elif name == "extensions":
            value = tuple(_checked_extension(ext) for ext in value)
        super().__setattr__(name, value)

    def has_optional_word(self) -> bool:
        return bool(self.ext_flag or self.seq_flag or self.npdu_flag)

    @property
    def qfi(self) -> int | None:
        """The QFI of the first PDU session container, if there is one."""
        for kind, content in self.extensions:
            if kind == EXT_PDU_SESSION_CONTAINER and len(content) >= 2:
                return content[1] & 0x3F
        return None

    def pack_variable(self) -> bytes:
        if not self.has_optional_word():
            return bytes(self.options)
        extensions = self.extensions if self.ext_flag else ()
        first = extensions[0][0] if extensions else 0
        out = bytearray(self.seq.to_bytes(2, "big") + bytes((self.npdu, first)))
        for index, (_kind, content) in enumerate(extensions):
            padded = content + b"\0" * (-(len(content) + 2) % 4)
            following = extensions[index + 1][0] if index + 1 < len(extensions) else 0
            out += bytes(((len(padded) + 2) // 4,)) + padded + bytes((following,))
        return bytes(out) + bytes(self.options)

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        if self.version != 1:
            raise PacketError(f"gtpu: version {self.version} is not 1")
        if not self.has_optional_word():
            return offset
        if offset + 4 > len(buf):
            raise TruncatedError(self.NAME, need=12, have=len(buf) - offset + 8)
        object.__setattr__(self, "seq", int.from_bytes(buf[offset : offset + 2], "big"))
        object.__setattr__(self, "npdu", buf[offset + 2])
        kind = buf[offset + 3] if self.ext_flag else 0
        offset += 4
        extensions: list[Extension] = []
        while kind:
            if offset >= len(buf):
                raise PacketError(f"gtpu: extension header {kind:#x} cut short")
            units = buf[offset]
            if units == 0:
                raise PacketError(f"gtpu: extension header {kind:#x} has length 0")
            end = offset + 4 * units
            if end > len(buf):
                raise PacketError(f"gtpu: extension header {kind:#x} runs past the packet")
            extensions.append((kind, bytes(buf[offset + 1 : end - 1])))
            kind = buf[end - 1]
            offset = end
        object.__setattr__(self, "extensions", tuple(extensions))
        return offset

    def describe_variable(self) -> str:
        if not self.has_optional_word():
            return ""
        shown = f"seq={self.seq}, npdu={self.npdu}"
        if self.extensions:
            shown += ", extensions=" + str([(hex(k), c.hex()) for k, c in self.extensions])
        return shown


def _checked_extension(ext: Any) -> Extension:
    try:
        kind, content = ext
        if not 0 < kind < 256 or len(content) > 1020:
            raise ValueError
        return int(kind), bytes(content)
    except (TypeError, ValueError):
        raise PacketError(f"gtpu: an extension is (type 1..255, bytes), got {ext!r}") from None
