"""``portico set OBJECT PATH=VALUE ...`` against a real daemon: a field changed, nothing else.

What a user checks: the difference printed (as ``apply`` prints it), the
object as the daemon then serves it, the revision; a path the model does not
have refused with its name (exit 2) before anything is read or written; a
refusal of the daemon or a writer who came in between reported (exit 1) with
nothing written.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from portico import cli
from portico.control import commands
from tests.control.conftest import TOKEN, Running


def revision(running: Running) -> int:
    return int(running.get("/api/v1/config").json()["revision"])


def test_one_field_of_a_port(running: Running) -> None:
    done = running.cli("set", "ports/uplink", "mtu=9000")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["--- current/ports/uplink",
                                            "+++ desired/ports/uplink"]
    assert "+mtu: 9000" in done.stdout.splitlines()
    assert done.stdout.rstrip().endswith("# applied: revision 2 (ports/uplink changed)")
    assert running.get("/api/v1/ports/uplink").json() == {"id": 0, "mtu": 9000}
    assert running.get("/api/v1/ports/access").json() == {"id": 1, "mtu": 1500}

    same = running.cli("set", "ports/uplink", "mtu=9000")
    assert same.returncode == 0 and same.stdout.strip() == "# no change"
    back = running.cli("set", "ports/uplink", "--unset", "mtu")
    assert back.returncode == 0, back.stderr
    assert "-mtu: 9000" in back.stdout.splitlines()
    assert running.get("/api/v1/ports/uplink").json() == {"id": 0}
    assert revision(running) == 3


def test_fields_deep_in_a_tenant(running: Running) -> None:
    done = running.cli("set", "tenants/a", "router.firewall.ingress[2].action=reject",
                       "router.firewall.containers.web[1]=10.0.0.6",
                       'router.nat.snat[0].pool=["198.51.100.11/32"]')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "-      action: deny" in lines and "+      action: reject" in lines
    tenant = running.get("/api/v1/tenants/a").json()
    assert tenant["router"]["firewall"]["ingress"][2]["action"] == "reject"
    assert tenant["router"]["firewall"]["containers"]["web"] == ["10.0.0.5", "10.0.0.6"]
    assert tenant["router"]["nat"]["snat"][0]["pool"] == ["198.51.100.11/32"]
    assert running.get("/api/v1/tenants/b").json()["router"]["nat"]["snat"][0]["pool"] == [
        "198.51.100.20/32"]
    dry = running.cli("set", "tenants/b", "router.firewall.egress[0].priority=5", "--dry-run")
    assert dry.returncode == 0 and "+      priority: 5" in dry.stdout.splitlines()
    assert revision(running) == 2  # the dry run wrote nothing


BAD = [
    (["tenants/a", "router.firewall.rules[2].action=deny"],
     "router.firewall has no field 'rules' (fields there: containers, ingress, egress)"),
    (["ports/uplink", "speed=10"], "ports/uplink has no field 'speed'"),
    (["tenants/a", "switches.lan.attach.vlan=5"], "switches.lan.attach is a list"),
    (["tenants/a", "router.firewall.ingress[7].action=deny"], "the list has 3 items"),
    (["tenants/a", "router..x=1"], "cannot read the path"),
    (["tenants/a", "router.routes"], "write PATH=VALUE"),
    (["tenants", "id=1"], "tenants/NAME, ports/NAME or provider"),
    (["tenants/a"], "nothing to set"),
]


def test_a_bad_path_is_refused_by_name(running: Running) -> None:
    for args, said in BAD:  # one daemon for all: each starts in seconds
        done = running.cli("set", *args)
        assert done.returncode == 2, (args, done.stdout)
        assert said in done.stderr, args
    assert revision(running) == 1


def test_refusals_write_nothing(running: Running) -> None:
    missing = running.cli("set", "tenants/zz", "id=5")
    assert missing.returncode == 1 and "tenants/zz: no such object (tenants: a, b)" in (
        missing.stderr)
    refused = running.cli("set", "tenants/a", "id=0")
    assert refused.returncode == 1 and "0 is outside 1..65535" in refused.stderr
    bad_mac = running.cli("set", "provider", "router.uplinks[0].mac=not-a-mac")
    assert bad_mac.returncode == 1 and "mac" in bad_mac.stderr
    assert revision(running) == 1


def test_a_writer_in_between_gets_a_conflict_not_a_lost_update(
        running: Running, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another client changes the port after ``set`` read it and before it writes: the
    daemon answers 409, ``set`` says so, and the other client's change stands."""
    real_call = commands._call

    def call_with_a_writer_in_between(args: Any, method: str, path: str, **kw: Any) -> Any:
        if method == "PUT":
            other = httpx.put(f"{running.url}/api/v1/ports/uplink", json={"id": 0, "mtu": 1400},
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert other.status_code == 200
        return real_call(args, method, path, **kw)

    monkeypatch.setattr(commands, "_call", call_with_a_writer_in_between)
    monkeypatch.setenv("PORTICO_TOKEN", TOKEN)
    monkeypatch.setenv("PORTICO_SERVER", running.url)
    assert cli.main(["set", "ports/uplink", "mtu=9000"]) == 1
    err = capsys.readouterr().err
    assert "changed since revision 1 was read; nothing was written" in err
    assert running.get("/api/v1/ports/uplink").json() == {"id": 0, "mtu": 1400}
    assert revision(running) == 2
