"""Shared by the datapath tests: Scapy as the judge of checksums we kept incrementally."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet


def _checksums_valid(pkt: Packet) -> None:
    """Scapy recomputes every checksum we left in place and must get the same values."""
    rebuilt = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in rebuilt:
            del rebuilt[layer].chksum
    rebuilt = Ether(bytes(rebuilt))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in pkt:
            if layer is UDP and pkt[UDP].chksum == 0:
                continue  # "no checksum" over IPv4 is valid as it is
            assert pkt[layer].chksum == rebuilt[layer].chksum, layer.__name__


@pytest.fixture
def checksums_valid() -> Callable[[Packet], None]:
    return _checksums_valid


# The gateway scenario tests share ``gatewaynet.py`` (the example network and a driver):
# the suite runs with ``--import-mode=importlib``, which puts no test directory on
# ``sys.path``, so this one is added for ``from gatewaynet import ...``.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
