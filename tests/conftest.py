"""Shared test set-up.

Hypothesis explores new random examples on every local run (that is how it
found the pcapng reader's if_tsresol crash); under CI (``CI`` set) it runs a
fixed, derandomized set, so a submission's result does not depend on chance.

Scapy fills a missing Ethernet destination by resolving the IP destination:
for an address on a local subnet it sends a real ARP request or neighbour
solicitation and waits for the answer. Tests build packets with arbitrary
addresses and must never put traffic on the host's network, so resolution is
switched off here for every test: a missing destination becomes broadcast.

``etcd``: Debian's etcd-server on free loopback ports with a temporary data
directory (started as the bench starts it, ``bench.control.start_etcd``), once
per module that asks for it, killed at the end, also when a test fails;
skipped only when the binary is missing (``make test`` installs it, so CI
never skips). The control-plane and NaaS tests use it.
"""

import logging
import os
import shutil
from collections.abc import Iterator

import pytest
import scapy.layers.inet  # noqa: F401  (registers the IPv4 resolver)
import scapy.layers.inet6  # noqa: F401  (registers the IPv6 resolver)
import scapy.layers.l2  # noqa: F401  (creates conf.neighbor)
from hypothesis import settings
from scapy.config import conf

from bench.control import start_etcd

conf.neighbor.resolvers.clear()
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


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
