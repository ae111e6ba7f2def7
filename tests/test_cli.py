"""The ``portico`` command as a user runs it: real processes, real files.

``portico parse`` is checked against tshark's own dissection of the same
capture (an independent decoder), not against Portico's parser.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

PORTICO = [sys.executable, "-m", "portico"]


def portico(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORTICO, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "mixed.pcapng"
    done = portico("gen", str(path), "--packets", "3000", "--flows", "200", "--seed", "5",
                   "--ipv6", "0.3", "--vlans", "2", "--ports", "2", "--sizes", "imix",
                   "--mix", "tcp=0.5,udp=0.4,icmp=0.1", "--quiet")
    assert done.returncode == 0, done.stderr
    return path


def test_version() -> None:
    done = portico("--version")
    assert done.returncode == 0 and done.stdout.startswith("portico ")


def test_help_teaches() -> None:
    done = portico("--help")
    assert done.returncode == 0
    for word in ("gen", "parse", "bench", "examples:", "exit codes"):
        assert word in done.stdout


def test_parse_counts_agree_with_tshark(capture: Path) -> None:
    done = portico("parse", str(capture), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    shark = subprocess.run(
        ["tshark", "-r", str(capture), "-T", "fields", "-e", "frame.protocols",
         "-e", "frame.interface_name"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    rows = [line.split("\t") for line in shark.stdout.splitlines()]
    protocols = Counter(p for stack, _ in rows for p in set(stack.split(":")))
    interfaces = Counter(name for _, name in rows)
    assert summary["packets"] == len(rows) == 3000
    assert summary["dropped"] == 0 and summary["drops"] == {}
    assert summary["interfaces"] == dict(interfaces)
    layers = summary["layers"]
    assert layers["ethernet"] == protocols["eth"]
    assert layers["vlan"] == protocols["vlan"]
    for ours, theirs in (("ipv4", "ip"), ("ipv6", "ipv6"), ("tcp", "tcp"), ("udp", "udp"),
                         ("icmp", "icmp"), ("icmpv6", "icmpv6")):
        assert layers.get(ours, 0) == protocols[theirs], ours


def test_parse_table_output(capture: Path) -> None:
    done = portico("parse", str(capture))
    assert done.returncode == 0
    assert "3000 packets" in done.stdout and "drop reason" in done.stdout
    assert done.stderr == ""  # no progress bar when not on a terminal


def test_corrupt_capture_reports_what_it_read_then_fails(capture: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(capture.read_bytes()[:20000])
    done = portico("parse", str(cut), "--json")
    assert done.returncode == 1
    partial = json.loads(done.stdout)
    assert 0 < partial["packets"] < 3000
    assert str(cut) in done.stderr and "truncated" in done.stderr and "block" in done.stderr


def test_missing_file_and_bad_usage() -> None:
    missing = portico("parse", "/nonexistent/x.pcap")
    assert missing.returncode == 1 and "No such file" in missing.stderr
    bad = portico("parse", "x.pcap", "--batch", "0")
    assert bad.returncode == 2 and "--batch" in bad.stderr
    nothing = portico()
    assert nothing.returncode == 2
