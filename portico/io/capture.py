"""Capture files as ports: open pcap or pcapng by magic, stream into Batches, write Batches.

The wire formats live in ``portico.io.pcap`` and ``portico.io.pcapng`` as
decoders and encoders that never touch a file; this module owns the files.

Reading streams: the reader keeps one NumPy byte buffer (``chunk_size``, 2 MiB
by default) and a position in it. ``read(batch)`` asks the decoder to walk
records from the position into the batch's slots; when the decoder says the
buffer ends inside a record ("need N bytes"), the reader moves that partial
record to the front of the buffer and fills the rest from the file with one
``readinto``. Memory is therefore the batch plus the buffer (the buffer grows
only if a single record is bigger than it), whatever the file's size, and no
Python object is made per packet.

Errors: a bad or truncated record becomes a ``CaptureError`` naming the file,
the record (1-based; pcapng counts blocks) and the problem. Records before it
are delivered first: the ``read`` that meets the problem returns the good rows
it has, and the next ``read`` raises.

Writing: ``CaptureWriter`` writes the file header once, then serialises each
batch (or a selection of its rows) into one buffer with a Numba kernel and
writes it with one call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Literal

import numpy as np

from portico.batch import DEFAULT_SLOT, Batch
from portico.io.pcap import (
    DEFAULT_SNAPLEN,
    FILE_HEADER_SIZE,
    LINKTYPE_ETHERNET,
    DecodeStep,
    Interface,
    PcapDecoder,
    PcapEncoder,
    is_pcap,
)
from portico.io.pcapng import PcapngDecoder, PcapngEncoder, is_pcapng

DEFAULT_CHUNK = 2 * 1024 * 1024

Format = Literal["pcap", "pcapng"]


class CaptureError(ValueError):
    """A capture file that cannot be read on: names the file, the record and the problem."""

    def __init__(self, path: str, problem: str, *, where: str = "", offset: int | None = None):
        self.path = path
        self.where = where  # "record 42", "block 7", "file header", or ""
        self.problem = problem
        self.offset = offset  # byte offset in the file of the bad record, when known
        text = f"{path}: {where}: {problem}" if where else f"{path}: {problem}"
        if offset is not None:
            text += f" (at byte {offset})"
        super().__init__(text)


class CaptureReader:
    """Streams a capture file into Batches. Make one with ``open_capture``."""

    def __init__(self, path: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.path = str(path)
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        try:
            magic = self._file.read(4)
            self._file.seek(0)
            if len(magic) == 0:
                raise CaptureError(self.path, "empty file, not a capture")
            if is_pcap(magic):
                self._decoder: PcapDecoder | PcapngDecoder = PcapDecoder()
            elif is_pcapng(magic):
                self._decoder = PcapngDecoder()
            else:
                raise CaptureError(
                    self.path, f"not a pcap or pcapng file (starts with 0x{magic.hex()})"
                )
            self._buf = np.empty(max(chunk_size, 4096), dtype=np.uint8)
            self._pos = 0  # next unread byte in _buf
            self._end = 0  # bytes of _buf holding file data
            self._base = 0  # file offset of _buf[0]
            self._eof = False
            self._done = False
            self._error: CaptureError | None = None
            self._start()
        except BaseException:
            self._file.close()
            raise

    # -- what the file says -------------------------------------------------------------

    @property
    def format(self) -> Format:
        return self._decoder.format  # type: ignore[return-value]

    @property
    def interfaces(self) -> list[Interface]:
        """Interfaces declared so far (pcapng may declare more further on): port = index."""
        return list(self._decoder.interfaces)

    @property
    def nanosecond(self) -> bool:
        """True when the file's timestamps are in nanoseconds (all interfaces, for pcapng)."""
        return self._decoder.nanosecond

    # -- reading ------------------------------------------------------------------------

    def read(self, batch: Batch) -> int:
        """Fill rows [0, n) of ``batch`` with the next packets; 0 at the end of the file.

        Sets ``length`` (captured, cut to ``batch.max_packet``), ``wire_length``,
        ``timestamp`` (ns) and ``port`` (interface index); packets start at the
        headroom. Raises ``CaptureError`` once the good records are all delivered.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            batch.reset(0)
            return 0
        batch.reset(batch.capacity)
        row = 0
        while row < batch.capacity:
            step = self._decoder.decode(self._buf, self._pos, self._end, batch, row)
            row, self._pos = step.rows, step.pos
            if step.problem:
                self._error = self._record_error(step.problem)
                break
            if step.need and not self._fill(step.need):
                if self._end > self._pos:
                    self._error = self._truncated(step.need)
                else:
                    self._done = True
                break
        batch.count = row
        if row == 0 and self._error is not None:
            raise self._error
        return row

    def batches(
        self, batch_size: int = 256, *, slot_size: int = DEFAULT_SLOT
    ) -> Iterator[Batch]:
        """Yield the file as Batches. The same Batch object is refilled each time."""
        batch = Batch(batch_size, slot_size=slot_size)
        while self.read(batch):
            yield batch

    @property
    def offset(self) -> int:
        """File offset of the next record to be read: how far through the file the reader is."""
        return self._base + self._pos

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the buffer ---------------------------------------------------------------------

    def _start(self) -> None:
        """Let the decoder read the file header (pcapng: the first SHB and its IDBs)."""
        while True:
            step: DecodeStep = self._decoder.start(self._buf, self._pos, self._end)
            if step.problem:
                raise self._record_error(step.problem, start=True)
            self._pos = step.pos
            if not step.need:
                return
            if self._fill(step.need):
                continue
            if self._base + self._pos > 0:
                return  # past the file header: read() meets the end or the truncation
            raise self._truncated(step.need, start=True)

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available from ``_pos``; False if the file ends first."""
        have = self._end - self._pos
        if have >= need:
            return True
        if self._eof:
            return False
        if need > self._buf.shape[0]:  # one record bigger than the chunk: grow to fit it
            bigger = np.empty(need, dtype=np.uint8)
            bigger[:have] = self._buf[self._pos : self._end]
            self._buf = bigger
        elif self._pos:
            self._buf[:have] = self._buf[self._pos : self._end]
        self._base += self._pos
        self._pos, self._end = 0, have
        view = memoryview(self._buf)  # type: ignore[arg-type]
        while self._end < need:
            got = self._file.readinto(view[self._end :])
            if not got:
                self._eof = True
                break
            self._end += got
        return self._end >= need

    def _where(self, start: bool) -> str:
        if start and isinstance(self._decoder, PcapDecoder):
            return "file header"
        return f"{self._decoder.record_word} {self._decoder.records + 1}"

    def _record_error(self, problem: str, *, start: bool = False) -> CaptureError:
        return CaptureError(self.path, problem, where=self._where(start),
                            offset=self._base + self._pos)

    def _truncated(self, need: int, *, start: bool = False) -> CaptureError:
        have = self._end - self._pos
        if start and isinstance(self._decoder, PcapDecoder):
            need = FILE_HEADER_SIZE
        part = " of the header" if need == self._decoder.record_header_size else ""
        return self._record_error(f"truncated: {have} of {need} bytes{part}", start=start)


