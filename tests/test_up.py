"""``portico up`` on live interfaces: real clients through the gateway, in namespaces.

A lab (``portico.lab``) of four namespaces: the gateway's (``gw``), two tenants
that both number their LAN 10.0.0.0/24, and the upstream router (``uplink``),
joined by veth pairs. ``portico up`` runs in ``gw`` as a real process with the
two-tenant NAT and firewall config, its ports bound to the veth ends, and the
management address 203.0.113.10 in-band on the uplink. Then what users run:
ping, curl to real HTTP servers, iperf3, and curl of the REST API on the
management address; isolation is checked with real sockets.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from portico.lab import Lab

TOKEN = "live-token"
API_PORT = 18080
MGMT = "203.0.113.10"
PORTICO = [sys.executable, "-m", "portico"]

TOPOLOGY = {
    "name": "up",
    "namespaces": {"gw": {}, "tenant-a": {}, "tenant-b": {}, "uplink": {"forwarding": True}},
    "links": [
        {"name": "a", "namespace": "gw", "ipv6": False,
         "peer": {"name": "eth0", "namespace": "tenant-a", "ipv6": False,
                  "addresses": ["10.0.0.7/24", "10.0.0.5/24"], "mac": "02:00:00:00:00:77"}},
        {"name": "b", "namespace": "gw", "ipv6": False,
         "peer": {"name": "eth0", "namespace": "tenant-b", "ipv6": False,
                  "addresses": ["10.0.0.7/24"], "mac": "02:00:00:00:00:77"}},
        {"name": "up", "namespace": "gw", "ipv6": False,
         "peer": {"name": "eth0", "namespace": "uplink", "ipv6": False,
                  "addresses": ["203.0.113.1/24"], "mac": "02:00:00:00:00:fe"}},
    ],
    "routes": [
        {"namespace": "tenant-a", "to": "default", "via": "10.0.0.1"},
        {"namespace": "tenant-b", "to": "default", "via": "10.0.0.1"},
        {"namespace": "uplink", "to": "198.51.100.0/24", "via": "203.0.113.2"},
    ],
}


def _tenant(tid: int, mac: str, public: str, firewall: dict) -> dict:
    return {"id": tid, "switches": {"lan": {"attach": [{"port": "ab"[tid - 1]}]}},
            "router": {"interfaces": [{"switch": "lan", "addresses": ["10.0.0.1/24"],
                                       "mac": mac}],
                       "nat": {"snat": [{"source": "10.0.0.0/24", "pool": [f"{public}/32"]}],
                               **({"dnat": [{"external": public, "protocol": "tcp",
                                             "port": 8080, "internal": "10.0.0.5",
                                             "internal_port": 80}]} if tid == 1 else {})},
                       "firewall": firewall}}


CONFIG = {
    "ports": {"uplink": {"id": 0}, "a": {"id": 1}, "b": {"id": 2}},
    "provider": {"router": {
        "uplinks": [{"port": "uplink", "addresses": ["203.0.113.2/24"],
                     "mac": "02:00:00:00:00:01"}],
        "routes": [{"prefix": "0.0.0.0/0", "via": "203.0.113.1"}]}},  # resolved on the wire
    "tenants": {
        "a": _tenant(1, "02:00:00:00:0a:01", "198.51.100.10", {
            "containers": {"web": ["10.0.0.5"], "lan": ["10.0.0.0/24"]},
            "ingress": [
                {"id": "web-in", "priority": 10, "action": "allow", "dst": "container:web",
                 "protocol": "tcp", "dport": 80},
                {"id": "ping-in", "priority": 20, "action": "allow", "dst": "container:lan",
                 "protocol": "icmp", "icmp_type": 8},
                {"id": "default-in", "priority": 1000, "action": "deny"}],
            "egress": [{"id": "out", "priority": 10, "action": "allow",
                        "src": "container:lan"}]}),
        "b": _tenant(2, "02:00:00:00:0b:01", "198.51.100.20", {
            "egress": [{"id": "out", "priority": 10, "action": "allow", "src": "10.0.0.0/24"}],
            "ingress": [{"id": "default-in", "priority": 1000, "action": "deny"}]}),
    },
}

# An HTTP server that answers with the address the request came from (what NAT made).
WHO_IS_ASKING = """
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""

