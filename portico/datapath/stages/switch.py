"""switch: L2 forwarding inside a segment, and MAC learning.

Synopsis. Rows come from ``ingress`` with ``segment`` and ``attachment`` set.
For each frame (the inner one for a VNI attachment) the stage learns the
source MAC behind the ingress attachment, then decides on the destination MAC:

=============================  ==============================================
destination                    decision
=============================  ==============================================
the segment's router MAC       next ``route`` (nothing recorded here)
ARP broadcast, IPv6 neighbour  next ``route``, which answers for the
solicitation (multicast)       router's addresses and learns the sender
other broadcast / multicast    drop ``flood-unsupported``
known unicast (static/learnt)  ``out_attachment`` set, OUTPUT to its port;
                               next ``output`` (VLAN tags, MACs)
  ... behind the ingress       drop ``hairpin-l2`` (a bridge never sends a
  attachment itself            frame back where it came from)
unknown unicast                drop ``unknown-unicast``
=============================  ==============================================

A group (multicast) or all-zero source MAC is invalid on the wire (an 802.3
source address is an individual address): drop ``bad-source-mac``, nothing
learned.

What ``route`` gets: every frame addressed to the router's MAC on its
segment, IP or not (a unicast ARP too), with ``tenant``, ``segment`` and
``attachment`` set and nothing recorded in ``decided``; for a VNI segment the
tenant's packet is the inner one (``inner_*`` columns). To send a packet on,
route records DEC_TTL (and whatever NAT adds), SET_ETH_DST with the next
hop's MAC in ``eth_dst``, and the egress attachment in
``meta["out_attachment"]`` (``MacTable.locate(segment, mac)`` gives it, with
the tag the decision must carry; -1 means the next hop's MAC is unknown
there), then goes to ``output``, which adds OUTPUT to that attachment's port,
the VLAN tag and SET_ETH_SRC (the router's MAC on the egress segment).

Theory of operation. One compiled pass over the rows in arrival order does,
per frame, what a learning bridge does: learn the source, then look the
destination up (``portico.datapath.mactable``: static entries of the topology
first, then the segment's learned ones). Doing both per row, in order, keeps a
real bridge's semantics inside a batch: a frame is forwarded by what the
frames before it taught, not by what later ones will.

Flooding is not done: an action has one output port, and flooding a frame
needs one copy per attachment of the segment (multi-output actions, or a
replication step after apply). So unknown unicast is dropped, which makes a
learned entry load-bearing (see mactable on why entries never age), and
broadcast is dropped too, except ARP and IPv6 neighbour solicitations on a
segment with a router: those go to ``route``, whose responder answers for the
router's addresses (and consumes the rest: hosts of one segment cannot
resolve each other through the gateway until it floods).

Caching. A decision from a learned entry carries that entry's tag, and an
unknown-unicast drop carries its segment's "unknown" tag; the table reports
which of those tags a move, an eviction or a newly learned MAC invalidates
(``MacTable.take_changed_tags``), and whoever owns the cache must pass them to
``FlowCache.invalidate_tags`` between batches (a packet the cache decided in
the same batch as the change keeps the old decision: lookups precede the
stages). Static entries and the router MAC change only with the topology,
whose change bumps the cache's generation.

The flow key holds the destination MAC, so a 5-tuple sent to another MAC
(an address that moved, IP failover) is another flow, decided afresh.

Example::

    macs = MacTable(topology)
    switch = L2Switch(topology, macs)
    ...
    cache.invalidate_tags(macs.take_changed_tags())   # after each batch
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.datapath.actions import Op
from portico.datapath.flowcache import NO_TAG
from portico.datapath.mactable import GROUP_BIT, MacTable, learn_one, locate_one
from portico.datapath.pipeline import Decisions
from portico.datapath.stages.ingress import IngressDrop
from portico.datapath.topology import Topology


class SwitchDrop(IntEnum):
    """Why the switch dropped a frame (codes 104..111 belong to the switch)."""

    FLOOD_UNSUPPORTED = 104  # broadcast or multicast: flooding needs multi-output actions
    UNKNOWN_UNICAST = 105  # no static or learned entry for the destination
    HAIRPIN_L2 = 106  # the destination is behind the attachment the frame came in by
    BAD_SOURCE_MAC = 107  # a multicast or all-zero source MAC


drops.register("switch", SwitchDrop)

TO_ROUTE = 0  # decisions: indices into NEXT
TO_OUTPUT = 1
D_FLOOD = int(SwitchDrop.FLOOD_UNSUPPORTED)
D_UNKNOWN = int(SwitchDrop.UNKNOWN_UNICAST)
D_HAIRPIN = int(SwitchDrop.HAIRPIN_L2)
D_BAD_SOURCE = int(SwitchDrop.BAD_SOURCE_MAC)
D_NO_SEGMENT = int(IngressDrop.NO_SEGMENT)
OUTPUT = int(Op.OUTPUT)
GROUP = np.uint64(GROUP_BIT)
ETHERTYPE_ARP = 0x0806
ND_SOLICIT = 135


@njit(cache=True, inline="always")
def _mac(data, row, at):  # type: ignore[no-untyped-def]
    value = np.uint64(0)
    for b in range(6):
        value = (value << np.uint64(8)) | np.uint64(data[row, at + b])
    return value


@njit(cache=True)
def switch_rows(data, meta, rows, actions, decision, tags,  # type: ignore[no-untyped-def]
                slots, ctl, counts, capacity, learning, router_mac, static_keys,
                static_attachment, attachment_port, attachment_vni, changed):
    """Learn and decide for each row in order; return how many tags went into ``changed``."""
    n_changed = 0
    for k in range(rows.shape[0]):
        r = rows[k]
        m = meta[r]
        tags[k] = NO_TAG
        ingress = np.int64(m.attachment)
        segment = np.int64(m.segment)
        if ingress < 0 or segment < 0:  # not through ingress: never index the tables with -1
            m.drop = D_NO_SEGMENT
            continue
        at = np.int64(m.inner_l2) if attachment_vni[ingress] != 0 else np.int64(m.l2)
        dst = _mac(data, r, at)
        src = _mac(data, r, at + 6)
        if src == 0 or src & GROUP:
            m.drop = D_BAD_SOURCE
            continue
        n_changed = learn_one(segment, src, ingress, slots, ctl, counts, capacity, learning,
                              router_mac, static_keys, static_attachment, changed, n_changed)
        if dst == router_mac[segment] and dst != 0:
            decision[k] = TO_ROUTE
            continue
        if dst & GROUP:
            if router_mac[segment] != 0 and (
                    m.ethertype == ETHERTYPE_ARP
                    or (m.protocol == 58 and m.icmp_type == ND_SOLICIT and m.ip_version == 6)):
                decision[k] = TO_ROUTE  # the router answers for its addresses
                continue
            m.drop = D_FLOOD
            continue
        where, tag = locate_one(segment, dst, slots, ctl, capacity, learning, static_keys,
                                static_attachment)
        tags[k] = tag
        if where < 0:
            m.drop = D_UNKNOWN
            continue
        if where == ingress:
            m.drop = D_HAIRPIN
            continue
        m.out_attachment = where
        port = attachment_port[where]
        if port >= 0:  # a VNI has no port: output refuses it (no encapsulation yet)
            a = actions[r]
            a.ops = a.ops | OUTPUT
            a.out_port = port
        decision[k] = TO_OUTPUT
    return n_changed


class L2Switch:
    """The L2 switching stage (see the module's docstring)."""

    NAME: ClassVar[str] = "switch"
    NEXT: ClassVar[tuple[str, ...]] = ("route", "output")
    DROPS: ClassVar[type[IntEnum] | None] = SwitchDrop

    def __init__(self, topology: Topology, macs: MacTable) -> None:
        if macs.topology is not topology:
            raise ValueError("switch: the MAC table belongs to another topology")
        self.topology = topology
        self.macs = macs

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        t = self.topology
        macs = self.macs
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        tags = np.empty(len(rows), dtype=np.uint32)
        changed = np.empty(2 * len(rows) + 2, dtype=np.uint32)  # see learn_one
        n = switch_rows(batch.data, batch.meta, rows, decided.actions, decision, tags,
                        macs.slots, macs.ctl, macs.counts, macs.capacity, t.segment_learning,
                        t.segment_router_mac, t.static_keys, t.static_attachment,
                        t.attachment_port, t.attachment_vni, changed)
        macs.note_changed(changed[:n])
        tagged = tags != NO_TAG
        if tagged.any():
            decided.add_tag(rows[tagged], tags[tagged])
