"""pcapng: sections, interfaces, and the block walker that fills a Batch; the block encoder.

A pcapng file is a sequence of blocks, each ``type, total length, body, total
length`` with the body padded to 4 bytes. A Section Header Block (SHB) opens
a section and fixes its byte order (its magic 0x1A2B3C4D reads one way or the
other); the Interface Description Blocks (IDB) that follow declare the
section's interfaces, numbered from 0 within it; packets arrive in Enhanced
Packet Blocks (EPB: interface, timestamp in the interface's ``if_tsresol``
units, captured and original length), Simple Packet Blocks (SPB: interface 0,
no timestamp) or the obsolete Packet Block. Everything else (name resolution,
statistics, custom, unknown types) is skipped by its length.

Portico numbers interfaces across the whole file, in the order they are
declared, so a file with two sections of two interfaces each has ports 0..3;
a port is a gateway port and its ``if_name`` is kept.

As in ``portico.io.pcap``, there is no I/O here. The Numba walker handles the
per-packet blocks (and skips the others) and hands SHBs and IDBs, which are
rare, back to Python to parse, so their options never reach compiled code.
A problem stops the walk before the bad block, after every earlier packet
has been delivered. Blocks are checked for a sane length (a multiple of 4,
at least 12, at most 16 MiB) and a trailer that repeats it.

We write little-endian, one section: an SHB without options, one IDB per
interface (``if_name`` when named, ``if_tsresol`` = 9 when nanosecond), then
EPBs without options.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.io.pcap import DecodeStep, Interface, _copy, _put_u32, _u32

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_PB = 0x00000002  # obsolete Packet Block, still read
BLOCK_SPB = 0x00000003
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_END = 0
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14

MAX_BLOCK = 16 * 1024 * 1024  # Wireshark's limit; a bigger claim is corruption

# Walker outcomes besides "batch full" / "need bytes".
PROBLEM_NONE = 0
PROBLEM_BLOCK_LENGTH = 1
PROBLEM_TRAILER = 2
PROBLEM_SHORT_BLOCK = 3
PROBLEM_CAPTURED_LENGTH = 4
PROBLEM_INTERFACE = 5
HAND_TO_PYTHON = 6  # SHB or IDB at pos: parsed by the decoder, then the walk resumes

# Columns of the per-interface table the walker reads.
IF_MULTIPLY, IF_DIVIDE, IF_SHIFT, IF_OFFSET_NS, IF_SNAPLEN = range(5)


def is_pcapng(magic: bytes) -> bool:
    return magic[:4] == struct.pack("<I", BLOCK_SHB)


def _timestamp_scale(tsresol: int) -> tuple[int, int, int]:
    """(multiply, divide, shift) turning if_tsresol ticks into nanoseconds."""
    exponent = tsresol & 0x7F
    if tsresol & 0x80:  # 2^-exponent seconds
        return 1, 1, exponent
    if exponent <= 9:
        return 10 ** (9 - exponent), 1, -1
    return 1, 10 ** (exponent - 9), -1


@njit(cache=True, inline="always")
def _to_ns(ticks: int, table: np.ndarray, iface: int) -> int:
    shift = table[iface, IF_SHIFT]
    if shift >= 0:
        whole = ticks >> shift
        part = ticks - (whole << shift)
        ns = whole * 1_000_000_000 + np.int64(part * 1e9 / 2.0**shift)
    else:
        ns = ticks * table[iface, IF_MULTIPLY] // table[iface, IF_DIVIDE]
    return ns + table[iface, IF_OFFSET_NS]


@njit(cache=True)
def _walk_blocks(
    buf: np.ndarray, pos: int, end: int, data: np.ndarray, meta: np.ndarray, row: int,
    headroom: int, big: bool, table: np.ndarray, first_if: int, n_if: int,
) -> tuple[int, int, int, int, int, int]:
    """Walk blocks from buf[pos:end], packets into batch rows [row, capacity).

    Returns (row, pos, blocks, need, outcome, detail): ``blocks`` consumed;
    ``need`` > 0 when the buffer ends inside a block; ``outcome`` a PROBLEM_*
    for the block at ``pos``, or HAND_TO_PYTHON.
    """
    capacity = data.shape[0]
    room = data.shape[1] - headroom
    lengths, wire_lengths = meta["length"], meta["wire_length"]
    timestamps, ports = meta["timestamp"], meta["port"]
    blocks = 0
    while row < capacity:
        if end - pos < 12:
            return row, pos, blocks, 12, PROBLEM_NONE, 0
        kind = _u32(buf, pos, big)
        if kind == BLOCK_SHB:  # its byte order may differ: Python reads it
            return row, pos, blocks, 0, HAND_TO_PYTHON, 0
        length = _u32(buf, pos + 4, big)
        if length < 12 or length % 4 != 0 or length > MAX_BLOCK:
            return row, pos, blocks, 0, PROBLEM_BLOCK_LENGTH, length
        if end - pos < length:
            return row, pos, blocks, length, PROBLEM_NONE, 0
        trailer = _u32(buf, pos + length - 4, big)
        if trailer != length:
            return row, pos, blocks, 0, PROBLEM_TRAILER, trailer
        if kind == BLOCK_IDB:
            return row, pos, blocks, 0, HAND_TO_PYTHON, 0
        if kind in (BLOCK_EPB, BLOCK_PB):
            if length < 32:
                return row, pos, blocks, 0, PROBLEM_SHORT_BLOCK, length
            if kind == BLOCK_EPB:
                iface = _u32(buf, pos + 8, big)
            elif big:
                iface = (np.int64(buf[pos + 8]) << 8) | buf[pos + 9]
            else:
                iface = (np.int64(buf[pos + 9]) << 8) | buf[pos + 8]
            if iface >= n_if:
                return row, pos, blocks, 0, PROBLEM_INTERFACE, iface
            ticks = (_u32(buf, pos + 12, big) << 32) | _u32(buf, pos + 16, big)
            captured = _u32(buf, pos + 20, big)
            original = _u32(buf, pos + 24, big)
            if 32 + captured > length:
                return row, pos, blocks, 0, PROBLEM_CAPTURED_LENGTH, captured
            src = pos + 28
            timestamp = _to_ns(ticks, table, first_if + iface)
        elif kind == BLOCK_SPB:
            if length < 16:
                return row, pos, blocks, 0, PROBLEM_SHORT_BLOCK, length
            if n_if == 0:
                return row, pos, blocks, 0, PROBLEM_INTERFACE, 0
            iface = 0
            original = _u32(buf, pos + 8, big)
            # An SPB has no captured length: the interface's snaplen cuts it.
            captured = min(original, length - 16)
            snaplen = table[first_if, IF_SNAPLEN]
            if snaplen > 0:
                captured = min(captured, snaplen)
            src = pos + 12
            timestamp = 0
        else:
            pos += length
            blocks += 1
            continue
        n = min(captured, room)
        _copy(buf[src : src + n], data[row, headroom : headroom + n])
        lengths[row] = n
        wire_lengths[row] = max(min(original, 0x7FFFFFFF), n)
        timestamps[row] = timestamp
        ports[row] = first_if + iface
        row += 1
        pos += length
        blocks += 1
    return row, pos, blocks, 0, PROBLEM_NONE, 0


_PROBLEMS = {
    PROBLEM_BLOCK_LENGTH: "bad block length {detail} (must be a multiple of 4, 12..16 MiB)",
    PROBLEM_TRAILER: "block length {length} but trailer says {detail}",
    PROBLEM_SHORT_BLOCK: "packet block of {detail} bytes is too short",
    PROBLEM_CAPTURED_LENGTH: "captured length {detail} exceeds the {length}-byte block",
    PROBLEM_INTERFACE: "packet on interface {detail}, which the section does not declare",
}


class PcapngDecoder:
    """Walks a pcapng byte stream into Batches; tracks sections and interfaces."""

    record_word = "block"
    record_header_size = 12
    format = "pcapng"

    def __init__(self) -> None:
        self.records = 0  # blocks fully consumed; the next one is records + 1
        self.interfaces: list[Interface] = []
        self._tsresol: list[int] = []
        self._table = np.zeros((0, 5), dtype=np.int64)
        self._big = False
        self._first_if = 0  # global index of the current section's interface 0
        self._started = False

    @property
    def nanosecond(self) -> bool:
        return bool(self._tsresol) and all(r == 9 for r in self._tsresol)

    def start(self, buf: np.ndarray, pos: int, end: int) -> DecodeStep:
        """Read the first SHB and the IDBs after it, so ``interfaces`` is known early."""
        while True:
            if end - pos < 12:
                return DecodeStep(0, pos, 12)
            kind = struct.unpack_from(">I" if self._big else "<I", buf.data, pos)[0]
            if not self._started and kind != BLOCK_SHB:
                return DecodeStep(0, pos, 0, "does not start with a section header block")
            if kind not in (BLOCK_SHB, BLOCK_IDB):
                return DecodeStep(0, pos)
            step = self._python_block(buf, pos, end)
            if step.need or step.problem:
                return step
            pos = step.pos
            self._started = True

    def _python_block(self, buf: np.ndarray, pos: int, end: int) -> DecodeStep:
        """Parse the SHB or IDB at ``pos`` and advance past it."""
        if end - pos < 12:
            return DecodeStep(0, pos, 12)
        kind = struct.unpack_from("<I", buf.data, pos)[0]
        if kind == BLOCK_SHB:
            magic = struct.unpack_from("<I", buf.data, pos + 8)[0]
            if magic == BYTE_ORDER_MAGIC:
                big = False
            elif magic == struct.unpack("<I", struct.pack(">I", BYTE_ORDER_MAGIC))[0]:
                big = True
            else:
                return DecodeStep(0, pos, 0, f"bad byte-order magic 0x{magic:08x}")
        else:
            big = self._big
        order = ">" if big else "<"
        length = struct.unpack_from(order + "I", buf.data, pos + 4)[0]
        if length < 12 or length % 4 or length > MAX_BLOCK:
            return DecodeStep(0, pos, 0, _PROBLEMS[PROBLEM_BLOCK_LENGTH].format(detail=length))
        if end - pos < length:
            return DecodeStep(0, pos, length)
        trailer = struct.unpack_from(order + "I", buf.data, pos + length - 4)[0]
        if trailer != length:
            return DecodeStep(0, pos, 0, _PROBLEMS[PROBLEM_TRAILER].format(
                length=length, detail=trailer))
        body = bytes(buf[pos + 8 : pos + length - 4])
        if kind == BLOCK_SHB:
            if length < 28:
                return DecodeStep(0, pos, 0, f"section header block of {length} bytes is too short")
            major, minor = struct.unpack_from(order + "HH", body, 4)
            if major != 1:
                return DecodeStep(0, pos, 0, f"unsupported pcapng version {major}.{minor}")
            self._big = big
            self._first_if = len(self.interfaces)
        else:
            if length < 20:
                return DecodeStep(0, pos, 0, f"interface block of {length} bytes is too short")
            linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body, 0)
            options = _parse_options(body[8:], order)
            if options is None:
                return DecodeStep(0, pos, 0, "malformed interface options")
            name = options.get(OPT_IF_NAME, b"").decode("utf-8", "replace")
            resolution = options.get(OPT_IF_TSRESOL, b"\x06")
            if len(resolution) != 1:
                return DecodeStep(0, pos, 0, f"if_tsresol option of {len(resolution)} bytes, "
                                  "not 1")
            tsresol = resolution[0]
            if tsresol > 27 if tsresol < 0x80 else tsresol & 0x7F > 62:
                return DecodeStep(0, pos, 0, f"if_tsresol {tsresol:#x} is finer than "
                                  "Portico can represent")
            offset = options.get(OPT_IF_TSOFFSET)
            offset_s = struct.unpack(order + "q", offset)[0] if offset and len(offset) == 8 else 0
            self.interfaces.append(Interface(name, linktype, snaplen))
            self._tsresol.append(tsresol)
            multiply, divide, shift = _timestamp_scale(tsresol)
            row = np.array([[multiply, divide, shift, offset_s * 1_000_000_000, snaplen]],
                           dtype=np.int64)
            self._table = np.concatenate([self._table, row])
        self.records += 1
        return DecodeStep(0, pos + length)

    def decode(self, buf: np.ndarray, pos: int, end: int, batch: Batch, row: int) -> DecodeStep:
        while True:
            n_if = len(self.interfaces) - self._first_if
            row, pos, blocks, need, outcome, detail = _walk_blocks(
                buf, pos, end, batch.data, batch.meta, row, batch.headroom, self._big,
                self._table, self._first_if, n_if,
            )
            self.records += blocks
            if outcome == HAND_TO_PYTHON:
                step = self._python_block(buf, pos, end)
                if step.need or step.problem:
                    return step._replace(rows=row)
                pos = step.pos
                continue
            if outcome != PROBLEM_NONE:
                length = _u32(buf, pos + 4, self._big)
                return DecodeStep(row, pos, 0, _PROBLEMS[outcome].format(
                    detail=detail, length=length))
            return DecodeStep(row, pos, need)


def _parse_options(raw: bytes, order: str) -> dict[int, bytes] | None:
    """Option code -> value (first of each code); None when an option overruns the block."""
    options: dict[int, bytes] = {}
    at = 0
    while at + 4 <= len(raw):
        code, size = struct.unpack_from(order + "HH", raw, at)
        if code == OPT_END:
            break
        if at + 4 + size > len(raw):
            return None
        options.setdefault(code, raw[at + 4 : at + 4 + size])
        at += 4 + (size + 3) // 4 * 4
    return options


def _option(code: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return struct.pack("<HH", code, len(value)) + value + padding


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


@njit(cache=True)
def _encode_blocks(
    data: np.ndarray, meta: np.ndarray, rows: np.ndarray, ports: np.ndarray, snaplens: np.ndarray,
    out: np.ndarray, nanosecond: bool,
) -> tuple[int, int]:
    """Serialise rows as EPBs into ``out``.

    Returns (bytes written, -1), or (-bytes needed, -1) if out is short, or
    (0, row) for the first row whose interface is not declared.
    """
    size = 0
    for k in range(rows.shape[0]):
        row = rows[k]
        iface = ports[row]
        if iface < 0 or iface >= snaplens.shape[0]:
            return 0, row
        length = meta[row]["length"]
        if snaplens[iface] > 0:
            length = min(length, snaplens[iface])
        size += 32 + (length + 3) // 4 * 4
    if size > out.shape[0]:
        return -size, -1
    pos = 0
    for k in range(rows.shape[0]):
        row = rows[k]
        record = meta[row]
        iface = ports[row]
        length = record["length"]
        captured = min(length, snaplens[iface]) if snaplens[iface] > 0 else length
        padded = (captured + 3) // 4 * 4
        ticks = record["timestamp"]
        if not nanosecond:
            ticks //= 1000
        _put_u32(out, pos, BLOCK_EPB)
        _put_u32(out, pos + 4, 32 + padded)
        _put_u32(out, pos + 8, iface)
        _put_u32(out, pos + 12, ticks >> 32)
        _put_u32(out, pos + 16, ticks & 0xFFFFFFFF)
        _put_u32(out, pos + 20, captured)
        _put_u32(out, pos + 24, max(record["wire_length"], length))
        start = record["start"]
        _copy(data[row, start : start + captured], out[pos + 28 : pos + 28 + captured])
        for i in range(captured, padded):
            out[pos + 28 + i] = 0
        _put_u32(out, pos + 28 + padded, 32 + padded)
        pos += 32 + padded
    return pos, -1


class PcapngEncoder:
    """Serialises Batches into EPBs of one little-endian section."""

    def __init__(self, interfaces: Sequence[Interface], *, nanosecond: bool = True) -> None:
        if not interfaces:
            raise ValueError("a pcapng file needs at least one interface")
        self.interfaces = list(interfaces)
        self.nanosecond = nanosecond
        self._snaplens = np.array([i.snaplen for i in self.interfaces], dtype=np.int64)
        self._out = np.empty(1 << 16, dtype=np.uint8)

    def header(self) -> bytes:
        shb = _block(BLOCK_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1))
        idbs = []
        for iface in self.interfaces:
            options = b""
            if iface.name:
                options += _option(OPT_IF_NAME, iface.name.encode())
            if self.nanosecond:
                options += _option(OPT_IF_TSRESOL, b"\x09")
            if options:
                options += _option(OPT_END, b"")
            body = struct.pack("<HHI", iface.linktype, 0, iface.snaplen) + options
            idbs.append(_block(BLOCK_IDB, body))
        return shb + b"".join(idbs)

    def encode(self, batch: Batch, rows: np.ndarray, ports: np.ndarray) -> memoryview:
        """EPBs for ``rows`` of ``batch``, each on the interface ``ports[row]``."""
        while True:
            n, bad_row = _encode_blocks(batch.data, batch.meta, rows, ports, self._snaplens,
                                        self._out, self.nanosecond)
            if bad_row >= 0:
                raise ValueError(
                    f"row {bad_row}: interface {int(ports[bad_row])} is not one of the "
                    f"{len(self.interfaces)} the file declares"
                )
            if n >= 0:
                return self._out.data[:n]
            self._out = np.empty(max(-n, 2 * self._out.shape[0]), dtype=np.uint8)

    def encode_packet(
        self, packet: bytes, *, timestamp_ns: int, wire_length: int, interface: int
    ) -> bytes:
        if not 0 <= interface < len(self.interfaces):
            raise ValueError(f"interface {interface} is not one of the "
                             f"{len(self.interfaces)} the file declares")
        snaplen = self.interfaces[interface].snaplen
        captured = packet[:snaplen] if snaplen > 0 else packet
        ticks = timestamp_ns if self.nanosecond else timestamp_ns // 1000
        body = struct.pack("<IIIII", interface, (ticks >> 32) & 0xFFFFFFFF, ticks & 0xFFFFFFFF,
                           len(captured), max(wire_length, len(packet)))
        return _block(BLOCK_EPB, body + captured + b"\0" * (-len(captured) % 4))
