"""Shared by the control-plane tests: ``portico daemon`` as a real process (the real etcd
they use is ``tests/conftest.py``'s ``etcd``).

``Running`` starts ``portico daemon`` the way a user does (``python -m
portico daemon CONFIG --listen ... --store ...``, the token in
``PORTICO_TOKEN``, optionally ``--tls-cert``/``--tls-key``), waits until
``/healthz`` answers (at most 60 s), and runs the CLI clients against it.
The ``running`` fixture is one on a fresh SQLite store.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
TOKEN = "daemon-test-token"
PORTICO = [sys.executable, "-m", "portico"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Running:
    """A daemon process and how to reach it (``tls``: its certificate and key, PEM files;
    the certificate must name ``localhost``, the host the URL then uses)."""

    def __init__(self, store: str, config: Path = EXAMPLE,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.cacert = tls[0] if tls else None
        scheme, host = ("https", "localhost") if tls else ("http", "127.0.0.1")
        self.url = f"{scheme}://{host}:{self.port}"
        env = {**os.environ, "PORTICO_TOKEN": TOKEN}
        extra = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
        self.proc = subprocess.Popen(
            [*PORTICO, "daemon", str(config), "--listen", f"127.0.0.1:{self.port}",
             "--store", store, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode() if self.proc.stderr else "")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5,
                             verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the daemon did not come up")

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.cacert)) if self.cacert else True

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10, verify=self.verify)

    def cli(self, *args: str, trust: bool = True) -> subprocess.CompletedProcess[str]:
        """A ``portico`` client command against this daemon (``trust``: given its CA)."""
        env = {**os.environ, "PORTICO_TOKEN": TOKEN, "PORTICO_SERVER": self.url}
        env.pop("PORTICO_CACERT", None)
        if trust and self.cacert is not None:
            env["PORTICO_CACERT"] = str(self.cacert)
        return subprocess.run([*PORTICO, *args], capture_output=True, text=True, timeout=60,
                              env=env)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """``portico daemon examples/two-tenants.yaml`` on a fresh SQLite store."""
    daemon = Running(f"sqlite:{tmp_path / 'state.db'}")
    yield daemon
    daemon.stop()
