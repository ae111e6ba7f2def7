"""ingress: which tenant and segment a frame belongs to, from where it came in.

Synopsis. The first stage after parse. For every row it finds the topology
attachment the frame entered by (``portico.datapath.topology``) and writes
three metadata columns: ``attachment``, ``segment`` (the L2 segment: a
tenant's switch or a provider uplink) and ``tenant`` (0 for the provider).
Frames that belong nowhere are dropped. Then: ``switch``.

Theory of operation. The place is the ingress port and the outer VLAN id (0
for untagged and for priority-tagged frames, VID 0): one gather in
``Topology.by_port_vlan``. A frame whose port and VLAN no segment owns, but
which is VXLAN or Geneve carrying Ethernet, is looked up by its VNI (the
parsed ``tunnel_id``) instead; the segment's frame is then the *inner* one
(``inner_l2``), which the switch stage reads its MACs from.

The order matters for isolation: an attached port/VLAN always wins, so a
tenant's own UDP traffic that happens to look like VXLAN stays in that
tenant's segment and cannot name another segment's VNI. VNIs are accepted
only on places no segment owns (an underlay port); the model has no VTEP
address yet, so the outer destination is not checked, and the underlay must be
trusted as every VXLAN underlay is.

Double-tagged (QinQ) frames are dropped: an attachment is one VLAN, and an
action pops or pushes one tag, so there is no consistent way to switch or
route the second.

Caching. Everything decided here follows from the flow key's port, outer
VLAN and tunnel id, and from the topology (whose changes bump the cache's
generation), so no tag is recorded. Tunnelled frames are the exception: the
flow key holds the *outer* headers, so two inner flows between the same two
tunnel endpoints could share an entry; those rows are marked uncacheable
(``decided.overflow``) until the key covers the inner frame.

``classify(batch, topology)`` is the same classification for a whole batch,
without drops. The flow cache keys on ``tenant``, which this stage writes, so
the datapath must classify after parse and before it looks flows up, or the
key looked up (tenant -1) is never the key inserted and nothing hits.
``Datapath.process`` does not do that yet (the tests do it in its place);
the stage then finds the columns already right and writes the same values.

Example::

    topology = compile_topology(config)
    pipeline = Pipeline([Ingress(topology), L2Switch(topology, MacTable(topology)),
                         route, Output(topology)], entry="ingress")
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.datapath.pipeline import Decisions
from portico.datapath.topology import NO_ATTACHMENT, Topology
from portico.packet.layers import Layer


class IngressDrop(IntEnum):
    """Why ingress dropped a frame (codes 96..103 belong to ingress)."""

    NO_SEGMENT = 96  # no segment owns the port/VLAN (or the VNI)
    DOUBLE_TAGGED = 97  # QinQ: an attachment is a single VLAN


drops.register("ingress", IngressDrop)

D_NO_SEGMENT = int(IngressDrop.NO_SEGMENT)
D_DOUBLE_TAGGED = int(IngressDrop.DOUBLE_TAGGED)
L_VXLAN = int(Layer.VXLAN)
L_GENEVE = int(Layer.GENEVE)


@njit(cache=True)
def classify_rows(meta, rows, port_index, by_port_vlan, vni_keys, vni_attachment,  # type: ignore[no-untyped-def]
                  attachment_segment, segment_tenant, drop, tunnelled):
    """Fill attachment/segment/tenant of ``rows``; with ``drop``, drop the unplaced.

    ``tunnelled[k]`` is set for rows placed by their VNI.
    """
    n_ports = port_index.shape[0]
    n_vnis = vni_keys.shape[0]
    for k in range(rows.shape[0]):
        m = meta[rows[k]]
        # Written whatever happens, so classifying twice (before the cache and
        # in the stage) gives the same columns.
        m.attachment = NO_ATTACHMENT
        m.segment = -1
        m.tenant = -1
        tunnelled[k] = False
        if m.vlan_count > 1:
            if drop:
                m.drop = D_DOUBLE_TAGGED
            continue
        vid = np.int64(m.vlan_outer) if m.vlan_count == 1 else 0
        port = np.int64(m.port)
        a = np.int64(NO_ATTACHMENT)
        if 0 <= port < n_ports and port_index[port] >= 0:
            a = np.int64(by_port_vlan[port_index[port], vid])
        if a < 0 and (m.tunnel == L_VXLAN or m.tunnel == L_GENEVE) and m.inner_l2 >= 0:  # noqa: SIM109 (kept plain for Numba)
            at = np.searchsorted(vni_keys, np.uint32(m.tunnel_id))
            if at < n_vnis and vni_keys[at] == m.tunnel_id:
                a = np.int64(vni_attachment[at])
                tunnelled[k] = True
        if a < 0:
            if drop:
                m.drop = D_NO_SEGMENT
            continue
        segment = attachment_segment[a]
        m.attachment = a
        m.segment = segment
        m.tenant = segment_tenant[segment]


_ROWS = np.arange(1024, dtype=np.int64)


def every_row(count: int) -> np.ndarray:
    """0..count-1, from one array kept for the purpose (grown when a batch is bigger)."""
    global _ROWS
    if count > len(_ROWS):
        _ROWS = np.arange(2 * count, dtype=np.int64)
    return _ROWS[:count]


def _classify(batch: Batch, rows: np.ndarray, topology: Topology, *, drop: bool) -> np.ndarray:
    t = topology
    tunnelled = np.empty(len(rows), dtype=np.bool_)
    classify_rows(batch.meta, np.ascontiguousarray(rows, dtype=np.int64), t.port_index,
                  t.by_port_vlan, t.vni_keys, t.vni_attachment, t.attachment_segment,
                  t.segment_tenant, drop, tunnelled)
    return tunnelled


def classify(batch: Batch, topology: Topology) -> None:
    """Fill ``tenant``/``segment``/``attachment`` for the batch's rows; drop nothing.

    For the datapath to run after parse and before the flow cache lookup (the
    cache keys on ``tenant``); the stage's drops are left to the stage, where
    they are counted.
    """
    # Every row, dropped ones too (their columns are not read): no selection to build.
    _classify(batch, every_row(batch.count), topology, drop=False)


class Ingress:
    """The ingress classification stage (see the module's docstring)."""

    NAME: ClassVar[str] = "ingress"
    NEXT: ClassVar[tuple[str, ...]] = ("switch",)
    DROPS: ClassVar[type[IntEnum] | None] = IngressDrop

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        tunnelled = _classify(batch, rows, self.topology, drop=True)
        # Not cacheable: the flow key holds the outer headers of a tunnelled frame.
        decided.overflow[rows[tunnelled]] = True
        decision[:] = 0  # dropped rows leave anyway
