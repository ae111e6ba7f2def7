"""``portico run`` as a user runs it: the two-tenant example over generated traffic.

The traffic comes from ``examples/two_tenants_traffic.py`` (what both tenants
and the Internet would send); what leaves is decoded by tshark, an independent
decoder, which also verifies every IP, TCP, UDP and ICMP checksum.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "two-tenants.yaml"
PORTICO = [sys.executable, "-m", "portico"]


def portico(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORTICO, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "two-tenants.pcapng"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "two_tenants_traffic.py"),
                           str(path), "--flows", "150", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def report(traffic: Path) -> tuple[dict, Path]:  # type: ignore[type-arg]
    out = traffic.with_name("out.pcapng")
    done = portico("run", str(CONFIG), "--in", str(traffic), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), out


def tshark(path: Path, *fields: str, display: str = "") -> list[list[str]]:
    command = ["tshark", "-r", str(path), "-o", "ip.check_checksum:TRUE",
               "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
               "-T", "fields", "-E", "separator=|"]
    if display:
        command += ["-Y", display]
    for field in fields:
        command += ["-e", field]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [line.split("|") for line in done.stdout.splitlines()]


def test_what_leaves_each_port_as_tshark_sees_it(report: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    summary, out = report
    rows = tshark(out, "frame.interface_name", "vlan.id", "ip.src", "ip.dst",
                  "ip.checksum.status", "tcp.checksum.status", "udp.checksum.status",
                  "icmp.checksum.status")
    assert len(rows) == summary["packets"]["out"] > 0
    per_port = Counter(r[0] for r in rows)
    assert dict(per_port) == summary["ports"]
    for name, vlan, src, dst, *statuses in rows:
        # 1: good (an ICMP error repeats the fields for the packet it quotes)
        assert all(v in ("", "1") for s in statuses for v in s.split(",")), (name, src, statuses)
        if name == "uplink":
            # Leaving for the Internet: untagged, from a tenant's public address (or the
            # provider's own), never from a tenant's inside one.
            assert vlan == "" and not src.startswith("10.")
        else:
            assert name == "access" and vlan in ("10", "20")
            assert not src or dst.startswith("10.0.0.") or src.startswith("10.0.0.")  # or ARP


def test_tenants_leave_with_their_own_public_address(report: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    _, out = report
    rows = tshark(out, "ip.src", display='frame.interface_name == "uplink" && !arp')
    sources = Counter(r[0] for r in rows)
    assert set(sources) <= {"198.51.100.10", "198.51.100.20", "203.0.113.2"}
    assert sources["198.51.100.10"] > 0 and sources["198.51.100.20"] > 0
    # Replies entering tenant b never carry tenant a's VLAN, and the other way round.
    inbound = tshark(out, "vlan.id", "ip.dst", display='frame.interface_name == "access"')
    assert {vlan for vlan, _ in inbound} <= {"10", "20"}


def test_the_summary_counts_the_refused_traffic(report: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    summary, _ = report
    # The generator's probes: b's public address (port 22), a's closed port 23 and a
    # segment to a port no binding holds; all refused by NAT, by name.
    assert summary["drops"] == {"no-binding": 3}
    assert summary["packets"]["in"] == summary["packets"]["out"] + summary["packets"]["dropped"]
    assert summary["stages"]["nat-in"]["drops"] == {"no-binding": 3}
    assert summary["datapath"]["hits"] > 0
    assert summary["nat"]["preserved"] == summary["nat"]["allocations"] > 0


def test_no_cache_gives_the_same_bytes(traffic: Path, report: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    _, cached = report
    plain = traffic.with_name("plain.pcapng")
    done = portico("run", str(CONFIG), "--in", str(traffic), "--out", str(plain), "--no-cache",
                   "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["datapath"]["hits"] == 0
    fields = ("frame.interface_name", "frame.len", "frame.time_epoch", "eth.dst", "ip.src",
              "ip.dst", "tcp.srcport", "udp.srcport", "ip.ttl")
    assert tshark(plain, *fields) == tshark(cached, *fields)


def test_trace_follows_a_forwarded_connection(traffic: Path, tmp_path: Path) -> None:
    done = portico("run", str(CONFIG), "--in", str(traffic), "--out", str(tmp_path / "o.pcapng"),
                   "--trace", "1", "--trace-filter", "dst=198.51.100.10,dport=8080")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "> 198.51.100.10:8080 [S]" in text  # the packet as received
    for step in ("route -> nat-in", "nat-in -> firewall-in", "firewall-in -> deliver",
                 "deliver -> output", "=> out port 1"):
        assert step in text


def test_mistakes_are_named(traffic: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o.pcapng")
    bad = portico("run", str(CONFIG), "--in", str(traffic), "--out", out,
                  "--trace-filter", "colour=red")
    assert bad.returncode == 2 and "--trace-filter" in bad.stderr and "colour" in bad.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(CONFIG.read_text().replace("via: 203.0.113.1", "via: 203.0.114.1"))
    bad = portico("run", str(broken), "--in", str(traffic), "--out", out)
    assert bad.returncode == 1 and "provider.router.routes[0].via" in bad.stderr
    pcap = tmp_path / "one.pcap"
    subprocess.run(["tshark", "-r", str(traffic), "-F", "pcap", "-w", str(pcap), "-c", "20"],
                   check=True, capture_output=True, timeout=60)
    bad = portico("run", str(CONFIG), "--in", str(pcap), "--out", out)
    assert bad.returncode == 2 and "--in-port" in bad.stderr
    ok = portico("run", str(CONFIG), "--in", str(pcap), "--out", out, "--in-port", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["packets"]["in"] == 20
