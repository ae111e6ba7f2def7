"""portico bench: the harness runs, reports the documented shape, and refuses wrong results.

No timing is asserted: figures depend on the machine. What is asserted is that
a run produces every number it promises and that the byte-for-byte check
between Portico's SNAT and the ``struct`` peer catches a kernel that is wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from bench import harness
from bench.peers import PEERS, snat_struct
from bench.workloads import (
    NAT_ADDRESS,
    MismatchError,
    bench_spec,
    compare_frames,
    make_pool,
    nat_port,
    nat_port_jit,
    output_frames,
    snat,
)
from portico.datapath.stages.parse import parse

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


def test_run_reports_every_workload_and_batch() -> None:
    report = harness.run_bench(TINY, ("parse", "snat"))
    assert {"cpu", "cores", "python", "numpy", "numba", "pinned_cpu",
            "numba_first_call_s"} <= set(report["machine"])
    assert report["run"]["verified"] is True
    seen = {(e["name"], e["batch"]) for e in report["workloads"]}
    assert seen == {("parse", 32), ("parse", 256), ("snat", 32), ("snat", 256)}
    for entry in report["workloads"]:
        assert entry["packets"] == 256
        assert entry["pps"] > 0
        assert set(entry["peers"]) == {"scapy", "dpkt", "struct"}
        assert all(value > 0 for value in entry["peers"].values())
        assert entry["peer_packets"] == {"struct": 256, "dpkt": 64, "scapy": 16}
    assert "parse" in harness.format_table(report)


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
