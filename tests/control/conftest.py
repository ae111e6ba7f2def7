"""Shared by the control-plane tests: a real etcd (Debian's etcd-server) on loopback.

Started on free ports with a temporary data directory, once per module that asks
for it, and killed at the end, also when a test fails. Skipped only when the
``etcd`` binary is missing (``make test`` installs it, so CI never skips).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from bench.control import start_etcd  # the bench starts its etcd the same way


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


