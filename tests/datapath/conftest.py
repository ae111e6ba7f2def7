"""Shared by the datapath tests: Scapy as the judge of checksums we kept incrementally."""

from __future__ import annotations

from collections.abc import Callable

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
