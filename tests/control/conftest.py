"""Shared by the control-plane tests: a real etcd (Debian's etcd-server) on loopback.

Started on free ports with a temporary data directory, once per module that asks
for it, and killed at the end, also when a test fails. Skipped only when the
``etcd`` binary is missing (``make test`` installs it, so CI never skips).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_etcd(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """etcd on free loopback ports, healthy; (the process, "127.0.0.1:PORT")."""
    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = open(data_dir.with_suffix(".log"), "wb")  # noqa: SIM115 (outlives this function)
    proc = subprocess.Popen(
        ["etcd", "--name", "default", "--data-dir", str(data_dir),
         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"default={peer_url}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{client_url}/health", timeout=0.5).json().get("health") == "true":
                return proc, f"127.0.0.1:{client}"
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    tail = data_dir.with_suffix(".log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"etcd did not become healthy on {client_url}:\n{tail}")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running etcd's "HOST:PORT", for the whole module; killed at the end."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    base = tmp_path_factory.mktemp("etcd")
    for attempt in range(3):  # a free port may be taken before etcd binds it
        try:
            proc, address = start_etcd(base / f"data{attempt}")
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield address
    finally:
        proc.kill()
        proc.wait(timeout=10)


