"""The daemon's writes, in process: validated by the objects they change, yet refused
exactly as a whole-document validation would refuse them; committed against the state
they were validated on; other writers followed, the daemon's own commits not read back.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from portico.classify.rules import Direction
from portico.control import daemon as daemon_module
from portico.control.daemon import Daemon
from portico.control.model import ConfigError, Tenant, parse_config
from portico.control.store import Conflict, Store, encode, open_store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return loaded


def egress_priorities(daemon: Daemon, tenant: str) -> list[int]:
    rules = daemon.gateway.firewalls.tenants[daemon.config.tenants[tenant].id].rules
    return [rule.priority for rule in rules[Direction.EGRESS].ordered()]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'state.db'}"


@pytest.fixture
def daemon(url: str) -> Iterator[Daemon]:
    d = Daemon(open_store(url), initial=document(), seed=1)
    yield d
    d.stop()


@pytest.fixture
def other(url: str, daemon: Daemon) -> Iterator[Store]:
    """Another writer on the daemon's file (its own connection)."""
    store = open_store(url)
    yield store
    store.close()


def problems(error: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(error.value.problems)


# Refused as a whole-document validation refuses, with the same paths.


@pytest.mark.parametrize("edit", [
    # A reference from the changed object to another one.
    lambda d: d["tenants"]["b"]["switches"]["lan"]["attach"][0].update(port="nope"),
    # A place another object holds already.
    lambda d: d["tenants"]["b"]["switches"]["lan"]["attach"][0].update(vlan=10),
    # A tenant id another tenant holds.
    lambda d: d["tenants"]["b"].update(id=1),
    # A NAT address another tenant claims.
    lambda d: d["tenants"]["b"]["router"]["nat"]["snat"][0].update(pool=["198.51.100.10/32"]),
    # Within the object: a field, and a check of the object's own.
    lambda d: d["tenants"]["b"]["router"]["interfaces"][0].update(mac="not-a-mac"),
    lambda d: d["tenants"]["b"]["router"]["firewall"]["egress"][0].update(dst="container:no"),
])
def test_a_bad_change_is_refused_with_the_paths_of_a_whole_validation(
        daemon: Daemon, edit: Any) -> None:
    bad = document()
    edit(bad)
    with pytest.raises(ConfigError) as whole:
        parse_config(bad)
    for write in (lambda: daemon.apply(bad),
                  lambda: daemon.put_object("tenants/b", bad["tenants"]["b"])):
        with pytest.raises(ConfigError) as refused:
            write()
        assert refused.value.problems == whole.value.problems
    assert daemon.revision == 1 and daemon.store.read().revision == 1  # nothing stored
    assert daemon.gateway.topology.generation == 1


def test_a_delete_that_leaves_a_dangling_reference_is_refused(daemon: Daemon) -> None:
    with pytest.raises(ConfigError) as refused:
        daemon.delete_object("ports/access")
    assert problems(refused)["tenants.a.switches.lan.attach[0].port"] == "unknown port 'access'"
    with pytest.raises(KeyError):
        daemon.delete_object("ports/nothing")
    assert daemon.store.read().revision == 1


def test_a_value_equal_by_eq_but_of_another_type_is_not_taken_for_unchanged(
        daemon: Daemon) -> None:
    # 1500.0 == 1500 and True == 1: a comparison by == would see no change and store
    # nothing; the daemon compares texts, so the value is validated, and refused.
    for path, bad in ((("ports", "access", "mtu"), 1500.0),
                      (("tenants", "a", "switches", "lan", "mac_learning"), 1)):
        changed = document()
        place = changed
        for part in path[:-1]:
            place = place[part]
        place[path[-1]] = bad
        with pytest.raises(ConfigError) as refused:
            daemon.apply(changed)
        assert ".".join(path) in problems(refused)
    # The rule memo tells types apart too: a rule parsed with log true is no memo for 1.
    tenant = document()["tenants"]["b"]
    tenant["router"]["firewall"]["egress"][0]["log"] = True
    daemon.put_object("tenants/b", tenant)
    tenant["router"]["firewall"]["egress"][0]["log"] = 1
    with pytest.raises(ConfigError) as refused:
        daemon.put_object("tenants/b", tenant)
    assert "tenants.b.router.firewall.egress[0].log" in problems(refused)


def test_a_document_changed_in_place_after_it_was_applied_is_seen(daemon: Daemon) -> None:
    # The daemon keeps the objects it was given; what was committed is their text then.
    doc = document()
    daemon.apply(doc)
    doc["tenants"]["b"]["router"]["firewall"]["egress"][0]["priority"] = 42
    applied = daemon.apply(doc)
    assert applied.changed == {"tenants/b": "changed"}
    assert egress_priorities(daemon, "b") == [42]
    stored = daemon.store.read().objects["tenants/b"]
    assert stored["router"]["firewall"]["egress"][0]["priority"] == 42
    assert daemon.apply(doc).changed == {}  # and now it is what the store holds
    doc["tenants"]["b"]["router"]["firewall"]["egress"][0]["priority"] = 43
    assert daemon.apply(doc).changed == {"tenants/b": "changed"}  # the object held, changed
    assert egress_priorities(daemon, "b") == [43]


def test_an_unchanged_document_changes_nothing_and_a_rule_change_is_in_place(
        daemon: Daemon) -> None:
    assert daemon.apply(document()).changed == {}
    assert daemon.revision == 1
    doc = document()
    doc["tenants"]["b"]["router"]["firewall"]["egress"][0]["priority"] = 7
    assert daemon.apply(doc).changed == {"tenants/b": "changed"}
    assert daemon.gateway.topology.generation == 1 and egress_priorities(daemon, "b") == [7]
    doc["tenants"]["b"]["router"]["nat"]["snat"][0]["pool"] = ["198.51.100.21/32"]
    daemon.apply(doc)
    assert daemon.gateway.topology.generation == 2  # the pool: a recompile


def test_the_api_model_is_taken_as_validated(daemon: Daemon,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = document()["tenants"]["b"]
    tenant["router"]["firewall"]["egress"][0]["priority"] = 9
    parsed = Tenant.model_validate(tenant)

    def refuse(*_: Any) -> Any:
        raise AssertionError("validated twice")

    monkeypatch.setattr(daemon_module, "parse_part", refuse)
    daemon.put_object("tenants/b", tenant, parsed=parsed)
    assert egress_priorities(daemon, "b") == [9]


# Other writers.


def test_a_write_is_validated_on_what_another_writer_committed(daemon: Daemon,
                                                                other: Store) -> None:
    # No watcher: the daemon learns of the other writer's port only when its own commit
    # is refused (its state is behind) or its validation fails on what it held.
    other.commit({"ports/extra": {"id": 7}})
    tenant = document()["tenants"]["b"]
    tenant["switches"]["lan"]["attach"].append({"port": "extra"})
    applied = daemon.put_object("tenants/b", tenant)
    assert applied.revision == 3 and daemon.revision == 3
    assert "ports/extra" in daemon.objects and daemon.config.ports["extra"].id == 7
    other.commit({"ports/more": {"id": 8}})
    tenant["router"]["firewall"]["egress"][0]["priority"] = 12
    assert daemon.put_object("tenants/b", tenant).revision == 5  # a lost race: again on top
    assert daemon.config.ports["more"].id == 8 and egress_priorities(daemon, "b") == [12]


def test_expect_is_checked_against_the_store_not_only_what_is_held(daemon: Daemon,
                                                                   other: Store) -> None:
    other.commit({"ports/extra": {"id": 7}})  # revision 2; the daemon holds 1
    tenant = document()["tenants"]["b"]
    with pytest.raises(Conflict) as stale:
        daemon.put_object("tenants/b", tenant, expect=1)
    assert (stale.value.expected, stale.value.current) == (1, 2)
    assert daemon.put_object("tenants/b", tenant, expect=2).revision == 3


def test_the_watcher_skips_its_own_commits_and_follows_another_process(
        daemon: Daemon, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real_read = daemon.store.read

    def counted() -> Any:
        reads.append(time.monotonic())
        return real_read()

    monkeypatch.setattr(daemon.store, "read", counted)
    daemon.start_watching(interval=0.05)
    tenant = document()["tenants"]["b"]
    for k in range(5):
        tenant["router"]["firewall"]["egress"][0]["priority"] = 20 + k
        daemon.put_object("tenants/b", tenant)
    time.sleep(0.3)  # time for the watcher to wake on each of them
    assert daemon.revision == 6 and reads == []  # its own: in effect, never read back

    tenant["router"]["firewall"]["egress"][0]["priority"] = 99
    child = subprocess.run([sys.executable, "-c", (
        "import json, sys\n"
        "from portico.control.store import open_store\n"
        "print(open_store(sys.argv[1]).commit({'tenants/b': json.loads(sys.argv[2])}))\n"
    ), url, json.dumps(tenant)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and child.stdout.strip() == "7", child.stderr
    deadline = time.monotonic() + 5
    while daemon.revision != 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert daemon.revision == 7 and len(reads) == 1
    assert egress_priorities(daemon, "b") == [99]
    assert daemon.gateway.topology.generation == 1  # rules only: in place


def test_a_state_another_writer_stored_that_is_refused_is_not_run(daemon: Daemon,
                                                                   other: Store) -> None:
    other.commit({"tenants/c": {"id": 1}})  # tenant a's id: the store holds a bad state
    assert daemon.sync() is False
    assert daemon.revision == 2 and "c" not in daemon.config.tenants
    tenant = document()["tenants"]["b"]
    tenant["router"]["firewall"]["egress"][0]["priority"] = 5
    with pytest.raises(ConfigError) as refused:  # validated whole: c is still wrong
        daemon.put_object("tenants/b", tenant)
    assert "tenants.c.id" in problems(refused)
    daemon.put_object("tenants/c", {"id": 3})  # the fix is a write like any other
    assert daemon.config.tenants["c"].id == 3 and daemon.revision == 3
    daemon.put_object("tenants/b", tenant)
    assert egress_priorities(daemon, "b") == [5]
    other.commit({"burst/x": {"n": 1}})  # a key of no config section
    assert daemon.sync() is False and daemon.revision == 5


# The text a tenant is stored as.


def test_a_tenant_is_stored_as_json_dumps_writes_it() -> None:
    doc = document()
    b = doc["tenants"]["b"]
    firewall = b["router"]["firewall"]
    firewall["egress"] = [
        {"id": f"r{i}", "priority": i, "action": "allow", "dst": f"192.0.2.{i}/32",
         "protocol": "udp", "dport": 53 + i} for i in range(80)]
    firewall["egress"].append({"action": "deny", "priority": 900, "id": "ordered"})
    firewall["ingress"] = [{"id": "in", "priority": 1, "action": "allow", "log": True}]
    b["notes"] = "\x00portico-rules:egress\x00"  # what a hole looks like, as data
    config = parse_config({**doc, "tenants": {**doc["tenants"], "b": {
        k: v for k, v in b.items() if k != "notes"}}})
    assert len(firewall["egress"]) >= daemon_module.SPLICE_RULES  # the spliced way
    for value in (b, {k: v for k, v in b.items() if k != "notes"}):
        for _ in range(2):  # the second time, every rule's text is known
            text = daemon_module._encode_part("tenants/b", value, config).text
            assert text == encode("tenants/b", value).text
            assert json.loads(text) == value
    # Equal by ==, written with another type: not the same text, not the same rule.
    again = copy.deepcopy(b)
    again["router"]["firewall"]["ingress"][0]["log"] = 1
    assert encode("tenants/b", again).text != encode("tenants/b", b).text
