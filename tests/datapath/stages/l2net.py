"""Shared by the L2 stage tests: a small two-tenant network and a datapath over it.

(A module, not fixtures, because the tests want its constants and its ``L2``
type; ``conftest.py`` puts this directory on the import path.)

The network (``CONFIG``): ports ``uplink`` (0), ``access`` (1), ``edge`` (2),
``fabric`` (3: the underlay VXLAN arrives on, untagged) and ``trunk`` (4).
Tenant a's switch ``lan`` owns VLAN 10 on access and on trunk, and VLAN 30 on
edge (so a frame may keep its tag, or have it translated); tenant b's ``lan``
owns VLAN 20 on access and edge's untagged frames (push and pop), and b's
``overlay`` is VNI 5001 and VLAN 50 on fabric, without learning (static
MACs 0b:77 behind the VNI, 0b:78 behind fabric VLAN 50). Both tenants number their LAN
10.0.0.0/24.

A stub stands in for the route stage (another piece of issue 4): it sends
every IPv4 packet it gets out of the provider uplink to the upstream gateway,
the way a default route through NAT would, recording what the real one will
record (the egress attachment, the next hop's MAC, a TTL decrement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

import numpy as np

from portico import drops
from portico.batch import Batch
from portico.control.model import parse_config
from portico.datapath.actions import Op
from portico.datapath.datapath import Datapath
from portico.datapath.flowcache import FlowCache
from portico.datapath.mactable import MacTable
from portico.datapath.pipeline import Decisions, Pipeline
from portico.datapath.stages.ingress import Ingress
from portico.datapath.stages.output import Output
from portico.datapath.stages.switch import L2Switch
from portico.datapath.topology import Topology, compile_topology

CONFIG = """
ports:
  uplink: {id: 0}
  access: {id: 1}
  edge: {id: 2}
  fabric: {id: 3}
  trunk: {id: 4}
provider:
  router:
    uplinks:
      - {port: uplink, addresses: [203.0.113.2/24], mac: "02:00:00:00:00:01"}
tenants:
  a:
    id: 1
    switches:
      lan:
        attach: [{port: access, vlan: 10}, {port: edge, vlan: 30}, {port: trunk, vlan: 10}]
        static_macs: [{mac: "02:00:00:00:0a:05", port: access, vlan: 10}]
    router:
      interfaces: [{switch: lan, addresses: [10.0.0.1/24], mac: "02:00:00:00:0a:01"}]
  b:
    id: 2
    switches:
      lan:
        attach: [{port: access, vlan: 20}, {port: edge}]
      overlay:
        attach: [{vni: 5001}, {port: fabric, vlan: 50}]
        mac_learning: false
        static_macs: [{mac: "02:00:00:00:0b:77", vni: 5001},
                      {mac: "02:00:00:00:0b:78", port: fabric, vlan: 50}]
    router:
      interfaces:
        - {switch: lan, addresses: [10.0.0.1/24], mac: "02:00:00:00:0b:01"}
        - {switch: overlay, addresses: [10.9.0.1/24], mac: "02:00:00:00:0b:02"}
"""

UPLINK, ACCESS, EDGE, FABRIC, TRUNK = 0, 1, 2, 3, 4
UPLINK_MAC = "02:00:00:00:00:01"
GATEWAY_MAC = "02:00:00:00:00:fe"  # the upstream router the stub routes everything to
ROUTER_A = "02:00:00:00:0a:01"
ROUTER_B = "02:00:00:00:0b:01"
STATIC_A = "02:00:00:00:0a:05"  # a.lan's static entry, behind access VLAN 10


def mac_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


class StubDrop(IntEnum):
    STUB_NOT_IPV4 = 245


drops.register("stub-route", StubDrop)


class RouteStub:
    """Everything IPv4 goes out the uplink to GATEWAY_MAC; the rest is dropped."""

    NAME: ClassVar[str] = "route"
    NEXT: ClassVar[tuple[str, ...]] = ("output",)
    DROPS = StubDrop

    def __init__(self, topology: Topology) -> None:
        self.uplink = topology.attachment_at(UPLINK)

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        v4 = batch.meta["ip_version"][rows] == 4
        batch.meta["drop"][rows[~v4]] = StubDrop.STUB_NOT_IPV4
        routed = rows[v4]
        batch.meta["out_attachment"][routed] = self.uplink
        decided.actions["ops"][routed] |= int(Op.SET_ETH_DST | Op.DEC_TTL)
        decided.actions["eth_dst"][routed] = mac_int(GATEWAY_MAC)
        decision[:] = 0


@dataclass
class L2:
    """A datapath over CONFIG: ingress, switch, the route stub, output."""

    topology: Topology
    macs: MacTable
    pipeline: Pipeline
    datapath: Datapath

    @property
    def cache(self) -> FlowCache | None:
        return self.datapath.cache

    def run(self, frames: Sequence[tuple[int, bytes]], now: int = 1) -> Batch:
        """Frames as (ingress port, bytes) through the datapath; the batch as it leaves."""
        batch = Batch.from_packets([frame for _, frame in frames])
        batch.meta["port"][: len(frames)] = [port for port, _ in frames]
        self.datapath.process(batch, now)
        return batch

    def counted(self, stage: str) -> dict[str, int]:
        return dict(self.pipeline.counters[stage].drops)

    def segment(self, name: str) -> int:
        tenant, switch = name.split(".")
        return self.topology.segment_of(tenant, switch)


def make_l2(*, cached: bool = False, capacity: int = 64) -> L2:
    topology = compile_topology(parse_config(CONFIG), generation=1)
    macs = MacTable(topology, capacity=capacity, seed=7)
    pipeline = Pipeline([Ingress(topology), L2Switch(topology, macs), RouteStub(topology),
                         Output(topology)], entry="ingress")
    cache = FlowCache(1024, seed=5) if cached else None
    datapath = Datapath(pipeline, cache=cache, topology=topology, tag_sources=(macs,))
    return L2(topology, macs, pipeline, datapath)
