"""``portico daemon --tls-cert --tls-key``: the API over HTTPS, as curl sees it.

A self-signed certificate for ``localhost`` is made with the ``openssl``
command in the test's directory; the daemon runs as a real process. curl,
trusting that certificate (``--cacert``), gets answers with the token and 401
without it; curl trusting only the system's CAs refuses the certificate; and
plain HTTP to the TLS port gets no HTTP answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.control.conftest import TOKEN, Running


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "--max-time", "20", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("curl") is None,
                    reason="needs the openssl and curl commands")
def test_the_api_over_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    daemon = Running(f"sqlite:{tmp_path / 'state.db'}", tls=(cert, key))
    try:
        url = f"{daemon.url}/api/v1/tenants"
        assert url.startswith("https://localhost:")
        answered = curl("--cacert", str(cert), "-H", f"Authorization: Bearer {TOKEN}",
                        "-w", "\n%{http_code}", url)
        assert answered.returncode == 0, answered.stderr
        body, code = answered.stdout.rsplit("\n", 1)
        assert code == "200" and json.loads(body)["names"] == ["a", "b"]

        no_token = curl("--cacert", str(cert), "-o", "/dev/null", "-w", "%{http_code}", url)
        assert no_token.stdout == "401"
        wrong = curl("--cacert", str(cert), "-H", "Authorization: Bearer nope", "-o",
                     "/dev/null", "-w", "%{http_code}", url)
        assert wrong.stdout == "401"

        untrusted = curl("-o", "/dev/null", "-w", "%{http_code}", url)
        assert untrusted.returncode == 60 and untrusted.stdout == "000"  # unknown CA
        plain = curl("-o", "/dev/null", "-w", "%{http_code}",
                     f"http://localhost:{daemon.port}/healthz")
        assert plain.returncode != 0 and plain.stdout == "000"  # no HTTP answer at all

        shown = daemon.cli("show", "tenants.a", "--json")  # the CLI clients speak HTTPS too
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["id"] == 1
        # ...and check the server's certificate: without the CA they refuse to talk.
        doubtful = daemon.cli("show", "tenants.a", "--json", trust=False)
        assert doubtful.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in doubtful.stderr
    finally:
        daemon.stop()
