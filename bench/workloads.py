"""The workloads and Portico's side of them: traffic pools, batch views, the SNAT kernel.

A workload is one piece of per-packet work done by every contender:

* ``parse``: decode each frame to its 5-tuple (addresses, protocol, ports);
* ``snat``: parse, then rewrite the IPv4 source address to ``NAT_ADDRESS`` and
  the TCP/UDP source port to ``nat_port(...)`` of the flow, patch the IPv4 and
  transport checksums incrementally (RFC 1624), and write the packet to an
  output buffer. Packets that are not unfragmented IPv4 TCP/UDP are copied as
  they are.
* ``read``: read a classic pcap file holding the pool's packets (written once
  per run by ``write_capture``) into memory as packets. Portico streams it
  with ``open_capture(path).batches(batch)``, each batch's packets landing in
  the Batch's slots (``read_count``).

Portico runs over a *pool*: all packets of the run in one Batch, cut into
views of ``batch`` rows (no copies) so that each call sees a Batch of that size,
as a port would deliver it. The SNAT kernel is one ``@njit`` loop over the rows
using the parsed ``meta`` columns and the checksum helpers of
``portico.packet.checksum``.

``nat_port`` is the per-flow source-port function shared by every contender; it
is written twice (Python for the peers, Numba for the kernel) and the two are
checked against each other by the harness's byte-for-byte comparison.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.gen import TrafficSpec, generate
from portico.io.capture import CaptureWriter, open_capture
from portico.packet.checksum import update16, update32

WORKLOADS = ("parse", "snat", "read")
NAT_ADDRESS = (203 << 24) | (0 << 16) | (113 << 8) | 1  # 203.0.113.1 (TEST-NET-3)
NAT_ADDRESS_BYTES = NAT_ADDRESS.to_bytes(4, "big")
PORT_BASE = 1024
PORT_SPAN = 65536 - PORT_BASE
_MIX_A = 0x9E3779B1  # odd 32-bit multipliers (golden-ratio and murmur constants)
_MIX_B = 0x85EBCA77


def nat_port(src: int, dst: int, sport: int, dport: int, protocol: int) -> int:
    """The translated source port of a flow: a hash of its 5-tuple into 1024..65535."""
    mixed = ((src * _MIX_A) ^ (dst * _MIX_B) ^ ((sport << 16) | dport) ^ protocol) & 0xFFFFFFFF
    return PORT_BASE + mixed % PORT_SPAN


@njit(cache=True, inline="always")
def nat_port_jit(
    src: int | np.int64,
    dst: int | np.int64,
    sport: int | np.int64,
    dport: int | np.int64,
    protocol: int | np.int64,
) -> int | np.int64:
    # uint64 throughout: Numba turns mixed signed/unsigned arithmetic into floats.
    mask = np.uint64(0xFFFFFFFF)
    mixed = (np.uint64(src) * np.uint64(_MIX_A)) ^ (np.uint64(dst) * np.uint64(_MIX_B))
    mixed ^= (np.uint64(sport) << np.uint64(16)) | np.uint64(dport)
    mixed = (mixed ^ np.uint64(protocol)) & mask
    return np.int64(PORT_BASE) + np.int64(mixed % np.uint64(PORT_SPAN))


@njit(cache=True)
def snat_rows(
    data: np.ndarray, meta: np.ndarray, count: int, out: np.ndarray, nat_address: int
) -> None:
    """Copy rows [0, count) into ``out`` (same slot layout), translating IPv4 TCP/UDP.

    The copy moves whole 8-byte words covering the packet (slots are a multiple
    of 8 bytes): a byte loop costs several times more per 64-byte frame. Bytes are
    indexed as ``out[i, k]``, never through a row view ``out[i]``: Numba
    reference-counts every view it makes, which costs more than the rest of the
    per-packet work.
    """
    data_words = data.view(np.uint64)
    out_words = out.view(np.uint64)
    for i in range(count):
        m = meta[i]
        start = np.intp(m.start)
        for k in range(start >> 3, (start + np.intp(m.length) + 7) >> 3):
            out_words[i, k] = data_words[i, k]
        if m.drop != 0 or m.ip_version != 4 or m.frag != 0:
            continue
        protocol = np.int64(m.protocol)
        if protocol != 6 and protocol != 17:
            continue
        l3 = m.l3
        l4 = m.l4
        old_src = np.int64(m.src4)
        old_port = np.int64(m.sport)
        new_port = nat_port_jit(old_src, np.int64(m.dst4), old_port, np.int64(m.dport), protocol)

        ip_sum: int | np.int64 = (np.int64(out[i, l3 + 10]) << 8) | np.int64(out[i, l3 + 11])
        ip_sum = update32(ip_sum, old_src, nat_address)
        out[i, l3 + 10] = ip_sum >> 8
        out[i, l3 + 11] = ip_sum & 0xFF
        out[i, l3 + 12] = (nat_address >> 24) & 0xFF
        out[i, l3 + 13] = (nat_address >> 16) & 0xFF
        out[i, l3 + 14] = (nat_address >> 8) & 0xFF
        out[i, l3 + 15] = nat_address & 0xFF

        at = l4 + 16 if protocol == 6 else l4 + 6
        l4_sum: int | np.int64 = (np.int64(out[i, at]) << 8) | np.int64(out[i, at + 1])
        if protocol == 6 or l4_sum != 0:  # a zero UDP checksum means "none": keep it
            l4_sum = update16(update32(l4_sum, old_src, nat_address), old_port, new_port)
            if protocol == 17 and l4_sum == 0:
                l4_sum = 0xFFFF
            out[i, at] = l4_sum >> 8
            out[i, at + 1] = l4_sum & 0xFF
        out[i, l4] = new_port >> 8
        out[i, l4 + 1] = new_port & 0xFF


def snat(batch: Batch, out: np.ndarray) -> None:
    """SNAT a parsed batch into ``out`` (a C-contiguous array shaped like ``batch.data``)."""
    if batch.slot_size % 8:
        raise ValueError(f"snat needs slots of a multiple of 8 bytes, not {batch.slot_size}")
    snat_rows(batch.data, batch.meta, batch.count, out, NAT_ADDRESS)


# ---------------------------------------------------------------- traffic
def bench_spec(packets: int, *, flows: int = 100_000, seed: int = 1) -> TrafficSpec:
    """The issue's traffic: 64-byte frames, a TCP/UDP mix, 100k flows, IPv4."""
    return TrafficSpec(
        packets=packets, flows=flows, seed=seed, mix={"tcp": 0.5, "udp": 0.5}, sizes="64"
    )


