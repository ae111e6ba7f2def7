"""config-apply and api-writes: each runs on the real daemon, checks itself, and reports its shape.

Tiny sizes and no timing assertions: what is held here is that the workloads
run end to end (a daemon on SQLite, the API over real HTTP, etcd when it is
installed), that their checks run and fail on a change not in effect, and the
keys the harness prints from.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from typing import Any

import pytest

from bench import control, harness
from bench.workloads import MismatchError

APPLY = control.ApplySettings(rules=(200,), changes=2)
WRITES = control.WritesSettings(seconds=30.0, clients=(1, 3), warmup=2, max_writes=6)


def test_config_apply_times_and_checks_every_kind_of_change() -> None:
    entries = control.run_config_apply(APPLY)
    assert [(e["name"], e["rules"], e["change"]) for e in entries] == [
        ("config-apply", 200, "rule"), ("config-apply", 200, "container"),
        ("config-apply", 200, "recompile")]
    by_kind = {e["change"]: e for e in entries}
    assert {kind: e["path"] for kind, e in by_kind.items()} == {
        "rule": "in place", "container": "in place", "recompile": "recompile"}
    # Per change: rule 1 before + 2 after, container 1 + 1, recompile 1 after.
    assert {kind: e["checked_packets"] for kind, e in by_kind.items()} == {
        "rule": 6, "container": 4, "recompile": 2}
    for e in entries:
        assert e["changes"] == 2 and e["store"] == "sqlite"
        assert 0 < e["min_ms"] <= e["median_ms"] <= e["max_ms"]
    lines = control.format_control(entries)
    assert any(line.startswith("config-apply: Daemon.apply") for line in lines)
    (target,) = control.control_target_lines(entries)
    assert target.startswith("config-apply <= 50 ms median from a change to its effect with "
                             "10,000 rules (200 here): ")


def test_the_document_holds_the_rules_asked_for() -> None:
    from portico.control.model import parse_config

    document = control.make_document(1_000)
    egress = document["tenants"]["a"]["router"]["firewall"]["egress"]
    assert len(egress) == 1_000 and len({rule["id"] for rule in egress}) == 1_000
    assert egress[-1]["id"] == "out" and egress[-1]["priority"] > egress[-2]["priority"]
    parse_config(document)
    before = copy.deepcopy(document)
    for change in control.CHANGES.values():  # every change is a valid config too
        parse_config(change(document, 3))
    assert document == before  # changes copy what they change


def test_a_change_not_in_effect_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rule "change" leaves the config as it was: the probe packet still passes.
    monkeypatch.setitem(control.CHANGES, "rule", lambda document, k: document)
    with pytest.raises(MismatchError, match="after rule change 0: .* passed"):
        control.run_config_apply(control.ApplySettings(rules=(200,), changes=1,
                                                       kinds=("rule",)))


def test_a_recompile_not_done_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from portico.datapath.gateway import Gateway

    monkeypatch.setattr(Gateway, "reconfigure", lambda self, config: 0)
    with pytest.raises(MismatchError, match="not the new pool address 198.51.100.30"):
        control.run_config_apply(control.ApplySettings(rules=(200,), changes=1,
                                                       kinds=("recompile",)))


def _check_writes(entries: list[dict[str, Any]], store: str) -> None:
    assert [e["clients"] for e in entries] == [1, 3]
    for entry in entries:
        assert entry["name"] == "api-writes" and entry["store"] == store
        assert entry["checked"] is True and entry["reason"] is None
        # max_writes bounds the timed writes of a run; each connection warms up first.
        assert entry["writes"] == 6 and entry["warmup_writes"] == 2 * entry["clients"]
        assert entry["final_revision"] == (entry["initial_revision"] + entry["writes"]
                                           + entry["warmup_writes"])
        assert entry["writes_per_s"] > 0 and 0 < entry["p50_ms"] <= entry["p99_ms"]
    # One daemon per store: the second run starts where the first ended.
    assert entries[1]["initial_revision"] == entries[0]["final_revision"]


def test_api_writes_over_http_on_sqlite_and_etcd() -> None:
    entries = control.run_api_writes(WRITES)
    by_store: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_store.setdefault(e["store"], []).append(e)
    assert set(by_store) == {"sqlite", "etcd"}
    _check_writes(by_store["sqlite"], "sqlite")
    if shutil.which("etcd") is None:
        assert by_store["etcd"][0]["writes_per_s"] is None
        assert "not installed" in by_store["etcd"][0]["reason"]
    else:
        _check_writes(by_store["etcd"], "etcd")
        assert all(e["etcd_version"] for e in by_store["etcd"])
    lines = control.format_control(entries)
    assert any(line.startswith("api-writes: PUT /api/v1/tenants/b over HTTP") for line in lines)
    assert any(line.startswith("checked: every answer 200") for line in lines)
    (target,) = control.control_target_lines(entries)
    assert target.startswith("api-writes >= 1,000/s on SQLite: ")
    assert "on etcd beside it: " in target


def test_api_writes_answers_not_one_revision_each_fail_the_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    drive = control.drive

    def lying(*args: Any, **kwargs: Any) -> dict[str, Any]:
        said = drive(*args, **kwargs)
        said["answers"][-1][1] = said["answers"][0][1]  # two writes answered one revision
        return said

    monkeypatch.setattr(control, "drive", lying)
    with pytest.raises(MismatchError, match="not each of"):
        control.run_api_writes(control.WritesSettings(stores=("sqlite",), clients=(2,),
                                                      warmup=1, max_writes=4))


def test_api_writes_without_etcd_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control.shutil, "which", lambda name: None)
    (entry,) = control.run_api_writes(control.WritesSettings(stores=("etcd",)))
    assert entry["writes_per_s"] is None and "not installed" in entry["reason"]
    assert any("not measured: etcd is not installed" in line
               for line in control.format_control([entry]))
    (target,) = control.control_target_lines([entry])
    assert target == ("api-writes >= 1,000/s on SQLite: not measured; on etcd beside it: "
                      "not measured (etcd is not installed (apt-get install etcd-server))")


def test_target_lines() -> None:
    entries = [
        {"name": "config-apply", "rules": 1_000, "change": "rule", "median_ms": 12.0},
        {"name": "config-apply", "rules": 10_000, "change": "rule", "median_ms": 42.5},
        {"name": "config-apply", "rules": 10_000, "change": "recompile", "median_ms": 400.0},
        {"name": "api-writes", "store": "sqlite", "writes_per_s": 1234.0},
        {"name": "api-writes", "store": "etcd", "writes_per_s": 140.0},
    ]
    assert control.control_target_lines(entries) == [
        "config-apply <= 50 ms median from a change to its effect with 10,000 rules: "
        "42.5 ms, met",
        "api-writes >= 1,000/s on SQLite: 1,234/s, met; on etcd beside it: 140/s"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert control.percentile(values, 0.5) == 50.0
    assert control.percentile(values, 0.99) == 99.0
    assert control.percentile([3.0], 0.99) == 3.0 and control.percentile([], 0.5) == 0.0


def test_the_harness_knows_the_workloads() -> None:
    for name in ("config-apply", "api-writes"):
        assert name in harness.ALL_WORKLOADS
    settings = harness.settings_from_args(argparse.Namespace(quick=True, packets=None,
                                                             batch=None))
    assert settings.config_apply == control.QUICK_APPLY
    assert settings.api_writes == control.QUICK_WRITES
    full = harness.settings_from_args(argparse.Namespace(quick=False, packets=None, batch=[64]))
    assert full.config_apply.rules == (1_000, 10_000) and full.config_apply.changes == 20
    assert full.api_writes == control.FULL_WRITES