# A UDP listener that prints whatever reaches it within a second.
LISTEN_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True); s.settimeout(float(sys.argv[3]))
try: print(s.recv(100).decode(), flush=True)
except socket.timeout: print("nothing", flush=True)
"""


class Gateway:
    """``portico up`` in the lab's gw namespace, as a process."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.config = tmp / "gw.yaml"
        self.config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PORTICO_TOKEN": TOKEN, "PYTHONPATH": str(Path.cwd())}
        argv = [*PORTICO, "up", str(self.config), "--store", f"sqlite:{self.tmp / 'state.db'}",
                "--listen", f"0.0.0.0:{API_PORT}", "--bind", "uplink=up", "--bind", "a=a",
                "--bind", "b=b", "--management-port", "uplink",
                "--management-address", f"{MGMT}/24"]
        self.log = open(self.tmp / "up.log", "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.lab.exec_args("gw", *argv), stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        # Ready when the API answers in-band: from the upstream router, through the ring,
        # the punt path and the kernel, and back.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / "up.log").read_text()
            if self.curl("uplink", f"http://{MGMT}:{API_PORT}/healthz").returncode == 0:
                return
            time.sleep(0.3)
        raise AssertionError("portico up never answered in-band:\n"
                             + (self.tmp / "up.log").read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def curl(self, ns: str, url: str, *extra: str, seconds: float = 3
             ) -> subprocess.CompletedProcess[str]:
        return self.lab.run(ns, "curl", "-sS", "--max-time", str(seconds), *extra, url,
                            check=False, timeout=seconds + 10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(TOPOLOGY, prefix="pu" + secrets.token_hex(3)) as built:
        yield built


@pytest.fixture(scope="module")
def gateway(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(lab, tmp_path_factory.mktemp("up"))
    try:
        gw.start()  # inside: a start that fails still stops what it started
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def server(lab: Lab) -> Iterator[list[subprocess.Popen[str]]]:
    """Servers a test starts in lab namespaces, stopped after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def _start(lab: Lab, servers: list[subprocess.Popen[str]], ns: str, *argv: str
           ) -> subprocess.Popen[str]:
    proc = subprocess.Popen(lab.exec_args(ns, *argv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    servers.append(proc)
    return proc


def _wait_listening(lab: Lab, ns: str, port: int) -> None:
    for _ in range(100):  # 10 s at most
        if f":{port} " in lab.run(ns, "ss", "-ltnH", check=False).stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} in {ns}")


def test_both_tenants_ping_the_upstream_router(gateway: Gateway) -> None:
    for ns in ("tenant-a", "tenant-b"):
        done = gateway.lab.run(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "203.0.113.1",
                               check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " 0% packet loss" in done.stdout


def test_each_tenant_reaches_an_http_server_from_its_own_public_address(
        gateway: Gateway, server: list[subprocess.Popen[str]]) -> None:
    _start(gateway.lab, server, "uplink", sys.executable, "-c", WHO_IS_ASKING, "203.0.113.1",
           "8000")
    _wait_listening(gateway.lab, "uplink", 8000)
    seen = {ns: gateway.curl(ns, "http://203.0.113.1:8000/") for ns in ("tenant-a", "tenant-b")}
    assert seen["tenant-a"].returncode == 0, seen["tenant-a"].stderr
    assert seen["tenant-a"].stdout == "198.51.100.10"  # SNAT: same inside address...
    assert seen["tenant-b"].stdout == "198.51.100.20"  # ...each tenant's own public one


def test_port_forwarding_reaches_the_web_server_inside_tenant_a(
        gateway: Gateway, server: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("hello from 10.0.0.5\n")
    _start(gateway.lab, server, "tenant-a", sys.executable, "-m", "http.server", "80",
           "--bind", "10.0.0.5", "--directory", str(tmp_path))
    _wait_listening(gateway.lab, "tenant-a", 80)
    got = gateway.curl("uplink", "http://198.51.100.10:8080/index.html")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "hello from 10.0.0.5\n"
    # The firewall lets only the forwarded service in: another port stays shut.
    assert gateway.curl("uplink", "http://198.51.100.10:80/", seconds=1).returncode != 0


def test_iperf3_tcp_runs_through_nat_and_the_firewall(
        gateway: Gateway, server: list[subprocess.Popen[str]]) -> None:
    _start(gateway.lab, server, "uplink", "iperf3", "-s", "-1", "-B", "203.0.113.1", "-p", "5201")
    _wait_listening(gateway.lab, "uplink", 5201)
    done = gateway.lab.run("tenant-a", "iperf3", "-c", "203.0.113.1", "-p", "5201", "-t", "2",
                           "-J", check=False, timeout=60)
    report = json.loads(done.stdout)
    assert "error" not in report, report.get("error")
    received = report["end"]["sum_received"]
    assert received["bytes"] > 1_000_000  # a real stream, not a handshake
    assert report["start"]["connected"][0]["local_host"] == "10.0.0.7"


def test_a_tenant_cannot_reach_the_other_tenants_hosts(
        gateway: Gateway, server: list[subprocess.Popen[str]]) -> None:
    listener = _start(gateway.lab, server, "tenant-a", sys.executable, "-c", LISTEN_UDP,
                      "10.0.0.5", "9999", "2")
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    # The same address exists in tenant b's address space too: it means b's own LAN.
    gateway.lab.run("tenant-b", sys.executable, "-c",
                    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "[s.sendto(b'from b', ('10.0.0.5', 9999)) for _ in range(3)]")
    assert listener.stdout.readline().strip() == "nothing"


def test_the_api_answers_in_band_on_the_management_address(gateway: Gateway) -> None:
    ping = gateway.lab.run("uplink", "ping", "-c", "2", "-W", "2", MGMT, check=False)
    assert ping.returncode == 0, ping.stdout
    stats = gateway.curl("uplink", f"http://{MGMT}:{API_PORT}/api/v1/stats",
                         "-H", f"Authorization: Bearer {TOKEN}")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["datapath"]["packets"] > 0
    refused = gateway.curl("uplink", f"http://{MGMT}:{API_PORT}/api/v1/stats", "-o",
                           "/dev/null", "-w", "%{http_code}")
    assert refused.stdout == "401"


def _management_counters(gateway: Gateway) -> dict[str, int]:
    stats = gateway.curl("uplink", f"http://{MGMT}:{API_PORT}/api/v1/stats",
                         "-H", f"Authorization: Bearer {TOKEN}")
    assert stats.returncode == 0, stats.stderr
    counters: dict[str, int] = json.loads(stats.stdout)["management"]
    return counters


def test_management_is_closed_to_tenants_and_to_other_ports(gateway: Gateway) -> None:
    before = _management_counters(gateway)
    # Tenant traffic never reaches the kernel, not even to the API's own port...
    assert gateway.curl("tenant-a", f"http://{MGMT}:{API_PORT}/healthz",
                        seconds=1).returncode != 0
    # ...and from the uplink only the served ports do (nothing answers on 22, not even RST).
    assert gateway.curl("uplink", f"telnet://{MGMT}:22", seconds=1).returncode == 28  # timeout
    after = _management_counters(gateway)
    assert after["refused_tenant"] > before["refused_tenant"]  # counted, not lost
    assert after["refused_port"] > before["refused_port"]
    assert after["punted"] > before["punted"]  # the stats requests themselves
    assert after["rate_limited"] == 0


def test_management_comes_back_after_the_datapath_is_killed(gateway: Gateway) -> None:
    gateway.stop(signal.SIGKILL)
    assert gateway.curl("uplink", f"http://{MGMT}:{API_PORT}/healthz", seconds=1).returncode != 0
    gateway.start()  # waits until the API answers in-band again
    again = gateway.curl("uplink", f"http://{MGMT}:{API_PORT}/healthz")
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "ok"
