"""``portico trace`` / ``POST /api/v1/trace``: one packet through every stage, as a user asks.

The answers are checked the way a user would check them: the stages in the
order the pipeline runs them, the verdict, and the frame that would leave,
decoded by Scapy (not by Portico). A trace must leave the running gateway as
it was: same counters, same flows, no NAT binding, no packet held; so the same
trace twice gives the same answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from portico.batch import Batch
from portico.control.api import make_app
from portico.control.daemon import Daemon
from portico.control.store import open_store
from tests.control.conftest import EXAMPLE, Running

TOKEN = "trace-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST_MAC, ROUTER_A = "02:00:00:00:0a:05", "02:00:00:00:0a:01"
UPLINK_MAC, NEXT_HOP_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
SECOND = 1_000_000_000

OUTBOUND = [("ingress", "switch"), ("switch", "route"), ("route", "firewall-out"),
            ("firewall-out", "nat-out"), ("nat-out", "provider-route"),
            ("provider-route", "output"), ("output", "done")]
INBOUND = [("ingress", "switch"), ("switch", "route"), ("route", "nat-in"),
           ("nat-in", "firewall-in"), ("firewall-in", "deliver"), ("deliver", "done")]


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    d = Daemon(open_store(f"sqlite:{tmp_path / 'state.db'}"),
               initial=yaml.safe_load(EXAMPLE.read_text()), seed=1)
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> TestClient:
    return TestClient(make_app(daemon, TOKEN))


def feed(daemon: Daemon, frames: list[bytes], port: int, second: int) -> None:
    """Real traffic into the running gateway, as the replay thread sends it."""
    with daemon.lock:
        batch = Batch.from_packets(frames, port=port)
        batch.meta["timestamp"][: batch.count] = second * SECOND
        daemon.gateway.process(batch, second * SECOND)


def host_says_hello(daemon: Daemon) -> None:
    """10.0.0.5 on a.lan asks for its gateway: the gateway learns its MAC."""
    hello = Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ARP(
        op=1, hwsrc=HOST_MAC, psrc="10.0.0.5", pdst="10.0.0.1")
    feed(daemon, [bytes(hello)], port=1, second=1)


def trace(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/trace", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def steps(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["stage"], s["decision"]) for s in report["stages"]]


def running_state(client: TestClient, daemon: Daemon) -> tuple[Any, ...]:
    stats = client.get("/api/v1/stats", headers=AUTH).json()
    flows = client.get("/api/v1/flows", headers=AUTH).json()
    return stats, flows, len(daemon.gateway.pending)


def test_outbound_udp_every_stage_then_snat_and_nothing_changes(client: TestClient,
                                                                daemon: Daemon) -> None:
    host_says_hello(daemon)
    frame = bytes(Ether(src=HOST_MAC, dst=ROUTER_A) / Dot1Q(vlan=10)
                  / IP(src="10.0.0.5", dst="8.8.8.8") / UDP(sport=5000, dport=53) / b"q")
    feed(daemon, [frame], port=1, second=2)  # one flow cached, one NAT binding
    before = running_state(client, daemon)

    report = trace(client, port="access", vlan=10, src="10.0.0.5", dst="8.8.8.8",
                   protocol="udp", sport=5001, dport=53)
    assert steps(report) == OUTBOUND
    assert report["verdict"] == {"action": "output", "port": "uplink", "port_id": 0}
    leaving = Ether(bytes.fromhex(report["output"]["hex"]))
    assert (leaving.src, leaving.dst) == (UPLINK_MAC, NEXT_HOP_MAC)
    assert Dot1Q not in leaving  # the uplink is untagged
    assert (leaving[IP].src, leaving[IP].dst, leaving[IP].ttl) == ("198.51.100.10", "8.8.8.8", 63)
    assert leaving[UDP].dport == 53
    rebuilt = IP(bytes(leaving[IP]))
    del rebuilt.chksum, rebuilt[UDP].chksum
    assert IP(bytes(rebuilt)).chksum == leaving[IP].chksum  # checksums kept valid
    assert IP(bytes(rebuilt))[UDP].chksum == leaving[UDP].chksum
    sent = Ether(bytes.fromhex(report["packet"]["hex"]))
    assert (sent.dst, sent[Dot1Q].vlan, sent[UDP].sport) == (ROUTER_A, 10, 5001)

    assert running_state(client, daemon) == before  # counters, flows, queue: untouched
    again = trace(client, port="access", vlan=10, src="10.0.0.5", dst="8.8.8.8",
                  protocol="udp", sport=5001, dport=53)
    assert again["output"] == report["output"]  # the first trace allocated no NAT port


def test_inbound_dnat_is_held_for_arp_until_the_host_is_known(client: TestClient,
                                                              daemon: Daemon) -> None:
    report = trace(client, port="uplink", src="192.0.2.7", dst="198.51.100.10", dport=8080)
    assert steps(report) == INBOUND
    assert report["verdict"]["action"] == "held"
    assert report["output"] is None
    [ask] = report["sent"]  # what the gateway would send: an ARP request for the web server
    arp = Ether(bytes.fromhex(ask["hex"]))
    assert ask["port"] == "access" and arp[Dot1Q].vlan == 10
    assert (arp[ARP].op, arp[ARP].pdst, arp[ARP].psrc) == (1, "10.0.0.5", "10.0.0.1")
    assert len(daemon.gateway.pending) == 0  # held in the sandbox only

    host_says_hello(daemon)
    report = trace(client, port="uplink", src="192.0.2.7", dst="198.51.100.10", dport=8080)
    assert report["verdict"] == {"action": "output", "port": "access", "port_id": 1}
    leaving = Ether(bytes.fromhex(report["output"]["hex"]))
    assert (leaving.dst, leaving[Dot1Q].vlan) == (HOST_MAC, 10)
    assert (leaving[IP].dst, leaving[TCP].dport, leaving[TCP].flags) == ("10.0.0.5", 80, "S")
    assert report["sent"] == []


def test_drops_name_the_reason_and_the_stage(client: TestClient) -> None:
    report = trace(client, port="uplink", src="192.0.2.7", dst="198.51.100.10", dport=22)
    assert steps(report)[-1] == ("nat-in", "drop: no-binding")
    assert report["verdict"] == {"action": "drop", "reason": "no-binding", "stage": "nat-in"}

    tenant = yaml.safe_load(EXAMPLE.read_text())["tenants"]["b"]
    tenant["router"]["firewall"]["egress"][0]["action"] = "deny"
    assert client.put("/api/v1/tenants/b", json=tenant, headers=AUTH).status_code == 200
    report = trace(client, port="access", vlan=20, src="10.0.0.5", dst="8.8.8.8")
    assert steps(report)[-1] == ("firewall-out", "drop: denied")
    assert report["verdict"] == {"action": "drop", "reason": "denied", "stage": "firewall-out"}
    assert report["revision"] == 2


def test_a_frame_as_hex_goes_the_same_way_as_its_fields(client: TestClient) -> None:
    frame = bytes(Ether(src="02:00:00:00:7e:01", dst=ROUTER_A) / Dot1Q(vlan=10)
                  / IP(src="10.0.0.5", dst="8.8.8.8") / TCP(sport=40000, dport=80, flags="S"))
    as_hex = trace(client, port="access", hex=frame.hex(":"))
    as_fields = trace(client, port="access", vlan=10, src="10.0.0.5", dst="8.8.8.8")
    assert steps(as_hex) == steps(as_fields) == OUTBOUND
    assert as_hex["verdict"] == as_fields["verdict"]
    assert as_hex["packet"]["hex"] == frame.hex()
    out = Ether(bytes.fromhex(as_hex["output"]["hex"]))
    assert (out[IP].src, out[TCP].flags) == ("198.51.100.10", "S")
    runt = trace(client, port="access", hex="0011")  # too short for Ethernet: parse drops it
    assert runt["verdict"]["action"] == "drop" and runt["stages"] == []


@pytest.mark.parametrize(("body", "path"), [
    ({"port": "access", "vlan": 10, "src": "10.0.0.5"}, "dst"),
    ({"port": "access", "src": "10.0.0.5", "dst": "8.8.8.8"}, "vlan"),
    ({"port": "nope", "src": "10.0.0.5", "dst": "8.8.8.8"}, "port"),
    ({"port": "access", "hex": "abc"}, "hex"),
    ({"port": "access", "hex": "00" * 20, "src": "10.0.0.5"}, "hex"),
    ({"port": "access", "vlan": 10, "src": "10.0.0.5", "dst": "::1"}, "dst"),
    ({"port": "access", "vlan": 10, "src": "10.0.0.5", "dst": "8.8.8.8",
      "protocol": "icmpv6"}, "protocol"),
    ({"port": "access", "vlan": 10, "src": "10.0.0.5", "dst": "8.8.8.8",
      "protocol": 300}, "protocol"),
    ({"port": "access", "vlan": 30, "src": "10.0.0.5", "dst": "8.8.8.8"}, "eth_dst"),
    ({"port": "access", "vlan": 10, "src": "10.0.0.5", "dst": "8.8.8.8",
      "eth_src": "not-a-mac"}, "eth_src"),
    ({"port": "access", "vlan": 10, "src": "10.0.0.5", "dst": "8.8.8.8", "bogus": 1}, "bogus"),
])
def test_a_bad_request_is_refused_with_the_field(client: TestClient, body: dict[str, Any],
                                                 path: str) -> None:
    response = client.post("/api/v1/trace", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert path in [p["path"] for p in response.json()["problems"]]


@given(frame=st.binary(min_size=1, max_size=300), port=st.sampled_from(["access", "uplink"]))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_frame_gets_a_verdict_never_a_server_error(client: TestClient, frame: bytes,
                                                       port: str) -> None:
    vlan = b"\x81\x00\x00\x0a" if port == "access" else b""  # some reach the stages
    report = trace(client, port=port, hex=(frame[:12] + vlan + frame[12:]).hex())
    assert report["verdict"]["action"] in ("output", "drop", "held")
    if report["verdict"]["action"] == "drop":
        assert report["verdict"]["reason"] and report["verdict"]["stage"]


def test_the_cli_prints_a_table_and_json(running: Running) -> None:
    done = running.cli("trace", "--port", "uplink", "--src", "192.0.2.7",
                       "--dst", "198.51.100.10", "--dport", "8080")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["3", "route", "->", "nat-in"] in rows and ["6", "deliver", "done"] in rows
    assert "verdict  held" in done.stdout and "ARP" in done.stdout
    assert "TCP 192.0.2.7:40000 > 198.51.100.10:8080 [S]" in done.stdout

    done = running.cli("trace", "--port", "access", "--vlan", "10", "--src", "10.0.0.5",
                       "--dst", "8.8.8.8", "--proto", "udp", "--dport", "53", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [s["stage"] for s in report["stages"]] == [stage for stage, _ in OUTBOUND]
    assert report["verdict"]["port"] == "uplink"
    assert running.get("/api/v1/stats").json()["datapath"]["packets"] == 0  # nothing ran

    usage = running.cli("trace", "--port", "access", "--hex", "00", "--src", "10.0.0.5")
    assert usage.returncode == 2 and "--src" in usage.stderr
    usage = running.cli("trace", "--port", "access", "--src", "10.0.0.5")
    assert usage.returncode == 2 and "--dst" in usage.stderr
    refused = running.cli("trace", "--port", "access", "--src", "10.0.0.5", "--dst", "8.8.8.8")
    assert refused.returncode == 1 and "vlan: port access carries VLANs 10" in refused.stderr
