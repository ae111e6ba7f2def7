"""Capture-file test helpers: independent producers of pcap/pcapng bytes, and a reader.

The builders write files with ``struct`` from the format specifications (libpcap's
file format, draft-ietf-opsawg-pcapng), sharing no code with ``portico.io``, so
a test that reads their output checks Portico against the specification rather
than against itself. They are fixtures because the suite runs with
``--import-mode=importlib``, where test modules cannot import each other.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from typing import NamedTuple

import pytest

from portico.batch import Batch
from portico.io import open_capture


class Record(NamedTuple):
    data: bytes
    wire_length: int
    timestamp: int
    port: int


def build_pcap(
    packets: list[tuple[bytes, int]] | list[tuple[bytes, int, int]],
    *,
    order: str = "<",
    nanosecond: bool = False,
    snaplen: int = 65535,
) -> bytes:
    """A pcap file: (data, timestamp_ns[, wire_length]) per packet."""
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)]
    for packet in packets:
        data, ts = packet[0], packet[1]
        wire = packet[2] if len(packet) > 2 else len(data)
        seconds, fraction = divmod(ts, 10**9)
        if not nanosecond:
            fraction //= 1000
        out.append(struct.pack(order + "IIII", seconds, fraction, len(data), wire) + data)
    return b"".join(out)


class PcapngBuilder:
    """Appends pcapng blocks, in the byte order of the current section."""

    def __init__(self) -> None:
        self.order = "<"
        self.parts: list[bytes] = []

    def block(self, kind: int, body: bytes) -> PcapngBuilder:
        body += b"\0" * (-len(body) % 4)
        length = 12 + len(body)
        self.parts.append(struct.pack(self.order + "II", kind, length) + body
                          + struct.pack(self.order + "I", length))
        return self

    def option(self, code: int, value: bytes) -> bytes:
        return struct.pack(self.order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)

    def shb(self, order: str = "<") -> PcapngBuilder:
        self.order = order
        return self.block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))

    def idb(
        self,
        name: str = "",
        *,
        tsresol: int | None = None,
        snaplen: int = 65535,
        tsoffset: int | None = None,
    ) -> PcapngBuilder:
        options = b""
        if name:
            options += self.option(2, name.encode())
        if tsresol is not None:
            options += self.option(9, bytes([tsresol]))
        if tsoffset is not None:
            options += self.option(14, struct.pack(self.order + "q", tsoffset))
        if options:
            options += self.option(0, b"")
        return self.block(1, struct.pack(self.order + "HHI", 1, 0, snaplen) + options)

    def epb(self, interface: int, ticks: int, data: bytes, wire: int | None = None,
            options: bytes = b"") -> PcapngBuilder:
        wire = len(data) if wire is None else wire
        body = struct.pack(self.order + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF,
                           len(data), wire)
        padded = data + b"\0" * (-len(data) % 4)
        return self.block(6, body + padded + options)

    def spb(self, data: bytes, wire: int | None = None) -> PcapngBuilder:
        wire = len(data) if wire is None else wire
        return self.block(3, struct.pack(self.order + "I", wire) + data)

    def pb(self, interface: int, ticks: int, data: bytes) -> PcapngBuilder:
        body = struct.pack(self.order + "HHIIII", interface, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                           len(data), len(data))
        return self.block(2, body + data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


@pytest.fixture
def pcapng() -> Callable[[], PcapngBuilder]:
    return PcapngBuilder


@pytest.fixture
def pcap_bytes() -> Callable[..., bytes]:
    return build_pcap


def _read_all(path: str | os.PathLike[str], *, batch_size: int = 64, **options: int
              ) -> list[Record]:
    records = []
    with open_capture(path, **options) as reader:
        batch = Batch(batch_size)
        while n := reader.read(batch):
            meta = batch.meta
            records += [Record(batch.packet(r), int(meta["wire_length"][r]),
                               int(meta["timestamp"][r]), int(meta["port"][r]))
                        for r in range(n)]
    return records


@pytest.fixture
def read_all() -> Callable[..., list[Record]]:
    """Every packet of a file as Records, read through Portico in small batches."""
    return _read_all


class Tshark(NamedTuple):
    stdout: str
    stderr: str


def _tshark(*args: str) -> Tshark:
    done = subprocess.run(["tshark", *args], capture_output=True, text=True, check=True)
    # tshark run as root always says so; that line is about the user, not the file.
    stderr = "\n".join(line for line in done.stderr.splitlines()
                       if not line.startswith("Running as user"))
    return Tshark(done.stdout, stderr.strip())


@pytest.fixture
def tshark() -> Callable[..., Tshark]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    return _tshark
