"""The NaaS API on its Unix socket: answers, status codes, and errors that name the field.

The API is served by uvicorn in a thread on a real Unix socket
(``server.serving``) and asked with httpx over that socket, as the CNI plugin
and ``portico naas show`` ask it.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from portico.services.naas.allocator import open_allocator
from portico.services.naas.pools import BlockLayout, parse_pool
from portico.services.naas.server import bind_unix_socket, serving


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    allocator = open_allocator(f"sqlite:{tmp_path / 'naas.db'}",
                               [parse_pool("media=198.51.100.0/29", BlockLayout(16384)),
                                parse_pool("tiny=203.0.113.9/32", BlockLayout(32256))])
    with serving(allocator, tmp_path / "naas.sock") as path, httpx.Client(
            transport=httpx.HTTPTransport(uds=str(path)), base_url="http://naas",
            timeout=30) as client:
        yield client
    allocator.close()


def test_put_allocates_once_and_then_returns_the_same(api: httpx.Client) -> None:
    body = {"pool": "media", "namespace": "voice", "name": "relay-0", "network": "media"}
    first = api.put("/v1/allocations/c1/eth0", json=body)
    assert first.status_code == 201 and first.json()["created"] is True
    allocation = first.json()["allocation"]
    assert allocation["address"] == "198.51.100.2" and allocation["gateway"] == "198.51.100.1"
    assert allocation["ports"] == {"kind": "block", "block": 0, "first": 1024, "last": 17407,
                                   "count": 16384, "ranges": [[1024, 17407]]}
    assert allocation["key"] == "c1/eth0/pod" and allocation["name"] == "relay-0"
    again = api.put("/v1/allocations/c1/eth0", json=body)
    assert again.status_code == 200 and again.json() == {"allocation": allocation,
                                                         "created": False}
    assert api.get("/v1/allocations/c1/eth0").json() == {"allocation": allocation}


def test_sessions_listing_and_deletes(api: httpx.Client) -> None:
    api.put("/v1/allocations/relay/eth0", json={"pool": "media"})
    session = api.put("/v1/allocations/relay/eth0/sessions/call-7@pbx", json={"pool": "media"})
    assert session.status_code == 201
    assert session.json()["allocation"]["session"] == "call-7@pbx"
    assert api.get("/v1/allocations/relay/eth0/sessions/call-7@pbx").status_code == 200
    listed = api.get("/v1/allocations", params={"container_id": "relay"}).json()
    assert [a["key"] for a in listed["allocations"]] == ["relay/eth0/pod",
                                                         "relay/eth0/session/call-7@pbx"]
    gone = api.delete("/v1/allocations/relay/eth0/sessions/call-7@pbx").json()["released"]
    assert [a["key"] for a in gone] == ["relay/eth0/session/call-7@pbx"]
    api.put("/v1/allocations/relay/eth0/sessions/call-8", json={"pool": "media"})
    gone = api.delete("/v1/allocations/relay/eth0").json()["released"]
    assert {a["key"] for a in gone} == {"relay/eth0/pod", "relay/eth0/session/call-8"}
    assert api.delete("/v1/allocations/relay").json() == {"released": []}
    missing = api.get("/v1/allocations/relay/eth0")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_pools_and_gc(api: httpx.Client) -> None:
    for container in ("keep", "drop"):
        api.put(f"/v1/allocations/{container}/eth0", json={"pool": "media", "network": "n"})
    pools = {p["name"]: p for p in api.get("/v1/pools").json()["pools"]}
    assert pools["media"]["allocated"] == 2 and pools["media"]["free"] == 13
    assert pools["tiny"]["slots"] == 2
    gc = api.post("/v1/gc", json={"pool": "media", "network": "n", "valid_attachments": [
        {"container_id": "keep", "interface": "eth0"}]})
    assert [a["container_id"] for a in gc.json()["released"]] == ["drop"]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field"), [
    ("put", "/v1/allocations/-bad/eth0", {"pool": "media"}, 422, "invalid", "container_id"),
    ("put", "/v1/allocations/c1/eth0", {"pool": "nope"}, 422, "invalid", "pool"),
    ("put", "/v1/allocations/c1/eth0", {"pool": "media", "colour": "red"}, 422, "invalid",
     "colour"),
    ("put", "/v1/allocations/c1/eth0", {"pool": 7}, 422, "invalid", "pool"),
    ("put", "/v1/allocations/c1/eth0/sessions/bad%20id", {}, 422, "invalid", "session"),
    ("post", "/v1/gc", {"valid_attachments": [{"container_id": "x"}]}, 422, "invalid",
     "valid_attachments.0.interface"),
    ("get", "/v1/allocations?pool=nope", None, 422, "invalid", "pool"),
])
def test_errors_name_the_field(api: httpx.Client, method: str, path: str, body: object,
                               status: int, code: str, field: str) -> None:
    answer = api.request(method.upper(), path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"].startswith(f"{field}: ")


def test_exhaustion_is_a_409_naming_the_pool(api: httpx.Client) -> None:
    for container in ("a", "b"):
        assert api.put(f"/v1/allocations/{container}/eth0",
                       json={"pool": "tiny"}).status_code == 201
    full = api.put("/v1/allocations/c/eth0", json={"pool": "tiny"})
    assert full.status_code == 409
    assert full.json()["error"] == {
        "code": "pool_exhausted", "field": None,
        "message": "pool tiny is exhausted: all 2 slots (1 addresses x 2 blocks of 32256 "
                   "ports) are allocated"}
    held = api.put("/v1/allocations/a/eth0", json={"pool": "media"})
    assert held.status_code == 409 and held.json()["error"]["code"] == "owner_conflict"


def test_the_socket_is_private_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "run" / "naas.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.parent.mkdir()
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    sock = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        sock.listen()
        with pytest.raises(OSError, match="another server is answering"):
            bind_unix_socket(path)
    finally:
        sock.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        bind_unix_socket(path)


def test_portico_naas_serve_runs_until_sigterm_and_removes_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "naas.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "portico", "naas", "serve", "--socket", str(path), "--store",
         f"sqlite:{tmp_path / 'naas.db'}", "--pool", "media=198.51.100.0/29",
         "--psid-length", "4"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "portico naas serve did not come up"
            time.sleep(0.05)
        show = subprocess.run([sys.executable, "-m", "portico", "naas", "show", "--socket",
                               str(path)], capture_output=True, text=True, timeout=60)
        assert show.returncode == 0, show.stderr
        assert "media" in show.stdout and "(no allocations)" in show.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and not path.exists()
    said = proc.stderr.read() if proc.stderr else ""
    assert "pool media: 198.51.100.0/29, 5 addresses x 16 blocks of 4032 ports" in said


def test_portico_naas_serve_refuses_a_bad_pool(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "portico", "naas", "serve", "--socket",
                          str(tmp_path / "s"), "--store", f"sqlite:{tmp_path / 'db'}",
                          "--pool", "media=300.1.1.0/24"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "--pool media: '300.1.1.0/24' is not a network" in run.stderr