def open_capture(path: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK) -> CaptureReader:
    """Open a pcap or pcapng file for streaming, choosing the format by its magic number."""
    return CaptureReader(path, chunk_size=chunk_size)


class CaptureWriter:
    """Writes Batches to a pcapng (one interface per port) or pcap file.

    ``interfaces`` are names (taking ``linktype`` and ``snaplen``) or ``Interface``
    tuples; pcap takes exactly one. ``format=None`` picks pcap for a ``.pcap``
    suffix and pcapng otherwise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Format | None = "pcapng",
        interfaces: Sequence[str | Interface] = ("",),
        nanosecond: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
        linktype: int = LINKTYPE_ETHERNET,
    ) -> None:
        if format is None:
            format = "pcap" if str(path).endswith(".pcap") else "pcapng"
        declared = [i if isinstance(i, Interface) else Interface(i, linktype, snaplen)
                    for i in interfaces]
        if format == "pcap":
            if len(declared) != 1:
                raise ValueError(f"pcap holds one interface, got {len(declared)}; use pcapng")
            self._encoder: PcapEncoder | PcapngEncoder = PcapEncoder(
                nanosecond=nanosecond, snaplen=declared[0].snaplen,
                linktype=declared[0].linktype)
        elif format == "pcapng":
            self._encoder = PcapngEncoder(declared, nanosecond=nanosecond)
        else:
            raise ValueError(f"format must be 'pcap' or 'pcapng', got {format!r}")
        self.path = str(path)
        self.format: Format = format
        self.interfaces = declared
        self.packets = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close() / __exit__
        self._file.write(self._encoder.header())

    @classmethod
    def like(cls, path: str | os.PathLike[str], reader: CaptureReader) -> CaptureWriter:
        """A writer with the reader's format, interfaces and time unit."""
        return cls(path, format=reader.format, interfaces=reader.interfaces,
                   nanosecond=reader.nanosecond)

    def write(
        self,
        batch: Batch,
        rows: np.ndarray | Sequence[int] | None = None,
        *,
        port_column: str = "out_port",
    ) -> None:
        """Write ``rows`` of ``batch`` (all rows by default; indices or a boolean mask).

        Each packet goes to the interface named by its ``port_column`` (pcapng);
        a port the file does not declare raises ValueError and writes nothing.
        """
        if rows is None:
            selected = np.arange(batch.count, dtype=np.intp)
        else:
            selected = np.asarray(rows)
            if selected.dtype == np.bool_:
                selected = np.flatnonzero(selected[: batch.count])
            selected = selected.astype(np.intp, copy=False)
            if selected.size and (selected.min() < 0 or selected.max() >= batch.count):
                raise ValueError(f"rows must be within the batch's {batch.count} rows")
        records = self._encoder.encode(batch, selected, batch.meta[port_column])
        self._file.write(records)
        self.packets += selected.size

    def write_packet(
        self,
        packet: bytes,
        *,
        timestamp_ns: int = 0,
        interface: int = 0,
        wire_length: int | None = None,
    ) -> None:
        """Write one packet (scalar path for tests and the control plane)."""
        self._file.write(self._encoder.encode_packet(
            bytes(packet), timestamp_ns=timestamp_ns,
            wire_length=len(packet) if wire_length is None else wire_length,
            interface=interface))
        self.packets += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "CaptureError",
    "CaptureReader",
    "CaptureWriter",
    "Format",
    "Interface",
    "open_capture",
]
