"""A config change under load: no packet is decided by stale tables.

The daemon replays a capture again and again (tenant a's hosts sending UDP to
the Internet: flows the cache holds after their first packet) while the test
changes the desired state through the daemon's write path: tenant a's egress
rule becomes deny (a rules-only change, applied in place), then back with the
provider's default route gone (a change the gateway recompiles for), then the
route back. Each batch is recorded under the daemon's lock with the revision
it was decided under, and every packet of it must show exactly that
revision's decision: out of the uplink, or not.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from portico.batch import Batch
from portico.control.daemon import Daemon
from portico.control.store import open_store
from portico.io.capture import CaptureWriter

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
UPLINK, ACCESS = 0, 1
ROUTER_A = "02:00:00:00:0a:01"


def _capture(path: Path) -> None:
    """Sixteen flows of tenant a (VLAN 10 on the access port), four packets each."""
    frames = [bytes(Ether(src=f"02:00:00:00:0a:{10 + host:02x}", dst=ROUTER_A) / Dot1Q(vlan=10)
                    / IP(src=f"10.0.0.{10 + host}", dst="192.0.2.53")
                    / UDP(sport=40000 + flow, dport=53) / b"query")
              for _ in range(4) for host in range(4) for flow in range(4)]
    batch = Batch.from_packets(frames, port=ACCESS)
    batch.meta["timestamp"][: batch.count] = 10**18 + np.arange(batch.count) * 1000
    with CaptureWriter(path, interfaces=("uplink", "access")) as writer:
        writer.write(batch, port_column="port")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(open_store(f"sqlite:{tmp_path / 'state.db'}"),
               initial=yaml.safe_load(EXAMPLE.read_text()), seed=1)
    yield d
    d.stop()


def test_every_batch_is_decided_by_the_revision_it_ran_under(daemon: Daemon,
                                                              tmp_path: Path) -> None:
    capture = tmp_path / "load.pcapng"
    _capture(capture)
    seen: list[tuple[int, int, int]] = []  # (revision, packets out of the uplink, packets)
    lock = threading.Lock()

    def record(batch: Batch) -> None:  # under the daemon's lock: its revision is the batch's
        meta = batch.meta[: batch.count]
        out = int(((meta["out_port"] == UPLINK) & (meta["drop"] == 0)).sum())
        with lock:
            seen.append((daemon.revision, out, batch.count))

    def batches_under(revision: int) -> int:
        with lock:
            return sum(1 for r, _, _ in seen if r == revision)

    def wait_for(revision: int, batches: int = 20) -> None:
        deadline = time.monotonic() + 30
        while batches_under(revision) < batches:
            assert time.monotonic() < deadline, f"no traffic under revision {revision}"
            time.sleep(0.01)

    forwards: dict[int, bool] = {daemon.revision: True}
    daemon.replay(str(capture), batch_size=16, loop=True, on_batch=record)
    wait_for(daemon.revision)

    tenant = copy.deepcopy(daemon.document()["tenants"]["a"])
    tenant["router"]["firewall"]["egress"][0]["action"] = "deny"
    forwards[daemon.put_object("tenants/a", tenant).revision] = False  # rules only
    wait_for(daemon.revision)

    provider = copy.deepcopy(daemon.document()["provider"])
    routes = provider["router"].pop("routes")
    tenant["router"]["firewall"]["egress"][0]["action"] = "allow"
    forwards[daemon.put_object("tenants/a", tenant).revision] = True
    wait_for(daemon.revision)
    forwards[daemon.put_object("provider", provider).revision] = False  # recompiled
    wait_for(daemon.revision)
    provider["router"]["routes"] = routes
    forwards[daemon.put_object("provider", provider).revision] = True
    wait_for(daemon.revision)

    with lock:
        recorded = list(seen)
    assert {r for r, _, _ in recorded} == set(forwards)  # every state ran under load
    wrong = [(r, out, n) for r, out, n in recorded if out != (n if forwards[r] else 0)]
    assert wrong == []  # each batch all out, or none, as its revision says
    reconfigured: Any = daemon.gateway.stats()["datapath"]
    assert reconfigured["hits"] > 0  # the cache was in front the whole time