@dataclass
class Pool:
    """Every packet of a run: one Batch for Portico, the same frames as bytes for peers."""

    batch: Batch
    frames: list[bytes]

    @property
    def count(self) -> int:
        return self.batch.count


def make_pool(spec: TrafficSpec) -> Pool:
    batch = next(generate(spec, batch_size=max(1, spec.packets)))
    return Pool(batch, batch.packets())


def views(
    batch: Batch, size: int, out: np.ndarray | None = None
) -> list[tuple[Batch, np.ndarray | None]]:
    """Cut ``batch`` into Batches of ``size`` rows sharing its arrays (no copies).

    Each view comes with the matching rows of ``out`` when given.
    """
    cut = []
    for first in range(0, batch.count, size):
        last = min(first + size, batch.count)
        view = Batch.__new__(Batch)
        view.data = batch.data[first:last]
        view.meta = batch.meta[first:last]
        view.count = last - first
        view.headroom = batch.headroom
        cut.append((view, None if out is None else out[first:last]))
    return cut


# ---------------------------------------------------------------- capture files
def write_capture(pool: Pool, path: str | os.PathLike[str]) -> None:
    """Write the pool's packets to ``path`` as a classic pcap file (microsecond stamps)."""
    with CaptureWriter(path, format="pcap", nanosecond=False) as writer:
        writer.write(pool.batch)


def read_count(path: str | os.PathLike[str], batch_size: int) -> int:
    """Portico's ``read``: stream the capture into Batches of ``batch_size``; count packets."""
    packets = 0
    with open_capture(path) as reader:
        for batch in reader.batches(batch_size):
            packets += batch.count
    return packets


def read_frames(path: str | os.PathLike[str], batch_size: int) -> list[bytes]:
    """The packets ``read_count`` reads, as bytes (for checking, not timing)."""
    frames: list[bytes] = []
    with open_capture(path) as reader:
        for batch in reader.batches(batch_size):
            frames += batch.packets()
    return frames


def output_frames(batch: Batch, out: np.ndarray, rows: int) -> list[bytes]:
    """The first ``rows`` packets as written into ``out`` (same starts and lengths)."""
    starts = batch.meta["start"]
    lengths = batch.meta["length"]
    return [bytes(out[r, starts[r] : starts[r] + lengths[r]]) for r in range(rows)]


def five_tuples(batch: Batch, rows: int) -> list[tuple[int, int, int, int, int]]:
    """Portico's parsed 5-tuples of the first ``rows`` IPv4 TCP/UDP packets."""
    m = batch.meta[:rows]
    return [
        (int(s), int(d), int(p), int(sp), int(dp))
        for s, d, p, sp, dp in zip(
            m["src4"], m["dst4"], m["protocol"], m["sport"], m["dport"], strict=True
        )
    ]


class MismatchError(AssertionError):
    """Two contenders computed different results: the benchmark would be meaningless."""


def compare_frames(
    expected: Sequence[bytes], actual: Sequence[bytes], *, expected_by: str, actual_by: str
) -> None:
    """Raise MismatchError at the first packet (and byte) where the outputs differ."""
    if len(actual) < len(expected):
        raise MismatchError(
            f"{actual_by} gave {len(actual)} packets, {expected_by} {len(expected)}"
        )
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want == got:
            continue
        if len(want) != len(got):
            raise MismatchError(
                f"packet {index}: {actual_by} wrote {len(got)} bytes, {expected_by} {len(want)}"
            )
        at = next(k for k in range(len(want)) if want[k] != got[k])
        raise MismatchError(
            f"packet {index}, byte {at}: {actual_by} wrote {got[at]:#04x}, {expected_by} "
            f"{want[at]:#04x}\n  {expected_by}: {want.hex()}\n  {actual_by}: {got.hex()}"
        )
