"""Capture files round trip byte-exact, and what Portico writes opens in tshark and Scapy.

Inputs come from producers that share no code with ``portico.io``: Scapy's
``wrpcap`` and the ``struct`` builders of conftest.py. Outputs are checked by
reading them back, by comparing bytes with the input, and by tshark, capinfos
and Scapy.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, rdpcap, wrpcap

from portico.batch import JUMBO_SLOT, Batch
from portico.io import CaptureWriter, Interface, open_capture

T0 = 1_700_000_000_123_456_789


def scapy_packets(count: int = 20) -> list:
    packets = []
    for i in range(count):
        l4 = TCP(sport=1000 + i, dport=80) if i % 2 else UDP(sport=53, dport=2000 + i)
        packet = Ether(src="02:00:00:00:00:01") / IP(src="10.0.0.1", dst=f"10.1.0.{i}") / l4
        packet = packet / Raw(bytes(range(i % 7)) * (i * 3))
        packet.time = (T0 + i * 1_234_567_891) / 1e9
        packets.append(packet)
    return packets


def scapy_timestamps(path: Path) -> list[int]:
    """Timestamps in ns as Scapy reads them (exact: Scapy keeps them as Decimals)."""
    return [int(p.time * 10**9) for p in rdpcap(str(path))]


def copy_file(source: Path, target: Path, *, batch_size: int = 7) -> None:
    """Read ``source`` through Portico and write it back in the same format."""
    with open_capture(source) as reader, CaptureWriter.like(target, reader) as writer:
        for batch in reader.batches(batch_size):
            writer.write(batch, port_column="port")


@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
def test_pcap_from_scapy_round_trips_byte_exact(tmp_path: Path, nano: bool, read_all) -> None:
    source, copy = tmp_path / "in.pcap", tmp_path / "out.pcap"
    packets = scapy_packets()
    wrpcap(str(source), packets, nano=nano)

    copy_file(source, copy)

    assert copy.read_bytes() == source.read_bytes()
    records = read_all(source)
    assert [r.data for r in records] == [bytes(p) for p in packets]
    assert [r.timestamp for r in records] == scapy_timestamps(source)
    assert {r.port for r in records} == {0}


def test_pcapng_multi_interface_round_trips_byte_exact(tmp_path: Path, pcapng, read_all) -> None:
    build = pcapng().shb()
    for name in ("wan0", "tenant-a", "tenant-b"):
        build.idb(name, tsresol=9)
    expected = []
    for i in range(30):
        data = bytes([i]) * (60 + i)
        build.epb(i % 3, T0 + i, data, wire=len(data) + (i % 4) * 100)
        expected.append((data, len(data) + (i % 4) * 100, T0 + i, i % 3))
    source, copy = tmp_path / "in.pcapng", tmp_path / "out.pcapng"
    source.write_bytes(build.bytes())

    copy_file(source, copy)

    assert copy.read_bytes() == source.read_bytes()
    with open_capture(source) as reader:
        assert reader.format == "pcapng"
        assert [i.name for i in reader.interfaces] == ["wan0", "tenant-a", "tenant-b"]
    assert [tuple(r) for r in read_all(source)] == expected


def test_pcapng_from_scapy_reads(tmp_path: Path, read_all) -> None:
    path = tmp_path / "scapy.pcapng"
    packets = scapy_packets(10)
    with PcapNgWriter(str(path)) as writer:
        for packet in packets:
            writer.write(packet)
    records = read_all(path)
    assert [r.data for r in records] == [bytes(p) for p in packets]
    assert [r.timestamp for r in records] == scapy_timestamps(path)
    assert [r.port for r in records] == [0] * 10


def write_three_ports(path: Path, fmt: str = "pcapng", nanosecond: bool = True) -> list[bytes]:
    packets = [bytes(p) for p in scapy_packets(12)]
    batch = Batch.from_packets(packets)
    batch.meta["timestamp"][: batch.count] = T0 + np.arange(batch.count) * 1000
    batch.meta["out_port"][: batch.count] = np.arange(batch.count) % 3
    names = ["wan0", "tenant-a", "tenant-b"] if fmt == "pcapng" else ["wan0"]
    with CaptureWriter(path, format=fmt, interfaces=names, nanosecond=nanosecond) as writer:
        writer.write(batch)
    return packets


def test_tshark_reads_written_pcapng_with_interface_names(tmp_path: Path, tshark) -> None:
    path = tmp_path / "out.pcapng"
    write_three_ports(path)
    result = tshark("-r", str(path), "-T", "fields", "-e", "frame.interface_name",
                    "-e", "frame.time_epoch", "-e", "frame.len")
    assert result.stderr == ""
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 12
    assert [r[0] for r in rows] == ["wan0", "tenant-a", "tenant-b"] * 4
    assert rows[1][1] == "1700000000.123457789"
    info = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert "Number of packets:   12" in info


@pytest.mark.parametrize("nanosecond", [False, True], ids=["usec", "nsec"])
def test_tshark_and_scapy_read_written_pcap(tmp_path: Path, tshark, nanosecond: bool) -> None:
    path = tmp_path / "out.pcap"
    packets = write_three_ports(path, "pcap", nanosecond)
    result = tshark("-r", str(path), "-T", "fields", "-e", "frame.len")
    assert result.stderr == ""
    assert result.stdout.split() == [str(len(p)) for p in packets]
    assert [bytes(p) for p in rdpcap(str(path))] == packets


def test_scapy_reads_written_pcapng_without_warnings(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "out.pcapng"
    packets = write_three_ports(path)
    logger = logging.getLogger("scapy")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.WARNING, logger="scapy"), warnings.catch_warnings():
            warnings.simplefilter("error")
            read = rdpcap(str(path))
    finally:
        logger.setLevel(level)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [bytes(p) for p in read] == packets
    assert [int(p.time * 10**6) for p in read] == [(T0 + i * 1000) // 1000 for i in range(12)]
    assert [p.sniffed_on for p in read] == ["wan0", "tenant-a", "tenant-b"] * 4


def test_big_endian_files_read(tmp_path: Path, pcap_bytes, pcapng, read_all) -> None:
    packets = [(bytes([i]) * (64 + i), T0 + i * 1000, 100 + i) for i in range(5)]
    for nano in (False, True):
        path = tmp_path / f"be{nano}.pcap"
        path.write_bytes(pcap_bytes(packets, order=">", nanosecond=nano))
        unit = 1 if nano else 1000
        assert [tuple(r) for r in read_all(path)] == [
            (d, w, t // unit * unit, 0) for d, t, w in packets]

    build = pcapng().shb(">").idb("eth0").idb("eth1", tsresol=9)
    for i, (data, ts, wire) in enumerate(packets):
        build.epb(i % 2, ts // 1000 if i % 2 == 0 else ts, data, wire)
    path = tmp_path / "be.pcapng"
    path.write_bytes(build.bytes())
    expected = [(d, w, t // 1000 * 1000 if i % 2 == 0 else t, i % 2)
                for i, (d, t, w) in enumerate(packets)]
    assert [tuple(r) for r in read_all(path)] == expected


def test_pcapng_sections_resolutions_and_skipped_blocks(tmp_path: Path, pcapng, read_all) -> None:
    data = [bytes([i]) * (50 + i) for i in range(8)]
    build = (pcapng().shb("<")
             .idb("ms", tsresol=3)            # milliseconds
             .idb("base2", tsresol=0x80 | 10, tsoffset=100)  # 1/1024 s, +100 s
             .block(4, b"\x01\x00\x08\x00\x0a\x00\x00\x01host\x00\x00\x00\x00")  # NRB
             .epb(0, 1_700_000_000_123, data[0])
             .epb(1, 1024 * 5 + 512, data[1])
             .block(5, b"\0" * 12)          # ISB
             .block(0x00000BAD, b"\x00\x00\x7e\x7e custom")  # custom block
             .block(0x12345678, b"unknown!")
             .spb(data[2] + b"\0\0", wire=len(data[2]) + 2)
             .shb(">")                      # second section, other byte order
             .idb("ps", tsresol=12)         # picoseconds
             .epb(0, 7_000_000_000_123, data[3], options=b"\x00\x01\x00\x04ok!!\x00\x00\x00\x00")
             .pb(0, 9_000_000, data[4]))
    path = tmp_path / "sections.pcapng"
    path.write_bytes(build.bytes())
    with open_capture(path) as reader:
        assert [i.name for i in reader.interfaces] == ["ms", "base2"]  # first section known
    records = read_all(path, batch_size=2)
    assert [tuple(r) for r in records] == [
        (data[0], 50, 1_700_000_000_123_000_000, 0),
        (data[1], 51, 105_500_000_000, 1),
        (data[2] + b"\0\0", 54, 0, 0),
        (data[3], 53, 7_000_000_000, 2),
        (data[4], 54, 9_000, 2),
    ]
    with open_capture(path) as reader:
        for _ in reader.batches():
            pass
        assert [i.name for i in reader.interfaces] == ["ms", "base2", "ps"]


def test_simple_packet_block_cut_to_snaplen(tmp_path: Path, pcapng, read_all) -> None:
    path = tmp_path / "spb.pcapng"
    path.write_bytes(pcapng().shb().idb("eth0", snaplen=40).spb(b"x" * 40, wire=1500).bytes())
    assert [tuple(r) for r in read_all(path)] == [(b"x" * 40, 1500, 0, 0)]


def test_packet_longer_than_slot_is_cut_keeping_wire_length(tmp_path: Path, pcap_bytes) -> None:
    path = tmp_path / "jumbo.pcap"
    jumbo = bytes(range(256)) * 36  # 9216 bytes
    path.write_bytes(pcap_bytes([(jumbo, T0), (b"small", T0 + 1)]))
    with open_capture(path, chunk_size=4096) as reader:  # also grows the buffer
        batch = Batch(4)
        assert reader.read(batch) == 2
        assert batch.packet(0) == jumbo[: batch.max_packet]
        assert int(batch.meta["wire_length"][0]) == len(jumbo)
        assert batch.packet(1) == b"small"
        jumbo_batch = Batch(4, slot_size=JUMBO_SLOT)
    with open_capture(path, chunk_size=4096) as reader:
        assert reader.read(jumbo_batch) == 2
        assert jumbo_batch.packet(0) == jumbo


def test_records_straddling_chunks(tmp_path: Path, read_all) -> None:
    path = tmp_path / "many.pcapng"
    packets = [bytes([i % 251]) * (60 + (i * 37) % 1400) for i in range(400)]
    with CaptureWriter(path, interfaces=["a", "b"]) as writer:
        for i, packet in enumerate(packets):
            writer.write_packet(packet, timestamp_ns=T0 + i, interface=i % 2)
    for chunk in (4096, 5000, 1 << 20):
        records = read_all(path, chunk_size=chunk, batch_size=33)
        assert [r.data for r in records] == packets
        assert [r.port for r in records] == [i % 2 for i in range(400)]


def test_writer_selects_rows_and_checks_ports(tmp_path: Path, read_all) -> None:
    batch = Batch.from_packets([b"a" * 60, b"b" * 61, b"c" * 62])
    batch.meta["out_port"][:3] = [1, 0, 1]
    path = tmp_path / "sel.pcapng"
    with CaptureWriter(path, interfaces=["x", "y"]) as writer:
        writer.write(batch, rows=[2, 0])
        writer.write(batch, rows=np.array([False, True, False]))
        with pytest.raises(ValueError, match="interface 5"):
            batch.meta["out_port"][1] = 5
            writer.write(batch)
        with pytest.raises(ValueError, match="within the batch"):
            writer.write(batch, rows=[3])
    assert [(r.data[:1], r.port) for r in read_all(path)] == [(b"c", 1), (b"a", 1), (b"b", 0)]
    with pytest.raises(ValueError, match="one interface"):
        CaptureWriter(tmp_path / "x.pcap", format="pcap", interfaces=["a", "b"])
    with pytest.raises(ValueError, match="format"):
        CaptureWriter(tmp_path / "x", format="erf")  # type: ignore[arg-type]


packet_lists = st.lists(
    st.tuples(st.binary(min_size=0, max_size=300),
              st.integers(min_value=0, max_value=2**32 * 10**9 - 1),
              st.integers(min_value=0, max_value=2),
              st.integers(min_value=0, max_value=100)),
    max_size=40,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=packet_lists, fmt=st.sampled_from(["pcap", "pcapng"]), nano=st.booleans(),
       batch_size=st.integers(min_value=1, max_value=50))
def test_random_packet_lists_round_trip(tmp_path: Path, read_all, packets, fmt: str, nano: bool,
                                        batch_size: int) -> None:
    first, second = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    names = [Interface("p0"), Interface("p1"), Interface("")] if fmt == "pcapng" else ["p0"]
    with CaptureWriter(first, format=fmt, interfaces=names, nanosecond=nano) as writer:
        for data, ts, port, extra in packets:
            writer.write_packet(data, timestamp_ns=ts, wire_length=len(data) + extra,
                                interface=port if fmt == "pcapng" else 0)
    unit = 1 if nano else 1000
    expected = [(d, len(d) + extra, ts // unit * unit, p if fmt == "pcapng" else 0)
                for d, ts, p, extra in packets]
    assert [tuple(r) for r in read_all(first, batch_size=batch_size)] == expected

    copy_file(first, second, batch_size=batch_size)
    assert second.read_bytes() == first.read_bytes()
