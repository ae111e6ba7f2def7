"""topology: a config's L2 shape compiled into the tables the datapath stages read.

Role. ``compile_topology(config)`` turns the desired state
(``portico.control.model.Config``) into NumPy tables that the ingress, switch
and output stages (and, after them, routing) index per packet: which segment a
frame entered, which tenant that is, where a MAC address lives, which VLAN an
egress needs. A ``Topology`` is immutable once built (its arrays are
read-only) and carries the ``generation`` it was compiled under; a config
change compiles a new one, the stages are handed it whole, and the flow
cache's generation is bumped so that no flow is decided by the old one.
Learned MAC addresses are not config and change per packet: they live in
``portico.datapath.mactable.MacTable``, one per topology.

Theory of operation.

*Segments.* A segment is an L2 broadcast domain: every switch of every tenant,
and every provider uplink (the provider router's link to the outside, tenant
0). Segments are numbered 0..n-1, the provider uplinks first (in config
order), then each tenant's switches (tenants and switches in config order), a
switch with no attachment included: it still has a number, a router interface
and static MACs, and may be attached by the next config. Per segment the
tables hold its tenant id (``segment_tenant``), the router's MAC on it
(``segment_router_mac``: the tenant router interface on that switch, or the
uplink's MAC; 0 when the segment has no router interface) and whether it
learns MACs (``segment_learning``). The router's addresses on each segment are
in ``router_addresses`` (one record per address, IPv4 in ``lo`` as in the flow
key) and, for the control plane, in ``segments[i].addresses``.

*Attachments.* An attachment is one place on the wire a segment owns: a
port's untagged frames, one VLAN of a port, or a VNI (``Config.segment_map``
lists them; a place belongs to one segment in the whole config). They are
numbered 0..m-1 in the same order, and the per-attachment tables
(``attachment_segment``, ``attachment_port``, ``attachment_vlan``,
``attachment_vni``) say where each is. The datapath works in attachments
rather than segments wherever a *place* matters: a MAC address lives behind
an attachment (a port and VLAN), an egress is an attachment (the port to send
on and the tag to put on), and a frame coming back to the attachment it came
from is an L2 hairpin.

*Lookups.* Ports are few but their ids are up to 65535, so a port id first
goes through ``port_index`` (id -> dense row, -1 for a port no segment uses),
and ``by_port_vlan[row, vid]`` is the attachment (or -1) for that port and
outer VLAN id, column 0 for untagged (and priority-tagged, VID 0) frames: one
gather per packet, 16 KiB per port. VNIs are many and sparse: ``vni_keys``
(sorted) and ``vni_attachment`` answer by binary search. Static MAC entries
are keyed ``segment << 48 | mac`` in ``static_keys`` (sorted) with their
attachment in ``static_attachment``, also by binary search; the key puts the
segment in the high bits because the same MAC in two segments (two tenants
reusing addresses) is two entries. The static arrays end with a sentinel
(``STATIC_SENTINEL``, no attachment) that no real key reaches, so a search
always has an entry to land on and its kernel reads both arrays on every path
(see ``mactable.static_lookup`` for why that matters).

Example::

    topology = compile_topology(load_config("examples/two-tenants.yaml"), generation=1)
    a_lan = topology.segment_of("a", "lan")
    topology.segment_at(port=1, vlan=10) == a_lan    # access port, VLAN 10
    topology.segment_tenant[a_lan]                   # 1
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface

import numpy as np

from portico.control.model import (
    PROVIDER_TENANT_ID,
    Config,
    IPInterface,
    Segment,
    Where,
)

VLAN_IDS = 4096  # columns of by_port_vlan: VID 0 (untagged or priority-tagged) .. 4095
NO_ATTACHMENT = -1
NO_SEGMENT = -1
NO_MAC = 0  # segment_router_mac of a segment without a router interface (0 is no MAC)
MAC_BITS = 48
STATIC_SENTINEL = (1 << 64) - 1  # the last static key: above any segment << 48 | mac

# One record per router address; IPv4 addresses in ``lo`` (``hi`` 0), as the flow key has them.
ROUTER_ADDRESS_DTYPE = np.dtype([
    ("segment", "i4"),
    ("version", "u1"),
    ("prefixlen", "u1"),
    ("hi", "u8"),
    ("lo", "u8"),
], align=True)


@dataclass(frozen=True, kw_only=True)
class SegmentInfo:
    """One segment as the control plane sees it (the stages read the arrays instead)."""

    id: int
    tenant: str | None  # None: a provider uplink
    tenant_id: int
    switch: str | None
    uplink: int | None
    router_mac: int  # NO_MAC without a router interface
    addresses: tuple[IPInterface, ...]
    attachments: tuple[int, ...]
    mac_learning: bool

    @property
    def key(self) -> Segment:
        """What names this segment across compiles (ids may change, names do not)."""
        return Segment(self.tenant, self.switch, self.uplink)

    @property
    def name(self) -> str:
        if self.tenant is None:
            return f"provider.uplinks[{self.uplink}]"
        return f"{self.tenant}.{self.switch}"


@dataclass(frozen=True, kw_only=True)
class AttachmentInfo:
    """One place a segment owns: a port (untagged or one VLAN), or a VNI."""

    id: int
    segment: int
    port: int | None  # a port id; None for a VNI
    vlan: int | None  # None: untagged
    vni: int | None

    @property
    def where(self) -> Where:
        return Where(self.port, self.vlan, self.vni)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, kw_only=True, eq=False)
class Topology:
    """The compiled L2 tables of one config generation; see the module's theory of operation."""

    generation: int
    segments: tuple[SegmentInfo, ...]
    attachments: tuple[AttachmentInfo, ...]
    # per segment
    segment_tenant: np.ndarray  # i4
    segment_router_mac: np.ndarray  # u8, NO_MAC for none
    segment_learning: np.ndarray  # bool
    # per attachment
    attachment_segment: np.ndarray  # i4
    attachment_port: np.ndarray  # i4, -1 for a VNI
    attachment_vlan: np.ndarray  # u2, 0 untagged
    attachment_vni: np.ndarray  # u4, 0 for a port
    # lookups
    port_index: np.ndarray  # i4 [max port id + 1] -> row of by_port_vlan, or -1
    by_port_vlan: np.ndarray  # i4 [ports, VLAN_IDS] -> attachment, or -1
    vni_keys: np.ndarray  # u4, sorted
    vni_attachment: np.ndarray  # i4
    static_keys: np.ndarray  # u8, sorted: segment << 48 | mac, then STATIC_SENTINEL
    static_attachment: np.ndarray  # i4 (-1 for the sentinel)
    router_addresses: np.ndarray  # ROUTER_ADDRESS_DTYPE

    @property
    def segment_count(self) -> int:
        return len(self.segments)

    def segment_of(self, tenant: str, switch: str) -> int:
        """The id of a tenant's switch; KeyError when the config has no such switch."""
        for segment in self.segments:
            if segment.tenant == tenant and segment.switch == switch:
                return segment.id
        raise KeyError(f"no switch {tenant}.{switch}")

    def uplink_segment(self, uplink: int) -> int:
        for segment in self.segments:
            if segment.tenant is None and segment.uplink == uplink:
                return segment.id
        raise KeyError(f"no provider uplink {uplink}")

    def attachment_at(self, port: int, vlan: int = 0) -> int:
        """The attachment of a port's untagged frames (vlan 0) or of one VLAN, or -1."""
        if not 0 <= port < len(self.port_index) or not 0 <= vlan < VLAN_IDS:
            return NO_ATTACHMENT
        row = int(self.port_index[port])
        return NO_ATTACHMENT if row < 0 else int(self.by_port_vlan[row, vlan])

    def attachment_of_vni(self, vni: int) -> int:
        at = int(np.searchsorted(self.vni_keys, vni))
        if at < len(self.vni_keys) and int(self.vni_keys[at]) == vni:
            return int(self.vni_attachment[at])
        return NO_ATTACHMENT

    def segment_at(self, port: int, vlan: int = 0) -> int:
        """The segment of a port's untagged frames (vlan 0) or of one VLAN, or -1."""
        attachment = self.attachment_at(port, vlan)
        return NO_SEGMENT if attachment < 0 else int(self.attachment_segment[attachment])

    def static_mac(self, segment: int, mac: int) -> int:
        """The attachment a static entry puts ``mac`` behind in ``segment``, or -1."""
        key = segment << MAC_BITS | mac
        at = int(np.searchsorted(self.static_keys, np.uint64(key)))
        if at < len(self.static_keys) and int(self.static_keys[at]) == key:
            return int(self.static_attachment[at])
        return NO_ATTACHMENT


