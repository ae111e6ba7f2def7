"""Declare a wire header once; derive its codec, defaults and batch accessors.

A header is a class listing its fixed fields in wire order, each with a width in
bits and a default, the way dpkt's ``__hdr__`` and Scapy's ``fields_desc`` do::

    class UDP(Header):
        NAME = "udp"
        FIELDS = (
            Field("sport", 16),
            Field("dport", 16),
            Field("length", 16),
            Field("checksum", 16),
        )

From that one declaration come:

* the scalar codec: ``UDP(sport=53).pack()`` and ``UDP.unpack(buf, off)``. The
  fixed part is treated as one big-endian integer, so a field of any width and
  alignment (a 4-bit IHL, a 13-bit fragment offset, a 128-bit address) is a
  shift and a mask. The control plane and the tests use it; it is not fast.
* the layout constants the Numba kernels are written against:
  ``UDP.at("dport")`` gives the byte offset, byte span, shift and mask of a field.
* the batch accessors the datapath uses from NumPy: ``UDP.column(data, rows,
  offsets, "dport")`` reads the field of every selected packet at once, and
  ``UDP.set_column`` writes it.

Variable parts (IPv4 and TCP options, IPv6 extension headers, Geneve TLVs, GTP-U
extension headers) are not fields: a format adds them by overriding
``pack_variable``/``unpack_variable`` and keeps them in ``self.options`` (or in
a few typed attributes declared on the class, such as GTP-U's ``seq``).

Every name assigned through the constructor or ``setattr`` is remembered as set
by the user (``is_explicit``); the builder (``portico.packet.build``) derives
lengths, selectors and checksums with ``fill``, which never overrides a value
the user chose. Decoded headers start with nothing explicit.

How layers stack (ethertype, IP protocol, UDP port -> next header) is not
declared here but in ``portico.packet.layers``, as tables.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

import numpy as np

from portico.packet.errors import PacketError, TruncatedError


@dataclass(frozen=True)
class Field:
    """One fixed field: its name, width in bits, default, and how it is shown."""

    name: str
    bits: int
    default: int = 0
    kind: str = "int"  # "int", "mac", "ipv4", "ipv6", "flags" — only affects parsing/showing

    def coerce(self, header: str, value: Any) -> int:
        """Turn a user-supplied value into the field's integer, or say what is wrong."""
        if isinstance(value, bool) or not isinstance(value, int | str | bytes):
            raise PacketError(f"{header}.{self.name}: expected a number, got {value!r}")
        if isinstance(value, bytes):
            if len(value) * 8 != self.bits:
                raise PacketError(f"{header}.{self.name}: expected {self.bits // 8} bytes")
            return int.from_bytes(value, "big")
        if isinstance(value, str):
            value = self._parse_text(header, value)
        if not 0 <= value < (1 << self.bits):
            raise PacketError(
                f"{header}.{self.name}: {value} does not fit in {self.bits} bits"
            )
        return value

    def _parse_text(self, header: str, text: str) -> int:
        try:
            if self.kind == "mac":
                octets = bytes(int(part, 16) for part in text.replace("-", ":").split(":"))
                if len(octets) != 6:
                    raise ValueError
                return int.from_bytes(octets, "big")
            if self.kind == "ipv4":
                return int(ipaddress.IPv4Address(text))
            if self.kind == "ipv6":
                return int(ipaddress.IPv6Address(text))
            return int(text, 0)
        except ValueError:
            raise PacketError(f"{header}.{self.name}: not a valid {self.kind}: {text!r}") from None

    def show(self, value: int) -> str:
        if self.kind == "mac":
            return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
        if self.kind == "ipv4":
            return str(ipaddress.IPv4Address(value))
        if self.kind == "ipv6":
            return str(ipaddress.IPv6Address(value))
        if self.kind == "flags":
            return hex(value)
        return str(value)


