"""Shared helpers for the wire-format tests: independent decoders (Scapy, tshark).

Every format is checked against decoders Portico does not share code with:

* fixture ``scapy_rebuilds_same(raw)``: Scapy parses our bytes, forgets every
  length and checksum it knows, rebuilds, and must get the same bytes back:
  its recomputed lengths and checksums equal ours. Returns Scapy's packet.
* fixture ``tshark_decode(frames, path)``: writes one pcap (with Scapy, not
  with ``portico.io``) and runs tshark once over it with checksum checking on,
  returning a ``TsharkPacket`` per frame. tshark starts slowly, so each test
  module batches all its packets into one call. ``TsharkPacket.assert_clean``
  checks no checksum is bad and no expert info is at warning level.

They are fixtures rather than importable helpers because the suite runs with
``--import-mode=importlib``, where test modules cannot import each other.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

# Scapy's names for what the builder derives; deleting them makes Scapy recompute.
DERIVED_FIELDS = {"chksum", "cksum", "len", "ihl", "plen", "dataofs", "optionlen", "length"}
# Layers Scapy would not recompute the same way (the packet inside an ICMP error).
KEEP_AS_IS = ("IPerror", "UDPerror", "TCPerror", "ICMPerror", "IPerror6", "GTPPDUSessionContainer")

EXPERT_WARNING = 0x600000  # tshark's PI_WARN; PI_ERROR is 0x800000
ROOT_NOTICE = "Running as user"  # tshark's notice when run as root, not about packets


def _scapy_rebuilds_same(raw: bytes, first: type[Packet] = Ether) -> Packet:
    """Parse with Scapy, drop its derived fields, rebuild; assert the bytes are ours."""
    packet = first(raw)
    copy = packet.copy()
    layer: Packet | None = copy
    while layer is not None and layer.name != "Raw" and layer.__class__.__name__ != "NoPayload":
        if layer.__class__.__name__ in KEEP_AS_IS:
            break
        for name in DERIVED_FIELDS:
            if name in layer.fields and name in {f.name for f in layer.fields_desc}:
                delattr(layer, name)
        layer = layer.payload if isinstance(layer.payload, Packet) else None
    rebuilt = bytes(copy)
    assert rebuilt == raw, f"scapy rebuilt\n{rebuilt.hex()}\nours\n{raw.hex()}"
    return packet


def _tshark_decode(frames: list[bytes], path: Path) -> list[TsharkPacket]:
    """Each frame's ``layers`` as tshark decodes them; asserts tshark said nothing on stderr."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    wrpcap(str(path), [Ether(frame) for frame in frames])
    proc = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "json",
            "--no-duplicate-keys",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [
        line for line in proc.stderr.splitlines() if line.strip() and ROOT_NOTICE not in line
    ]
    assert proc.returncode == 0 and not complaints, proc.stderr
    decoded = [TsharkPacket(packet["_source"]["layers"]) for packet in json.loads(proc.stdout)]
    assert len(decoded) == len(frames)
    return decoded


def walk(tree: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a tshark JSON tree, depth first."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from walk(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from walk(item)


class TsharkPacket:
    """One frame as tshark decoded it."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self.tree = tree

    def values(self, name: str) -> list[str]:
        """All values of field ``name`` anywhere in the tree (outer first), flattened."""
        found: list[str] = []
        for key, value in walk(self.tree):
            if key == name:
                found.extend(value if isinstance(value, list) else [value])
        return found

    def protocols(self) -> list[str]:
        return self.values("frame.protocols")[0].split(":")

    def assert_clean(self, *, checked: tuple[str, ...] = ()) -> None:
        """No checksum tshark verified is bad, those of ``checked`` protocols are verified
        good, and no expert info is at warning level or above."""
        for key, value in walk(self.tree):
            if key.endswith("checksum.status"):
                assert "0" not in (value if isinstance(value, list) else [value]), f"{key} bad"
            if key == "_ws.expert.severity":
                for severity in value if isinstance(value, list) else [value]:
                    messages = self.values("_ws.expert.message")
                    assert int(severity) < EXPERT_WARNING, f"expert warning: {messages}"
        for name in checked:
            statuses = self.values(f"{name}.checksum.status")
            assert statuses and set(statuses) == {"1"}, f"{name} checksum unverified: {statuses}"


@pytest.fixture(scope="session")
def scapy_rebuilds_same() -> Callable[..., Packet]:
    return _scapy_rebuilds_same


@pytest.fixture(scope="session")
def tshark_decode() -> Callable[[list[bytes], Path], list[TsharkPacket]]:
    return _tshark_decode
