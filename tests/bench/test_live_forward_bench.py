"""live-forward: every contender forwards real frames between namespaces; the report's shape.

Tiny settings (half a second of generator per contender, one round, a few
pings) and no timed assertions: what is held here is that the C generator
builds and sends, that each contender (the kernel, nftables masquerade,
``portico up`` with and without NAT, its receive thread at either priority or
on the other core) is set up in its lab and delivers to the server namespace
from the source address it claims to make (the workload checks that itself),
that the labs are gone afterwards, and the keys the harness prints from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import harness, live_forward

live = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None
                             for tool in ("ip", "nft", "ethtool", "taskset", "gcc")),
    reason="needs root, ip, nft, ethtool, taskset and gcc (namespaces, AF_PACKET, the generator)")

TINY = live_forward.LiveForwardSettings(seconds=0.5, repeats=1, pings=10)


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


@live
def test_every_contender_delivers_and_the_report_has_its_shape() -> None:
    before = _namespaces()
    entries = live_forward.run_live_forward(TINY)
    assert [e["contender"] for e in entries] == ["generator", *live_forward.CONTENDERS]
    for e in entries:
        assert e["name"] == "live-forward"
        assert e["reason"] is None, e["reason"]
        assert e["offered_pps"] > 0 and e["repeats"] == 1 and len(e["trials"]) == 1
        trial = e["trials"][0]
        assert trial["sent"] > 0 and trial["seconds"] > 0
        assert e["setup"] and e["gateway_pinning"]
        if e["contender"] == "generator":  # the ceiling: nothing is forwarded
            assert e["delivered_pps"] is None and trial["arrived"] == 0
            continue
        assert trial["arrived"] > 0 and e["delivered_pps"] > 0
        assert e["x_kernel"] > 0 and e["loss"] is not None
    by_name = {e["contender"]: e for e in entries}
    assert by_name["kernel"]["x_kernel"] == 1.0
    # Ping-like round trips come back through every contender that routes them back:
    # without NAT the provider has no route to the tenant's inside addresses.
    for name in ("kernel", "nftables", "portico", "portico-nice", "portico-split"):
        assert by_name[name]["rtt_p50_ms"] > 0 and by_name[name]["trials"][0]["pings"] > 0
    assert by_name["nftables"]["trials"][0]["counters"]["conntrack_entries"] > 0
    datapath = by_name["portico"]["trials"][0]["counters"]["datapath"]
    assert datapath["misses"] >= TINY.flows  # every generated flow went through the stages
    lines = live_forward.format_live_forward(entries)
    assert lines[1].startswith("live-forward (issue 6): 60-byte UDP, 1024 flows")
    assert sum(line.startswith(("generator", *live_forward.CONTENDERS))
               for line in lines) == 1 + len(live_forward.CONTENDERS)
    # Every lab removed (other tests may be making namespaces of their own meanwhile).
    assert not {name for name in _namespaces() - before if name.startswith("lf")}


def test_not_root_is_a_clear_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    entries = live_forward.run_live_forward(TINY)
    assert entries == [{"name": "live-forward", "contender": None,
                        "reason": "needs root: network namespaces, veth pairs, AF_PACKET"}]
    assert live_forward.format_live_forward(entries) == [
        "", "live-forward: not measured: needs root: network namespaces, veth pairs, AF_PACKET"]


def test_no_gcc_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "gcc" else "/bin/true")
    with pytest.raises(live_forward.Unavailable, match="gcc not found"):
        live_forward.compile_generator(tmp_path)


def test_the_harness_knows_the_workload() -> None:
    assert "live-forward" in harness.ALL_WORKLOADS
    assert harness.QUICK.live_forward == live_forward.QUICK_LIVE_FORWARD
    assert harness.FULL.live_forward == live_forward.FULL_LIVE_FORWARD