class FieldLayout(NamedTuple):
    """Where a field sits: what a kernel needs to read or write it."""

    offset: int  # first byte, from the start of the header
    span: int  # bytes touched (1..9 for fields up to 64 bits)
    shift: int  # right shift of the big-endian span to reach the field
    mask: int  # mask of the field after the shift
    bits: int


class Header:
    """Base of every wire format. Subclasses set NAME and FIELDS, nothing else is required."""

    NAME: ClassVar[str] = "header"
    FIELDS: ClassVar[tuple[Field, ...]] = ()
    SIZE: ClassVar[int] = 0  # bytes in the fixed part, derived
    LAYOUT: ClassVar[dict[str, FieldLayout]] = {}
    _BY_NAME: ClassVar[dict[str, Field]] = {}

    options: bytes

    if TYPE_CHECKING:
        # Fields are declared as data (FIELDS), so the type checker cannot list them;
        # this tells it that a header's attributes are its fields (ints) and nothing more.
        def __getattr__(self, name: str) -> Any: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "FIELDS" not in cls.__dict__:
            return
        total = sum(f.bits for f in cls.FIELDS)
        if total % 8:
            raise TypeError(f"{cls.__name__}: fields add up to {total} bits, not whole bytes")
        cls.SIZE = total // 8
        cls._BY_NAME = {f.name: f for f in cls.FIELDS}
        layout: dict[str, FieldLayout] = {}
        bit = 0
        for f in cls.FIELDS:
            first, last = bit // 8, (bit + f.bits - 1) // 8
            span = last - first + 1
            shift = (span * 8) - (bit - first * 8) - f.bits
            layout[f.name] = FieldLayout(first, span, shift, (1 << f.bits) - 1, f.bits)
            bit += f.bits
        cls.LAYOUT = layout

    # ------------------------------------------------------------------ scalar codec
    def __init__(self, **values: Any) -> None:
        for f in self.FIELDS:
            object.__setattr__(self, f.name, f.default)
        object.__setattr__(self, "options", b"")
        for name, value in values.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        spec = self._BY_NAME.get(name)
        if spec is not None:
            value = spec.coerce(self.NAME, value)
        elif name != "options" and not hasattr(type(self), name):
            raise PacketError(f"{self.NAME}: no field named {name!r}")
        object.__setattr__(self, name, value)
        # Kept in __dict__ (not a declared attribute) so headers made by unpack,
        # which bypasses __init__, simply start with nothing explicit.
        self.__dict__.setdefault("_explicit", set()).add(name)

    def is_explicit(self, name: str) -> bool:
        """True when the user assigned ``name`` (constructor or setattr) on this object."""
        return name in self.__dict__.get("_explicit", ())

    def fill(self, name: str, value: Any) -> None:
        """Set a derived value (length, selector, checksum) unless the user chose one."""
        if self.is_explicit(name):
            return
        spec = self._BY_NAME.get(name)
        object.__setattr__(self, name, spec.coerce(self.NAME, value) if spec else value)

    def copy(self) -> Self:
        """A shallow copy that remembers which names were explicit."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__["_explicit"] = set(self.__dict__.get("_explicit", ()))
        return clone

    def pack_fixed(self) -> bytes:
        word = 0
        for f in self.FIELDS:
            word = (word << f.bits) | getattr(self, f.name)
        return word.to_bytes(self.SIZE, "big")

    def pack_variable(self) -> bytes:
        """Bytes after the fixed part (options, TLVs). Formats with options override."""
        return self.options

    def pack(self) -> bytes:
        return self.pack_fixed() + self.pack_variable()

    def header_length(self) -> int:
        return self.SIZE + len(self.pack_variable())

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> tuple[Header, int]:
        """Decode one header at ``offset``; return it and the offset just past it."""
        end = offset + cls.SIZE
        if end > len(buf):
            raise TruncatedError(cls.NAME, need=cls.SIZE, have=max(0, len(buf) - offset))
        header = cls.__new__(cls)
        header.__dict__.update(cls.fixed_fields(buf, offset))
        object.__setattr__(header, "options", b"")
        return header, header.unpack_variable(buf, end)

    @classmethod
    def fixed_fields(cls, buf: bytes | memoryview, offset: int = 0) -> dict[str, int]:
        """The declared fields at ``offset``, unchecked: the caller made sure SIZE bytes are there.

        No variable part and no validation, so a caller (the parser's scalar twin)
        can apply its own checks in its own order.
        """
        word = int.from_bytes(buf[offset : offset + cls.SIZE], "big")
        values = {}
        remaining = cls.SIZE * 8
        for f in cls.FIELDS:
            remaining -= f.bits
            values[f.name] = (word >> remaining) & ((1 << f.bits) - 1)
        return values

    def unpack_variable(self, buf: bytes | memoryview, offset: int) -> int:
        """Decode what follows the fixed part; return the offset past it."""
        return offset

    def fields(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in self.FIELDS}

    def describe_variable(self) -> str:
        """The variable part for people (``Decoded.show``); formats with typed options override."""
        return f"options={self.options.hex()}" if self.options else ""

    def __eq__(self, other: object) -> bool:
        # The variable part is compared as it goes on the wire, so formats that
        # keep it in typed attributes compare right without overriding this.
        return (
            type(other) is type(self)
            and self.fields() == other.fields()  # type: ignore[attr-defined]
            and self.pack_variable() == other.pack_variable()  # type: ignore[attr-defined]
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={f.show(getattr(self, f.name))}" for f in self.FIELDS)
        extra = self.describe_variable()
        return f"{type(self).__name__}({shown}{', ' + extra if extra else ''})"

    # ------------------------------------------------------------------ layout, batch access
    @classmethod
    def at(cls, name: str) -> FieldLayout:
        try:
            return cls.LAYOUT[name]
        except KeyError:
            raise PacketError(f"{cls.NAME}: no field named {name!r}") from None

    @classmethod
    def column(
        cls, data: np.ndarray, rows: np.ndarray, offsets: np.ndarray, name: str
    ) -> np.ndarray:
        """Read field ``name`` of the header at ``offsets`` (bytes into each slot) of ``rows``.

        ``data`` is a Batch's 2-D slot array. Returns uint64; fields whose bytes span
        more than 8 (addresses) have none.
        """
        lay = cls.at(name)
        if lay.span > 8:
            raise PacketError(f"{cls.NAME}.{name}: a {lay.bits}-bit field has no column")
        base = offsets.astype(np.intp) + lay.offset
        value = np.zeros(len(rows), dtype=np.uint64)
        for k in range(lay.span):
            value = (value << np.uint64(8)) | data[rows, base + k].astype(np.uint64)
        if lay.shift:
            value >>= np.uint64(lay.shift)
        return value & np.uint64(lay.mask)

    @classmethod
    def set_column(
        cls,
        data: np.ndarray,
        rows: np.ndarray,
        offsets: np.ndarray,
        name: str,
        values: np.ndarray | int,
    ) -> None:
        """Write field ``name`` for every selected row, leaving neighbouring bits alone."""
        lay = cls.at(name)
        if lay.span > 8:
            raise PacketError(f"{cls.NAME}.{name}: a {lay.bits}-bit field has no column")
        base = offsets.astype(np.intp) + lay.offset
        span_bits = np.uint64(lay.span * 8)
        old = np.zeros(len(rows), dtype=np.uint64)
        for k in range(lay.span):
            old = (old << np.uint64(8)) | data[rows, base + k].astype(np.uint64)
        keep = np.uint64(((1 << int(span_bits)) - 1) ^ (lay.mask << lay.shift))
        new = (old & keep) | (
            (np.asarray(values, dtype=np.uint64) & np.uint64(lay.mask)) << np.uint64(lay.shift)
        )
        for k in range(lay.span - 1, -1, -1):
            data[rows, base + k] = (new & np.uint64(0xFF)).astype(np.uint8)
            new >>= np.uint64(8)
