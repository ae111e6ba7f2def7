"""The REST API over a real daemon and a real SQLite store: what a client sees.

Writes are validated whole and refused with field paths; a stale writer gets
409; tokens are required and compared as secrets; a change made through the
API is in effect in the datapath when the call returns, even under traffic.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from portico.batch import Batch
from portico.classify.rules import Direction
from portico.control.api import make_app
from portico.control.daemon import Daemon
from portico.control.store import open_store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST_MAC, ROUTER_MAC = "02:00:00:00:0a:05", "02:00:00:00:0a:01"
SECOND = 1_000_000_000


def document() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    d = Daemon(open_store(f"sqlite:{tmp_path / 'state.db'}"), initial=document(), seed=1)
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> TestClient:
    return TestClient(make_app(daemon, TOKEN))


def test_a_token_is_required_and_checked(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = client.get("/api/v1/config", headers=headers)
        assert response.status_code == 401 and "WWW-Authenticate" in response.headers
    assert client.get("/api/v1/config", headers=AUTH).status_code == 200


def test_the_desired_state_round_trips(client: TestClient) -> None:
    state = client.get("/api/v1/config", headers=AUTH).json()
    assert state["revision"] == 1 and state["config"] == document()
    assert client.get("/api/v1/tenants/b", headers=AUTH).json() == document()["tenants"]["b"]
    assert client.get("/api/v1/tenants/zz", headers=AUTH).status_code == 404


def test_bad_input_is_refused_whole_with_the_field_path(client: TestClient,
                                                        daemon: Daemon) -> None:
    bad = document()
    bad["provider"]["router"]["routes"][0]["via"] = "203.0.114.1"
    bad["tenants"]["b"]["router"]["interfaces"][0]["mac"] = "not-a-mac"
    response = client.put("/api/v1/config", json=bad, headers=AUTH)
    assert response.status_code == 422
    paths = {p["path"] for p in response.json()["problems"]}
    assert "provider.router.routes[0].via" in paths
    assert "tenants.b.router.interfaces[0].mac" in paths
    assert client.get("/api/v1/config", headers=AUTH).json()["revision"] == 1  # nothing stored
    assert daemon.gateway.topology.generation == 1
    for junk in (b"{", b"[]", b'{"tenants": 5}'):
        response = client.put("/api/v1/config", content=junk, headers={
            **AUTH, "Content-Type": "application/json"})
        assert 400 <= response.status_code < 500


def test_a_change_takes_effect_and_a_stale_writer_is_refused(client: TestClient,
                                                            daemon: Daemon) -> None:
    tenant = document()["tenants"]["b"]
    tenant["router"]["firewall"]["egress"] = [
        {"id": "out", "priority": 10, "action": "deny", "src": "10.0.0.0/24"}]
    response = client.put("/api/v1/tenants/b", json=tenant, headers={**AUTH, "If-Match": '"1"'})
    assert response.status_code == 200, response.text
    assert response.json() == {"revision": 2, "changed": {"tenants/b": "changed"}}
    # A rules-only change is applied in place: same tables, the rule set updated.
    assert daemon.revision == 2 and daemon.gateway.topology.generation == 1
    egress = daemon.gateway.firewalls.tenants[2].rules[Direction.EGRESS].ordered()
    assert [rule.action.value for rule in egress] == ["deny"]
    out = bytes(Ether(src="02:00:00:00:0b:05", dst="02:00:00:00:0b:01") / Dot1Q(vlan=20)
                / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(sport=5000, dport=53))
    with daemon.lock:
        batch = Batch.from_packets([out], port=1)
        daemon.gateway.process(batch, SECOND)
    assert batch.meta["drop"][0] != 0 and batch.meta["out_port"][0] == -1  # denied now
    stale = client.put("/api/v1/tenants/b", json=tenant, headers={**AUTH, "If-Match": '"1"'})
    assert stale.status_code == 409
    assert client.delete("/api/v1/tenants/b", headers=AUTH).status_code == 200
    assert "b" not in client.get("/api/v1/config", headers=AUTH).json()["config"]["tenants"]
    assert client.delete("/api/v1/tenants/b", headers=AUTH).status_code == 404


def test_a_change_under_load_reaches_every_later_packet(daemon: Daemon) -> None:
    """Traffic runs while the default route moves: every packet processed after the
    API call returned leaves to the new next hop, none to the old one."""
    client = TestClient(make_app(daemon, TOKEN))
    hello = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ARP(
        op=1, hwsrc=HOST_MAC, psrc="10.0.0.5", pdst="10.0.0.1")
    frame = bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / Dot1Q(vlan=10)
                  / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(sport=5000, dport=53) / b"q")
    seen: list[tuple[int, bytes]] = []  # (batch number, destination MAC) of what left
    stop = threading.Event()
    applied_at = [-1]

    def traffic() -> None:
        batch_no = 0
        with daemon.lock:
            batch = Batch.from_packets([bytes(hello)], port=1)
            daemon.gateway.process(batch, SECOND)
        while not stop.is_set() and batch_no < 5000:
            batch = Batch.from_packets([frame] * 32, port=1)
            now = (2 + batch_no) * SECOND // 100
            batch.meta["timestamp"][:32] = now
            with daemon.lock:
                daemon.gateway.process(batch, now)
                number = batch_no
            seen.extend((number, batch.packet(i)[:6]) for i in range(32)
                        if batch.meta["out_port"][i] == 0)
            batch_no += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        moved = document()
        moved["provider"]["router"]["routes"][0]["via"] = "203.0.113.254"
        moved["provider"]["router"]["neighbours"].append(
            {"address": "203.0.113.254", "mac": "02:00:00:00:00:fd"})
        response = client.put("/api/v1/config", json=moved, headers=AUTH)
        assert response.status_code == 200, response.text
        applied_at[0] = seen[-1][0] if seen else -1
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=10)
    old, new = bytes.fromhex("0200000000fe"), bytes.fromhex("0200000000fd")
    # A batch that had left the lock before the change may still be on its way into
    # ``seen`` when the call returns: from two batches on, every packet is the new route's.
    after = [mac for number, mac in seen if number > applied_at[0] + 1]
    assert after and set(after) == {new}
    assert seen[0][1] == old  # and before, the old one's


def test_running_state_stats_flows_metrics(client: TestClient, daemon: Daemon) -> None:
    frame = bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / Dot1Q(vlan=10)
                  / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(sport=5000, dport=53) / b"q")
    hello = bytes(Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ARP(
        op=1, hwsrc=HOST_MAC, psrc="10.0.0.5", pdst="10.0.0.1"))
    with daemon.lock:
        for k, packets in enumerate(([hello], [frame], [frame])):
            batch = Batch.from_packets(packets, port=1)
            batch.meta["timestamp"][: batch.count] = (k + 1) * SECOND
            daemon.gateway.process(batch, (k + 1) * SECOND)
    stats = client.get("/api/v1/stats", headers=AUTH).json()
    assert stats["revision"] == 1 and stats["datapath"]["hits"] == 1
    flows = client.get("/api/v1/flows", params={"tenant": "a"}, headers=AUTH).json()
    assert len(flows) == 1 and flows[0]["packets"] == 2
    assert client.get("/api/v1/flows", params={"tenant": "b"}, headers=AUTH).json() == []
    text = client.get("/metrics", headers=AUTH).text
    assert "portico_flow_cache_hits_total 1" in text
    assert "portico_revision 1" in text


def test_the_openapi_document_describes_the_model(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/config", "/api/v1/tenants/{name}", "/api/v1/flows", "/metrics"} <= set(
        spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"Config", "Tenant", "Port", "Provider"} <= set(schemas)


def test_every_object_kind_is_listed_created_updated_and_deleted(client: TestClient) -> None:
    tenants = client.get("/api/v1/tenants", headers=AUTH)
    assert tenants.status_code == 200 and tenants.headers["ETag"] == '"1"'
    assert tenants.json() == {"revision": 1, "names": ["a", "b"],
                              "items": document()["tenants"]}
    assert client.get("/api/v1/ports", params={"objects": "false"}, headers=AUTH).json() == {
        "revision": 1, "names": ["access", "uplink"]}
    assert client.get("/api/v1/ports", headers=AUTH).json()["items"]["access"] == {
        "id": 1, "mtu": 1500}
    assert client.get("/api/v1/tenants").status_code == 401

    # A port: create, read, update, list, delete.
    made = client.put("/api/v1/ports/mgmt", json={"id": 7}, headers=AUTH)
    assert made.json() == {"revision": 2, "changed": {"ports/mgmt": "added"}}
    assert client.get("/api/v1/ports/mgmt", headers=AUTH).json() == {"id": 7}
    assert client.put("/api/v1/ports/mgmt", json={"id": 7, "mtu": 9000},
                      headers={**AUTH, "If-Match": '"2"'}).status_code == 200
    listed = client.get("/api/v1/ports", headers=AUTH).json()
    assert listed["revision"] == 3 and listed["items"]["mgmt"] == {"id": 7, "mtu": 9000}
    assert sorted(listed["names"]) == ["access", "mgmt", "uplink"]
    assert client.delete("/api/v1/ports/mgmt", headers=AUTH).status_code == 200
    assert "mgmt" not in client.get("/api/v1/ports", headers=AUTH).json()["names"]
    # A tenant the same way; a bad one is refused with its path.
    tenant = {"id": 3, "switches": {"lan": {"attach": [{"port": "access", "vlan": 30}]}}}
    assert client.put("/api/v1/tenants/c", json=tenant, headers=AUTH).status_code == 200
    assert client.get("/api/v1/tenants", headers=AUTH).json()["items"]["c"] == tenant
    clash = client.put("/api/v1/tenants/d", json={**tenant, "id": 4}, headers=AUTH)
    assert clash.status_code == 422
    assert [p["path"] for p in clash.json()["problems"]] == ["tenants.d.switches.lan.attach[0]"]
    assert client.delete("/api/v1/tenants/c", headers=AUTH).status_code == 200
    assert client.get("/api/v1/tenants", headers=AUTH).json()["names"] == ["a", "b"]
    # The provider is one object: read and replaced, never listed or deleted.
    provider = client.get("/api/v1/provider", headers=AUTH).json()
    assert provider == document()["provider"]
    assert client.put("/api/v1/provider", json=provider, headers=AUTH).status_code == 200


def test_objects_inside_objects_have_their_own_endpoints(client: TestClient,
                                                         daemon: Daemon) -> None:
    rules = "/api/v1/tenants/a/router/firewall/egress"
    got = client.get(f"{rules}/out", headers=AUTH)  # a list item by its id
    assert got.status_code == 200 and got.json()["action"] == "allow"
    assert client.get(f"{rules}/0", headers=AUTH).json() == got.json()  # or by its index
    # Create: a new id appends the rule, validated with the whole tenant, in effect at once.
    made = client.put(f"{rules}/no-dns", headers=AUTH,
                      json={"priority": 5, "action": "deny", "protocol": "udp", "dport": 53})
    assert made.status_code == 200, made.text
    assert made.json()["changed"] == {"tenants/a": "changed"}
    assert [r["id"] for r in client.get(rules, headers=AUTH).json()] == ["out", "no-dns"]
    egress = daemon.gateway.firewalls.tenants[1].rules[Direction.EGRESS]
    assert [rule.id for rule in egress.ordered()] == ["no-dns", "out"]
    # Update and delete, with If-Match on the revision read.
    revision = client.get("/api/v1/config", headers=AUTH).json()["revision"]
    changed = client.put(f"{rules}/no-dns/action", headers={**AUTH, "If-Match": f'"{revision}"'},
                         json="reject")
    assert changed.status_code == 200, changed.text
    stale = client.delete(f"{rules}/no-dns", headers={**AUTH, "If-Match": f'"{revision}"'})
    assert stale.status_code == 409
    assert client.delete(f"{rules}/no-dns", headers=AUTH).status_code == 200
    assert client.get(f"{rules}/no-dns", headers=AUTH).status_code == 404
    # A container is a mapping entry; the provider's parts work the same way.
    web = "/api/v1/tenants/a/router/firewall/containers/web"
    assert client.put(web, headers=AUTH, json=["10.0.0.6"]).status_code == 200
    assert client.get(web, headers=AUTH).json() == ["10.0.0.6"]
    route = client.get("/api/v1/provider/router/routes/0", headers=AUTH)
    assert route.status_code == 200 and route.json()["via"] == "203.0.113.1"


def test_a_part_the_model_has_not_is_404_and_a_bad_value_422_with_its_path(
        client: TestClient) -> None:
    missing = client.get("/api/v1/tenants/a/router/colour", headers=AUTH)
    assert missing.status_code == 404
    assert "has no field 'colour'" in missing.json()["detail"]
    assert client.get("/api/v1/tenants/a/router/routes/7", headers=AUTH).status_code == 404
    assert client.get("/api/v1/tenants/zz/router", headers=AUTH).status_code == 404
    bad = client.put("/api/v1/tenants/a/router/interfaces/0/mac", headers=AUTH, json="no-mac")
    assert bad.status_code == 422
    assert [p["path"] for p in bad.json()["problems"]] == ["tenants.a.router.interfaces[0].mac"]
    assert client.get("/api/v1/tenants/a/router", headers={}).status_code == 401
