"""portico bench: the harness runs, reports the documented shape, and refuses wrong results.

No timing is asserted: figures depend on the machine. What is asserted is that
a run produces every number it promises, that the byte-for-byte check between
Portico's SNAT and the ``struct`` peer catches a kernel that is wrong, and that
the read workload's check catches a reader that loses or changes packets.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from bench import harness
from bench.peers import PEERS, snat_struct
from bench.workloads import (
    NAT_ADDRESS,
    WORKLOADS,
    MismatchError,
    bench_spec,
    compare_frames,
    make_pool,
    nat_port,
    nat_port_jit,
    output_frames,
    read_count,
    read_frames,
    snat,
    write_capture,
)
from portico.datapath.stages.parse import parse
from portico.io.capture import CaptureWriter

TINY = harness.Settings(packets=256, batches=(32, 256), repeats=1, peer_repeats=1,
                        samples={"struct": 256, "dpkt": 64, "scapy": 16})


def bench_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="portico bench")
    harness.add_arguments(parser)
    return harness.run(parser.parse_args(list(argv)))


@pytest.fixture(autouse=True)
def keep_affinity():  # the harness pins the process to one CPU; give the others back
    import os

    allowed = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, allowed)


def test_run_reports_every_workload_and_batch(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the capture goes
    report = harness.run_bench(TINY, WORKLOADS)
    assert {"cpu", "cores", "python", "numpy", "numba", "pinned_cpu",
            "numba_first_call_s"} <= set(report["machine"])
    assert report["run"]["verified"] is True
    assert report["run"]["capture"]["bytes"] == 24 + 256 * (16 + 64)  # classic pcap
    assert list(tmp_path.iterdir()) == []  # the capture's directory is gone
    seen = {(e["name"], e["batch"]) for e in report["workloads"]}
    assert seen == {(name, batch) for name in ("parse", "snat", "read") for batch in (32, 256)}
    for entry in report["workloads"]:
        assert entry["packets"] == 256
        assert entry["pps"] > 0 and entry["pps_streaming"] > 0
        assert entry["resident_packets"] == 256  # the whole tiny pool fits
        assert set(entry["peers"]) == {"scapy", "dpkt", "struct"}
        assert all(value > 0 for value in entry["peers"].values())
        assert entry["peer_packets"] == {"struct": 256, "dpkt": 64, "scapy": 16}
        if entry["name"] == "read":  # one regime: the file in the page cache
            assert entry["pps_streaming"] == entry["pps"]
    table = harness.format_table(report)
    assert "parse" in table and "read" in table
    assert any(line.startswith("read >= 5 Mpps at batch 256: ")
               for line in harness.target_lines(report))


def test_cli_json_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plot = tmp_path / "pps.png"
    assert bench_cli("--quick", "--json", "--workload", "snat", "--batch", "64",
                     "--packets", "128", "--plot", str(plot)) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"machine", "workloads"}
    (entry,) = report["workloads"]
    assert set(entry) >= {"name", "packets", "batch", "pps", "peers"}
    assert (entry["name"], entry["packets"], entry["batch"]) == ("snat", 128, 64)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_the_read_workload(capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    plot = tmp_path / "pps.png"
    assert bench_cli("--quick", "--json", "--workload", "read", "--batch", "64",
                     "--packets", "300", "--plot", str(plot)) == 0
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["workloads"]
    assert (entry["name"], entry["packets"], entry["batch"]) == ("read", 300, 64)
    assert entry["pps_streaming"] == entry["pps"]
    assert entry["resident_packets"] == 300
    assert report["run"]["capture"]["format"] == "pcap"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_batch_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_cli("--batch", "0")
    assert exited.value.code == 2
    assert "--batch" in capsys.readouterr().err


# ---------------------------------------------------------------- the equality check
def test_compare_frames_names_the_first_difference() -> None:
    compare_frames([b"abc", b"def"], [b"abc", b"def"], expected_by="a", actual_by="b")
    with pytest.raises(MismatchError, match="packet 1, byte 2"):
        compare_frames([b"abc", b"def"], [b"abc", b"deX"], expected_by="a", actual_by="b")
    with pytest.raises(MismatchError, match="packet 0"):
        compare_frames([b"abc"], [b"ab"], expected_by="a", actual_by="b")
    with pytest.raises(MismatchError):
        compare_frames([b"abc"], [], expected_by="a", actual_by="b")


def test_verify_catches_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_pool(bench_spec(64, flows=16))
    results = {name: peer(pool.frames) for name, peer in PEERS["snat"].items()}
    harness.verify("snat", pool, results)  # the real kernel passes

    def skips_the_l4_checksum(batch, out) -> None:  # type: ignore[no-untyped-def]
        snat(batch, out)
        for row in range(batch.count):
            at = int(batch.meta["l4"][row]) + (16 if batch.meta["protocol"][row] == 6 else 6)
            out[row, at : at + 2] = batch.data[row, at : at + 2]

    monkeypatch.setattr(harness, "snat", skips_the_l4_checksum)
    with pytest.raises(MismatchError, match="portico"):
        harness.verify("snat", pool, results)


def test_run_fails_when_results_disagree(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def wrong_port(batch, out) -> None:  # type: ignore[no-untyped-def]
        snat(batch, out)
        out[: batch.count, batch.headroom + 34] ^= 1  # flip a bit of every source port

    monkeypatch.setattr(harness, "snat", wrong_port)
    monkeypatch.setattr(harness, "QUICK", TINY)
    assert bench_cli("--quick", "--workload", "snat") == 1
    assert "disagree" in capsys.readouterr().err


# ---------------------------------------------------------------- the read workload
@pytest.fixture
def capture(tmp_path: Path):  # type: ignore[no-untyped-def]
    pool = make_pool(bench_spec(100, flows=20))
    path = tmp_path / "pool.pcap"
    write_capture(pool, path)
    return pool, path


@pytest.mark.parametrize("nanosecond", [False, True])
def test_every_reader_reads_the_pool(tmp_path: Path, nanosecond: bool) -> None:
    pool = make_pool(bench_spec(100, flows=20))
    path = tmp_path / "pool.pcap"
    with CaptureWriter(path, format="pcap", nanosecond=nanosecond) as writer:
        writer.write(pool.batch)
    assert read_count(path, 32) == 100
    assert read_frames(path, 32) == pool.frames
    for name, peer in PEERS["read"].items():
        assert peer(path, 100) == pool.frames, name
        assert peer(path, 7) == pool.frames[:7], name
        assert peer(path, 1000) == pool.frames, name  # asking for more reads the file


def test_verify_read_passes_the_real_readers(capture) -> None:  # type: ignore[no-untyped-def]
    pool, path = capture
    counts = {"struct": 100, "dpkt": 40, "scapy": 10}
    results = {name: peer(path, counts[name]) for name, peer in PEERS["read"].items()}
    harness.verify("read", pool, results, capture=path, peer_packets=counts)


def test_verify_read_catches_portico_changing_or_losing_packets(
        capture, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    pool, path = capture
    results = {name: peer(path, 100) for name, peer in PEERS["read"].items()}

    def flips_a_byte(where, batch_size):  # type: ignore[no-untyped-def]
        frames = read_frames(where, batch_size)
        frames[50] = frames[50][:20] + bytes([frames[50][20] ^ 1]) + frames[50][21:]
        return frames

    monkeypatch.setattr(harness, "read_frames", flips_a_byte)
    with pytest.raises(MismatchError, match="packet 50, byte 20: portico"):
        harness.verify("read", pool, results, capture=path)

    monkeypatch.setattr(harness, "read_frames", lambda where, size: read_frames(where, size)[:-1])
    with pytest.raises(MismatchError, match="portico read 99 packets, not 100"):
        harness.verify("read", pool, results, capture=path)


def test_verify_read_catches_a_peer_reading_wrong(capture) -> None:  # type: ignore[no-untyped-def]
    pool, path = capture
    counts = {"struct": 100, "dpkt": 100, "scapy": 100}
    results = {name: peer(path, 100) for name, peer in PEERS["read"].items()}
    short = dict(results, dpkt=results["dpkt"][:90])
    with pytest.raises(MismatchError, match="dpkt read 90 packets, not 100"):
        harness.verify("read", pool, short, capture=path, peer_packets=counts)
    shifted = dict(results, scapy=results["scapy"][1:] + results["scapy"][:1])
    with pytest.raises(MismatchError, match="packet 0.*scapy"):
        harness.verify("read", pool, shifted, capture=path, peer_packets=counts)


def test_run_fails_when_a_timed_read_loses_packets(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(harness, "read_count", lambda where, size: read_count(where, size) - 1)
    monkeypatch.setattr(harness, "QUICK", TINY)
    assert bench_cli("--quick", "--workload", "read") == 1
    assert "portico counted 255 packets" in capsys.readouterr().err


# ---------------------------------------------------------------- the reference itself
def test_nat_port_is_the_same_in_python_and_numba() -> None:
    rng = np.random.default_rng(0)
    for src, dst, sport, dport, proto in zip(rng.integers(0, 1 << 32, 200),
                                             rng.integers(0, 1 << 32, 200),
                                             rng.integers(0, 1 << 16, 200),
                                             rng.integers(0, 1 << 16, 200),
                                             rng.choice([6, 17], 200), strict=True):
        args = (int(src), int(dst), int(sport), int(dport), int(proto))
        assert nat_port(*args) == nat_port_jit(*args)
        assert 1024 <= nat_port(*args) <= 65535


def test_struct_reference_is_right_by_scapy() -> None:
    """The reference Portico is held to: translated fields and checksums Scapy agrees with."""
    pool = make_pool(bench_spec(200, flows=50))
    translated = snat_struct(pool.frames)
    for before, after in zip(pool.frames, translated, strict=True):
        old, new = Ether(before), Ether(after)
        l4 = TCP if TCP in old else UDP
        assert new[IP].src == "203.0.113.1"
        assert int.from_bytes(bytes(new[IP])[12:16], "big") == NAT_ADDRESS
        ip_src = int.from_bytes(bytes(old[IP])[12:16], "big")
        ip_dst = int.from_bytes(bytes(old[IP])[16:20], "big")
        assert new[l4].sport == nat_port(ip_src, ip_dst, old[l4].sport, old[l4].dport,
                                         old[IP].proto)
        assert (new[IP].dst, new[l4].dport) == (old[IP].dst, old[l4].dport)
        fresh = Ether(after)
        del fresh[IP].chksum
        del fresh[l4].chksum
        rebuilt = Ether(bytes(fresh))
        assert (rebuilt[IP].chksum, rebuilt[l4].chksum) == (new[IP].chksum, new[l4].chksum)


def test_portico_snat_equals_struct_on_every_packet() -> None:
    pool = make_pool(bench_spec(500, flows=100))
    parse(pool.batch)
    out = np.zeros_like(pool.batch.data)
    snat(pool.batch, out)
    compare_frames(snat_struct(pool.frames), output_frames(pool.batch, out, pool.count),
                   expected_by="struct", actual_by="portico")