def compile_topology(config: Config, *, generation: int = 1) -> Topology:
    """The L2 tables of ``config`` (a validated ``Config``, so places are unique and known)."""
    ids = config.port_ids()
    places = config.segment_map()
    segments: list[SegmentInfo] = []
    attachments: list[AttachmentInfo] = []
    static: list[tuple[int, int]] = []  # (key, attachment)

    def attach(segment: int, where: Where) -> int:
        attachment = AttachmentInfo(id=len(attachments), segment=segment, port=where.port,
                                    vlan=where.vlan, vni=where.vni)
        attachments.append(attachment)
        return attachment.id

    def place_of(port: str | None, vlan: int | None, vni: int | None) -> Where:
        return Where(None if port is None else ids[port], vlan, vni)

    for u, uplink in enumerate(config.provider.router.uplinks):
        sid = len(segments)
        segments.append(SegmentInfo(
            id=sid, tenant=None, tenant_id=PROVIDER_TENANT_ID, switch=None, uplink=u,
            router_mac=uplink.mac, addresses=tuple(uplink.addresses),
            attachments=(attach(sid, place_of(*uplink.place)),), mac_learning=True,
        ))
    for tname, tenant in config.tenants.items():
        interfaces = {iface.switch: iface for iface in tenant.router.interfaces}
        for sname, switch in tenant.switches.items():
            sid = len(segments)
            owned = {a.place: attach(sid, place_of(*a.place)) for a in switch.attach}
            for entry in switch.static_macs:  # the model checked the place is attached here
                static.append((sid << MAC_BITS | entry.mac, owned[entry.place]))
            iface = interfaces.get(sname)
            segments.append(SegmentInfo(
                id=sid, tenant=tname, tenant_id=tenant.id, switch=sname, uplink=None,
                router_mac=NO_MAC if iface is None else iface.mac,
                addresses=() if iface is None else tuple(iface.addresses),
                attachments=tuple(owned.values()), mac_learning=switch.mac_learning,
            ))

    # The model's own map of places must say the same (it is what validation checked).
    if {a.where: segments[a.segment].key for a in attachments} != places:
        raise AssertionError("compile_topology: attachments disagree with Config.segment_map()")

    port_ids = sorted({a.port for a in attachments if a.port is not None})
    port_index = np.full(max(port_ids, default=-1) + 1, -1, dtype=np.int32)
    port_index[port_ids] = np.arange(len(port_ids), dtype=np.int32)
    by_port_vlan = np.full((len(port_ids), VLAN_IDS), NO_ATTACHMENT, dtype=np.int32)
    vnis: list[tuple[int, int]] = []
    for a in attachments:
        if a.port is not None:
            by_port_vlan[port_index[a.port], a.vlan or 0] = a.id
        else:
            assert a.vni is not None
            vnis.append((a.vni, a.id))
    vnis.sort()
    static.sort()
    static.append((STATIC_SENTINEL, NO_ATTACHMENT))

    addresses = [(s.id, address) for s in segments for address in s.addresses]
    router_addresses = np.zeros(len(addresses), dtype=ROUTER_ADDRESS_DTYPE)
    for k, (sid, address) in enumerate(addresses):
        value = int(address.ip)
        router_addresses[k] = (sid, address.version, address.network.prefixlen,
                               0 if isinstance(address, IPv4Interface) else value >> 64,
                               value & (1 << 64) - 1)

    return Topology(
        generation=generation,
        segments=tuple(segments),
        attachments=tuple(attachments),
        segment_tenant=_frozen(np.array([s.tenant_id for s in segments], dtype=np.int32)),
        segment_router_mac=_frozen(np.array([s.router_mac for s in segments], dtype=np.uint64)),
        segment_learning=_frozen(np.array([s.mac_learning for s in segments], dtype=np.bool_)),
        attachment_segment=_frozen(np.array([a.segment for a in attachments], dtype=np.int32)),
        attachment_port=_frozen(np.array(
            [-1 if a.port is None else a.port for a in attachments], dtype=np.int32)),
        attachment_vlan=_frozen(np.array([a.vlan or 0 for a in attachments], dtype=np.uint16)),
        attachment_vni=_frozen(np.array([a.vni or 0 for a in attachments], dtype=np.uint32)),
        port_index=_frozen(port_index),
        by_port_vlan=_frozen(by_port_vlan),
        vni_keys=_frozen(np.array([v for v, _ in vnis], dtype=np.uint32)),
        vni_attachment=_frozen(np.array([a for _, a in vnis], dtype=np.int32)),
        static_keys=_frozen(np.array([k for k, _ in static], dtype=np.uint64)),
        static_attachment=_frozen(np.array([a for _, a in static], dtype=np.int32)),
        router_addresses=_frozen(router_addresses),
    )
