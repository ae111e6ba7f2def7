"""Broken capture files: the error names file, record and problem, after every good record.

Also: memory while streaming stays bounded by the batch and the chunk, not the file.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portico.batch import Batch
from portico.io import CaptureError, CaptureWriter, open_capture

T0 = 1_600_000_000_000_000_000
PACKETS = [bytes([i]) * (60 + i) for i in range(10)]


def read_until_error(path: Path, batch_size: int = 4) -> tuple[list[bytes], CaptureError | None]:
    """Packets delivered before the error, and the error (None at a clean end)."""
    delivered: list[bytes] = []
    with open_capture(path) as reader:
        batch = Batch(batch_size)
        while True:
            try:
                n = reader.read(batch)
            except CaptureError as error:
                return delivered, error
            if n == 0:
                return delivered, None
            delivered += batch.packets()


def record_offsets(packets: list[bytes], first: int, overhead: int, pad: bool) -> list[int]:
    offsets, at = [], first
    for packet in packets:
        offsets.append(at)
        at += overhead + (len(packet) + 3) // 4 * 4 if pad else overhead + len(packet)
    return offsets


def cut_points(offsets: list[int]) -> list[tuple[int, int]]:
    """(cut, 1-based record cut) inside the header and inside the data of several records."""
    return [(offsets[k] + delta, k + 1) for k in (0, 3, 9) for delta in (1, 10, 20)]


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_truncated_pcap_delivers_earlier_records_then_names_the_record(
        tmp_path: Path, pcap_bytes, batch_size: int) -> None:
    whole = pcap_bytes([(p, T0 + i) for i, p in enumerate(PACKETS)])
    offsets = record_offsets(PACKETS, 24, 16, pad=False)
    for cut, record in cut_points(offsets):
        path = tmp_path / "trace.pcap"
        path.write_bytes(whole[:cut])
        delivered, error = read_until_error(path, batch_size)
        assert delivered == PACKETS[: record - 1]
        assert error is not None
        have = cut - offsets[record - 1]
        need = 16 if have < 16 else 16 + len(PACKETS[record - 1])
        assert str(error).startswith(f"{path}: record {record}: truncated: {have} of {need} bytes")
        assert error.offset == offsets[record - 1]


def test_truncated_pcapng_names_the_block(tmp_path: Path, pcapng) -> None:
    build = pcapng().shb().idb("eth0")
    for i, packet in enumerate(PACKETS):
        build.epb(0, i, packet)
    whole = build.bytes()
    offsets = record_offsets(PACKETS, len(whole) - sum(32 + (len(p) + 3) // 4 * 4
                                                       for p in PACKETS), 32, pad=True)
    for cut, record in cut_points(offsets):
        path = tmp_path / "trace.pcapng"
        path.write_bytes(whole[:cut])
        delivered, error = read_until_error(path)
        assert delivered == PACKETS[: record - 1]
        assert error is not None
        have = cut - offsets[record - 1]
        need = 12 if have < 12 else 32 + (len(PACKETS[record - 1]) + 3) // 4 * 4
        block = record + 2  # SHB and IDB come first
        assert f"{path}: block {block}: truncated: {have} of {need} bytes" in str(error)


def test_truncated_file_header(tmp_path: Path, pcap_bytes, pcapng) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(pcap_bytes([])[:10])
    with pytest.raises(CaptureError, match=r"short.pcap: file header: truncated: 10 of 24"):
        open_capture(path)
    path = tmp_path / "short.pcapng"
    path.write_bytes(pcapng().shb().idb("eth0").bytes()[:-6])
    delivered, error = read_until_error(path)
    assert delivered == []
    assert f"{path}: block 2: truncated: 26 of 32 bytes" in str(error)


def test_record_bigger_than_snaplen(tmp_path: Path, pcap_bytes) -> None:
    good = pcap_bytes([(p, T0) for p in PACKETS[:3]])
    bad = struct.pack("<IIII", 1, 2, 70000, 70000) + b"\0" * 100
    path = tmp_path / "trace.pcap"
    path.write_bytes(good + bad)
    delivered, error = read_until_error(path, batch_size=64)
    assert delivered == PACKETS[:3]
    assert error is not None
    assert str(error).startswith(
        f"{path}: record 4: header claims 70000 bytes, snaplen is 65535")


@pytest.mark.parametrize(("corrupt", "problem"), [
    (lambda b: b[:4] + struct.pack("<I", 13) + b[8:], "bad block length 13"),
    (lambda b: b[:4] + struct.pack("<I", 0x40000000) + b[8:], "bad block length 1073741824"),
    (lambda b: b[:-4] + struct.pack("<I", 100), "block length 96 but trailer says 100"),
    (lambda b: b[:20] + struct.pack("<I", 500) + b[24:], "captured length 500 exceeds"),
    (lambda b: b[:8] + struct.pack("<I", 3) + b[12:], "packet on interface 3, which the section"),
])
def test_corrupt_pcapng_block(tmp_path: Path, pcapng, corrupt, problem: str) -> None:
    head = pcapng().shb().idb("eth0").epb(0, 1, PACKETS[0]).bytes()
    bad = pcapng().shb().idb("x").epb(0, 2, PACKETS[1]).parts[-1]  # a 96-byte EPB
    path = tmp_path / "bad.pcapng"
    path.write_bytes(head + corrupt(bad))
    delivered, error = read_until_error(path)
    assert delivered == [PACKETS[0]]
    assert error is not None
    assert str(error).startswith(f"{path}: block 4: {problem}")


def test_error_comes_after_the_good_rows_and_persists(tmp_path: Path, pcap_bytes) -> None:
    path = tmp_path / "trace.pcap"
    path.write_bytes(pcap_bytes([(p, T0) for p in PACKETS])[:-5])
    with open_capture(path) as reader:
        batch = Batch(64)
        assert reader.read(batch) == 9
        assert batch.count == 9
        for _ in range(2):
            with pytest.raises(CaptureError, match="record 10: truncated"):
                reader.read(batch)


def test_unknown_magic_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is not a capture")
    with pytest.raises(CaptureError, match=r"notes.txt: not a pcap or pcapng file"):
        open_capture(path)
    path.write_bytes(b"")
    with pytest.raises(CaptureError, match=r"notes.txt: empty file"):
        open_capture(path)


def test_file_with_headers_only(tmp_path: Path, pcap_bytes, pcapng) -> None:
    for name, content in (("h.pcap", pcap_bytes([])), ("h.pcapng", pcapng().shb().idb().bytes())):
        path = tmp_path / name
        path.write_bytes(content)
        with open_capture(path) as reader:
            assert reader.read(Batch(8)) == 0
            assert len(reader.interfaces) == 1


def test_streaming_memory_is_bounded_by_batch_and_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big.pcapng"
    batch = Batch(4096)
    batch.reset(4096)
    batch.meta["length"][:] = 64
    batch.meta["wire_length"][:] = 64
    batch.meta["port"][:] = 0
    with CaptureWriter(path, interfaces=["p0"]) as writer:
        for i in range(100):  # 409,600 packets, ~39 MB
            batch.meta["timestamp"][:] = T0 + i * 4096 + np.arange(4096)
            writer.write(batch, port_column="port")
    size = path.stat().st_size
    assert size > 35_000_000

    reading = Batch(256)
    with open_capture(path) as reader:  # load the compiled kernels before measuring
        reader.read(reading)
    tracemalloc.start()
    try:
        total = 0
        with open_capture(path, chunk_size=1 << 20) as reader:
            while n := reader.read(reading):
                total += n
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 409_600
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while streaming a {size}-byte file"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), fmt=st.sampled_from(["pcap", "pcapng"]))
def test_mutated_files_give_packets_or_capture_error(tmp_path: Path, pcap_bytes, pcapng, data,
                                                     fmt: str) -> None:
    """Flipped bytes and cuts anywhere: packets or a CaptureError, never anything else."""
    if fmt == "pcap":
        whole = bytearray(pcap_bytes([(p, T0 + i) for i, p in enumerate(PACKETS)]))
    else:
        build = pcapng().shb().idb("a").idb("b", tsresol=9)
        for i, packet in enumerate(PACKETS):
            build.epb(i % 2, i, packet)
        whole = bytearray(build.bytes())
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(whole) - 1))
        whole[at] = data.draw(st.integers(0, 255))
    whole = whole[: data.draw(st.integers(0, len(whole)))]
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(bytes(whole))
    try:
        with open_capture(path, chunk_size=4096) as reader:
            batch = Batch(3)
            while n := reader.read(batch):
                assert (batch.meta["length"][:n] <= batch.max_packet).all()
    except CaptureError as error:
        assert str(error).startswith(str(path))


@pytest.mark.parametrize(("resolution", "problem"), [
    (b"", "if_tsresol option of 0 bytes, not 1"),  # found by the mutation test
    (b"\x06\x06", "if_tsresol option of 2 bytes, not 1"),
    (bytes([40]), "if_tsresol 0x28 is finer than Portico can represent"),  # 10^-40 s
    (bytes([0x80 | 70]), "if_tsresol 0xc6 is finer than Portico can represent"),  # 2^-70 s
])
def test_bad_timestamp_resolution_is_a_named_error(tmp_path: Path, pcapng, resolution: bytes,
                                                   problem: str) -> None:
    builder = pcapng().shb().idb("eth0").epb(0, 1, PACKETS[0])
    options = builder.option(9, resolution) + builder.option(0, b"")
    builder.block(1, struct.pack("<HHI", 1, 0, 65535) + options).epb(1, 2, PACKETS[1])
    path = tmp_path / "resolution.pcapng"
    path.write_bytes(builder.bytes())
    delivered, error = read_until_error(path)
    assert delivered == [PACKETS[0]]
    assert error is not None and problem in str(error)
