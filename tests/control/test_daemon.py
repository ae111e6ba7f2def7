"""``portico daemon`` as a user runs it: a real process, real HTTP, curl, the CLI clients.

Acknowledged changes survive kill -9 of the daemon; two daemons on one etcd
each take up the other's changes; ``apply`` shows the difference first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.control.conftest import EXAMPLE, PORTICO, TOKEN, Running


def edited(path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_curl_and_the_clients(running: Running, tmp_path: Path) -> None:
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           f"{running.url}/api/v1/stats"], capture_output=True, text=True,
                          timeout=30)
    assert curl.stdout == "401"  # no token
    curl = subprocess.run(["curl", "-sf", "-H", f"Authorization: Bearer {TOKEN}",
                           f"{running.url}/api/v1/tenants/a"], capture_output=True, text=True,
                          timeout=30)
    assert curl.returncode == 0 and json.loads(curl.stdout)["id"] == 1

    shown = running.cli("show", "tenants.b.router.nat")
    assert shown.returncode == 0, shown.stderr
    assert "198.51.100.20/32" in shown.stdout and shown.stdout.startswith("# revision 1")

    changed = edited(tmp_path / "b.yaml", "pool: [198.51.100.20/32]", "pool: [198.51.100.21/32]")
    dry = running.cli("apply", str(changed), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "-          - 198.51.100.20/32" in dry.stdout or "198.51.100.21/32" in dry.stdout
    assert "desired/tenants/b" in dry.stdout and "tenants/a" not in dry.stdout
    assert running.get("/api/v1/config").json()["revision"] == 1  # dry: nothing applied
    done = running.cli("apply", str(changed))
    assert done.returncode == 0, done.stderr
    assert "# applied: revision 2 (tenants/b changed)" in done.stdout
    stats = running.get("/api/v1/stats").json()
    assert (stats["revision"], stats["generation"], stats["reconfigurations"]) == (2, 2, 1)

    broken = edited(tmp_path / "bad.yaml", "via: 203.0.113.1", "via: 203.0.114.1")
    refused = running.cli("apply", str(broken))
    assert refused.returncode == 1
    assert "provider.router.routes[0].via" in refused.stderr
    assert running.get("/api/v1/config").json()["revision"] == 2

    assert running.cli("stats").returncode == 0
    assert "ingress" in running.cli("stats").stdout
    assert running.cli("flows", "--json").stdout.strip() == "[]"  # no traffic yet
    metrics = running.get("/metrics").text
    assert "portico_revision 2" in metrics


def test_acknowledged_changes_survive_kill_9(tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'state.db'}"
    first = Running(store)
    try:
        for k in range(5):
            tenant = yaml.safe_load(EXAMPLE.read_text())["tenants"]["b"]
            tenant["router"]["firewall"]["egress"][0]["priority"] = 10 + k
            response = httpx.put(f"{first.url}/api/v1/tenants/b", json=tenant, timeout=10,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200
    finally:
        first.stop(signal.SIGKILL)
    again = Running(store)  # the seed config does not overwrite a store that has a state
    try:
        state = again.get("/api/v1/config").json()
        assert state["revision"] == 6
        assert state["config"]["tenants"]["b"]["router"]["firewall"]["egress"][0]["priority"] == 14
        assert again.get("/api/v1/stats").json()["generation"] == 1  # compiled once, at start
    finally:
        again.stop()


def test_two_daemons_on_one_etcd_follow_each_other(etcd: str) -> None:
    store = f"etcd://{etcd}/daemons-{os.getpid()}/"
    a, b = Running(store), Running(store)
    try:
        tenant = yaml.safe_load(EXAMPLE.read_text())["tenants"]["b"]
        tenant["router"]["nat"]["snat"][0]["pool"] = ["198.51.100.22/32"]
        response = httpx.put(f"{a.url}/api/v1/tenants/b", json=tenant, timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stats = b.get("/api/v1/stats").json()
            if stats["revision"] == 2:
                break
            time.sleep(0.05)
        assert stats["revision"] == 2 and stats["reconfigurations"] == 1
        pool = b.get("/api/v1/tenants/b").json()["router"]["nat"]["snat"][0]["pool"]
        assert pool == ["198.51.100.22/32"]
    finally:
        a.stop()
        b.stop()


def test_bad_daemon_usage_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PORTICO_TOKEN"}
    done = subprocess.run([*PORTICO, "daemon", str(EXAMPLE), "--store",
                           f"sqlite:{tmp_path / 's.db'}"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2 and "PORTICO_TOKEN" in done.stderr
    done = subprocess.run([*PORTICO, "daemon", str(EXAMPLE), "--store", "mysql://x"],
                          capture_output=True, text=True, timeout=60,
                          env={**env, "PORTICO_TOKEN": "x"})
    assert done.returncode == 1 and "mysql://x" in done.stderr
