"""Classic pcap: the file header, the record walker that fills a Batch, the record encoder.

A pcap file is a 24-byte header (magic, version 2.4, snap length, link type)
followed by records of a 16-byte header (seconds, fraction, captured length,
original length) and the captured bytes. The magic says both the byte order
(read either; we write little-endian) and the time unit: 0xa1b2c3d4 counts
microseconds, 0xa1b23c4d nanoseconds.

This module does no I/O (``portico.io.capture`` owns files and buffers). The
decoder walks records in a NumPy byte buffer with a Numba kernel that copies
each packet straight into its Batch slot, so reading costs no Python object
per packet. When the buffer ends inside a record the kernel stops and reports
how many bytes from its position the next record needs; when a record is bad
it stops before it and reports the problem, so every earlier record has
already been delivered. The encoder is the mirror image: one kernel call
serialises a selection of a Batch into one bytes buffer.

The shapes shared with pcapng (``Interface``, ``DecodeStep``) live here because
pcap is the simpler of the two and pcapng builds on it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
from numba import njit

from portico.batch import Batch

LINKTYPE_ETHERNET = 1

MAGIC_MICROSECONDS = 0xA1B2C3D4
MAGIC_NANOSECONDS = 0xA1B23C4D
FILE_HEADER_SIZE = 24
RECORD_HEADER_SIZE = 16

# Wireshark's limit on one record; a bigger claim means a corrupt header, not a packet.
MAX_RECORD = 262144
DEFAULT_SNAPLEN = 65535

# What a walker kernel reports besides rows and position. 0 = no problem.
PROBLEM_NONE = 0
PROBLEM_TOO_BIG = 1


class Interface(NamedTuple):
    """One capture interface: a gateway port. ``name`` is "" when the file gives none."""

    name: str
    linktype: int = LINKTYPE_ETHERNET
    snaplen: int = DEFAULT_SNAPLEN


class DecodeStep(NamedTuple):
    """What one decoder call did.

    ``rows``: rows of the batch now filled; ``pos``: buffer offset after the last
    record consumed; ``need`` > 0: the buffer ended inside the next record, which
    needs this many bytes from ``pos``; ``problem`` non-empty: the next record is
    bad, and says why.
    """

    rows: int
    pos: int
    need: int = 0
    problem: str = ""


def _magic_order(magic: bytes) -> tuple[str, bool] | None:
    """Byte order ('<' or '>') and nanosecond flag from a file's first four bytes."""
    for order in ("<", ">"):
        (value,) = struct.unpack(order + "I", magic)
        if value == MAGIC_MICROSECONDS:
            return order, False
        if value == MAGIC_NANOSECONDS:
            return order, True
    return None


def is_pcap(magic: bytes) -> bool:
    return len(magic) >= 4 and _magic_order(magic[:4]) is not None


def file_header(*, nanosecond: bool, snaplen: int, linktype: int) -> bytes:
    magic = MAGIC_NANOSECONDS if nanosecond else MAGIC_MICROSECONDS
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


@njit(cache=True, inline="always")
def _u32(buf: np.ndarray, pos: int, big: bool) -> int:
    # The int64 Numba computes is an int to the kernels that use it (and boxed to
    # one for Python callers); saying int | np.int64 would spread to every kernel.
    b0 = np.int64(buf[pos])
    b1 = np.int64(buf[pos + 1])
    b2 = np.int64(buf[pos + 2])
    b3 = np.int64(buf[pos + 3])
    if big:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3  # type: ignore[return-value]
    return (b3 << 24) | (b2 << 16) | (b1 << 8) | b0  # type: ignore[return-value]


@njit(cache=True, inline="always")
def _put_u32(out: np.ndarray, pos: int, value: int) -> None:
    out[pos] = value & 0xFF
    out[pos + 1] = (value >> 8) & 0xFF
    out[pos + 2] = (value >> 16) & 0xFF
    out[pos + 3] = (value >> 24) & 0xFF


@njit(cache=True, inline="always")
def _copy(source: np.ndarray, target: np.ndarray) -> None:
    # An explicit loop over two slices: measured here 2x faster than slice assignment
    # and 5x faster than indexing the 2-D slot array byte by byte.
    for i in range(source.shape[0]):
        target[i] = source[i]


@njit(cache=True)
def _walk_records(
    buf: np.ndarray, pos: int, end: int, data: np.ndarray, meta: np.ndarray, row: int,
    headroom: int, big: bool, ns_per_tick: int, limit: int,
) -> tuple[int, int, int, int, int]:
    """Copy records from buf[pos:end] into batch rows [row, capacity).

    Returns (row, pos, need, problem, detail): ``need`` > 0 when the buffer ends
    inside a record; ``problem`` != 0 when the record at ``pos`` is bad.
    """
    capacity = data.shape[0]
    room = data.shape[1] - headroom
    lengths, wire_lengths = meta["length"], meta["wire_length"]
    timestamps, ports = meta["timestamp"], meta["port"]
    while row < capacity:
        if end - pos < 16:
            return row, pos, 16, PROBLEM_NONE, 0
        captured = _u32(buf, pos + 8, big)
        if captured > limit:
            return row, pos, 0, PROBLEM_TOO_BIG, captured
        if end - pos < 16 + captured:
            return row, pos, 16 + captured, PROBLEM_NONE, 0
        seconds = _u32(buf, pos, big)
        fraction = _u32(buf, pos + 4, big)
        original = min(_u32(buf, pos + 12, big), 0x7FFFFFFF)
        n = min(captured, room)
        _copy(buf[pos + 16 : pos + 16 + n], data[row, headroom : headroom + n])
        lengths[row] = n
        wire_lengths[row] = max(original, n)
        timestamps[row] = seconds * 1_000_000_000 + fraction * ns_per_tick
        ports[row] = 0
        row += 1
        pos += 16 + captured
    return row, pos, 0, PROBLEM_NONE, 0


