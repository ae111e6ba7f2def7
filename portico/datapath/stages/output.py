"""output: the egress's L2 details - the port, the VLAN tag, the router's MAC.

Synopsis. The last stage. Rows arrive with ``meta["out_attachment"]`` set by
the stage that chose the egress (``switch``, or ``route``). Output records:

* OUTPUT to the attachment's port;
* the VLAN change between the tag the frame came in with and the
  attachment's VLAN: POP_VLAN (tagged in, untagged out), PUSH_VLAN (untagged
  in, tagged out), both (another VID out: VLAN translation); nothing when they
  agree. A priority tag (VID 0) counts as a tag: it is popped for an untagged
  egress;
* on routed frames, SET_ETH_SRC: the router's MAC on the egress segment. A
  routed frame is one whose pending action has SET_ETH_DST: the route stage
  records the next hop's MAC there (resolving neighbours is its decision),
  and output supplies the source that goes with it.

NEXT is empty: the packet is done.

Drops: ``no-egress`` (no ``out_attachment``, or a routed frame towards a
segment without a router MAC: an upstream stage's mistake, named rather than
sent anywhere) and ``tunnel-unsupported`` (in or out by a VNI: actions cannot
yet encapsulate or decapsulate).

Theory of operation. Stages see the packet as it was received, so the ingress
tag is ``meta["vlan_count"]``/``vlan_outer`` as parsed, and the ops recorded
here are applied after the others in the order ``actions`` fixes (pop, IP
rewrites, MACs, push, output), so a route's TTL decrement and a NAT rewrite
compose with them. A pushed tag carries priority 0: the flow key holds the
VID only, so a priority copied from the first packet would be wrong for a
later one with another; keeping the priority across a VLAN translation wants a
SET_VLAN_VID op that rewrites the VID in place (also cheaper than pop+push).
Everything read here is topology (attachments, router MACs), whose changes
bump the cache's generation: no tag.

Example::

    Pipeline([Ingress(topology), L2Switch(topology, macs), route, Output(topology)],
             entry="ingress")
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.datapath.actions import Op
from portico.datapath.pipeline import Decisions
from portico.datapath.topology import Topology


class OutputDrop(IntEnum):
    """Why output dropped a frame (codes 112..119 belong to output)."""

    NO_EGRESS = 112  # no egress attachment, or none the frame can leave by
    TUNNEL_UNSUPPORTED = 113  # in or out by a VNI: no encapsulation yet


drops.register("output", OutputDrop)

D_NO_EGRESS = int(OutputDrop.NO_EGRESS)
D_TUNNEL = int(OutputDrop.TUNNEL_UNSUPPORTED)
POP_VLAN, PUSH_VLAN, OUTPUT = int(Op.POP_VLAN), int(Op.PUSH_VLAN), int(Op.OUTPUT)
SET_ETH_SRC, SET_ETH_DST = int(Op.SET_ETH_SRC), int(Op.SET_ETH_DST)


@njit(cache=True)
def output_rows(meta, rows, actions, attachment_segment, attachment_port,  # type: ignore[no-untyped-def]
                attachment_vlan, attachment_vni, router_mac):
    n_attachments = attachment_port.shape[0]
    for k in range(rows.shape[0]):
        r = rows[k]
        m = meta[r]
        out = np.int64(m.out_attachment)
        if out < 0 or out >= n_attachments:
            m.drop = D_NO_EGRESS
            continue
        if attachment_vni[out] != 0 or (m.attachment >= 0 and attachment_vni[m.attachment] != 0):
            m.drop = D_TUNNEL
            continue
        a = actions[r]
        ops = np.int64(a.ops)
        if ops & SET_ETH_DST:
            source = router_mac[attachment_segment[out]]
            if source == 0:
                m.drop = D_NO_EGRESS
                continue
            ops |= SET_ETH_SRC
            a.eth_src = source
        tagged = m.vlan_count > 0
        vid_in = np.int64(m.vlan_outer)
        vid_out = np.int64(attachment_vlan[out])
        if tagged and (vid_out == 0 or vid_in != vid_out):
            ops |= POP_VLAN
        if vid_out != 0 and not (tagged and vid_in == vid_out):
            ops |= PUSH_VLAN
            a.vlan_tci = vid_out  # priority 0, see the module's docstring
        a.ops = ops | OUTPUT
        a.out_port = attachment_port[out]


class Output:
    """The output stage (see the module's docstring)."""

    NAME: ClassVar[str] = "output"
    NEXT: ClassVar[tuple[str, ...]] = ()
    DROPS: ClassVar[type[IntEnum] | None] = OutputDrop

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        t = self.topology
        output_rows(batch.meta, np.ascontiguousarray(rows, dtype=np.int64), decided.actions,
                    t.attachment_segment, t.attachment_port, t.attachment_vlan,
                    t.attachment_vni, t.segment_router_mac)
        # decision stays DONE: the packet leaves