class PcapDecoder:
    """Walks a pcap byte stream into Batches; holds what the file header said."""

    record_word = "record"
    record_header_size = RECORD_HEADER_SIZE
    format = "pcap"

    def __init__(self) -> None:
        self.records = 0  # records fully delivered; the next one is records + 1
        self.interfaces: list[Interface] = []
        self.nanosecond = False
        self._big = False
        self._limit = MAX_RECORD

    def start(self, buf: np.ndarray, pos: int, end: int) -> DecodeStep:
        """Read the file header at ``pos``."""
        if end - pos < FILE_HEADER_SIZE:
            return DecodeStep(0, pos, FILE_HEADER_SIZE)
        header = bytes(buf[pos : pos + FILE_HEADER_SIZE])
        found = _magic_order(header[:4])
        if found is None:
            return DecodeStep(0, pos, 0, f"not a pcap file (magic {header[:4].hex()})")
        order, self.nanosecond = found
        self._big = order == ">"
        major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(
            order + "HHiIII", header[4:]
        )
        if major != 2:
            return DecodeStep(0, pos, 0, f"unsupported pcap version {major}.{minor}")
        # A snap length of 0 or beyond the maximum means "no useful limit".
        self._limit = snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD
        # The upper bits of the link type field carry FCS flags, not the type.
        self.interfaces = [Interface("", linktype & 0x03FFFFFF, snaplen)]
        return DecodeStep(0, pos + FILE_HEADER_SIZE)

    def decode(self, buf: np.ndarray, pos: int, end: int, batch: Batch, row: int) -> DecodeStep:
        rows, pos, need, problem, detail = _walk_records(
            buf, pos, end, batch.data, batch.meta, row, batch.headroom, self._big,
            1 if self.nanosecond else 1000, self._limit,
        )
        self.records += rows - row
        if problem == PROBLEM_TOO_BIG:
            snaplen = self.interfaces[0].snaplen
            limit = (f"snaplen is {snaplen}" if self._limit == snaplen
                     else f"the maximum is {MAX_RECORD}")
            return DecodeStep(rows, pos, 0, f"header claims {detail} bytes, {limit}")
        return DecodeStep(rows, pos, need)


@njit(cache=True)
def _encode_records(
    data: np.ndarray, meta: np.ndarray, rows: np.ndarray, out: np.ndarray, nanosecond: bool,
    snaplen: int,
) -> int:
    """Serialise rows into ``out``; returns bytes written, or -bytes needed if out is short."""
    size = 0
    for k in range(rows.shape[0]):
        length = meta[rows[k]]["length"]
        size += 16 + (min(length, snaplen) if snaplen > 0 else length)
    if size > out.shape[0]:
        return -size
    pos = 0
    for k in range(rows.shape[0]):
        record = meta[rows[k]]
        length = record["length"]
        captured = min(length, snaplen) if snaplen > 0 else length
        ts = record["timestamp"]
        seconds = ts // 1_000_000_000
        fraction = ts - seconds * 1_000_000_000
        if not nanosecond:
            fraction //= 1000
        _put_u32(out, pos, seconds)
        _put_u32(out, pos + 4, fraction)
        _put_u32(out, pos + 8, captured)
        _put_u32(out, pos + 12, max(record["wire_length"], length))
        start = record["start"]
        _copy(data[rows[k], start : start + captured], out[pos + 16 : pos + 16 + captured])
        pos += 16 + captured
    return pos


class PcapEncoder:
    """Serialises Batches into pcap records (little-endian, one interface)."""

    def __init__(
        self,
        *,
        nanosecond: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
        linktype: int = LINKTYPE_ETHERNET,
    ) -> None:
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.linktype = linktype
        self._out = np.empty(1 << 16, dtype=np.uint8)

    def header(self) -> bytes:
        return file_header(nanosecond=self.nanosecond, snaplen=self.snaplen,
                           linktype=self.linktype)

    def encode(self, batch: Batch, rows: np.ndarray, ports: np.ndarray) -> memoryview:
        """Records for ``rows`` of ``batch`` (``ports`` is ignored: pcap has one interface)."""
        while True:
            n = _encode_records(batch.data, batch.meta, rows, self._out, self.nanosecond,
                                self.snaplen)
            if n >= 0:
                return self._out.data[:n]
            self._out = np.empty(max(-n, 2 * self._out.shape[0]), dtype=np.uint8)

    def encode_packet(
        self, packet: bytes, *, timestamp_ns: int, wire_length: int, interface: int
    ) -> bytes:
        captured = packet[: self.snaplen] if self.snaplen > 0 else packet
        seconds, fraction = divmod(timestamp_ns, 1_000_000_000)
        if not self.nanosecond:
            fraction //= 1000
        return struct.pack("<IIII", seconds & 0xFFFFFFFF, fraction, len(captured),
                           max(wire_length, len(packet))) + captured
