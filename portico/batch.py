"""The Batch: the datapath's currency, a vector of packets plus their metadata columns.

Like VPP's frames and DPDK's bursts, every stage takes a whole Batch and works
on all its rows at once. A Batch holds

* ``data``: a 2-D ``uint8`` array, one fixed-size slot per packet. A packet
  starts ``headroom`` bytes into its slot (``meta["start"]``), so a stage can push
  an encapsulation by moving ``start`` back instead of copying the packet.
  Slot size is configurable (2 KiB default; jumbo frames need ~9.3 KiB).
* ``meta``: one NumPy structured array, a record per packet. Each field is a
  column (``batch.meta["dport"]`` is a NumPy view over all rows). It is one
  array rather than forty because a Numba kernel pays per argument at call
  time: measured here, forty separate arrays cost ~6 µs a call, one record
  array ~0.5 µs, and at batch 256 that difference is the whole budget.

Header offsets in ``meta`` (``l2``, ``l3``, ``l4``, ``payload`` and the inner
ones) are absolute byte positions in the slot, so they stay valid when a
header is pushed in front; -1 means "absent". Addresses: ``src4``/``dst4``
for IPv4, ``src6_hi``/``src6_lo`` (and ``dst6_…``) as two 64-bit halves for IPv6,
scalar columns rather than a (2,) sub-array because a kernel writes a scalar
field directly but builds a view for every sub-array access.

``tenant``, ``segment``, ``attachment`` and ``out_attachment`` are not read
from the packet: the ingress stage fills the first three from where the frame
came in, and the stage that picks the egress (switch, route) sets the last
(``portico.datapath.topology`` numbers segments and attachments).

``drop`` holds a drop reason (0 = not dropped); the reasons are declared by the
stage that sets them (``portico.datapath.stages.parse.ParseDrop`` for parsing) and
named through ``portico.drops``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numba import njit

DEFAULT_SLOT = 2048
DEFAULT_HEADROOM = 128
JUMBO_SLOT = 9216 + DEFAULT_HEADROOM + 64

NO_PORT = -1
ABSENT = -1

# name, dtype, meaning. Declared once; META_DTYPE and the docs derive from it.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("start", "i4", "offset of the packet's first byte in its slot"),
    ("length", "i4", "bytes of packet in the slot (captured length)"),
    ("wire_length", "i4", "length on the wire (pcap orig_len); >= length"),
    ("timestamp", "i8", "receive time, ns since the epoch"),
    ("port", "i4", "ingress port"),
    ("out_port", "i4", "egress port, -1 for none yet"),
    ("tenant", "i4", "tenant id, -1 for none yet"),
    ("segment", "i4", "L2 segment entered (portico.datapath.topology), -1 for none yet"),
    ("attachment", "i4", "topology attachment entered by (port and VLAN, or VNI), -1 none yet"),
    ("out_attachment", "i4", "topology attachment to leave by, -1 for none yet"),
    ("drop", "u1", "drop reason code, 0 = not dropped"),
    ("trace", "u1", "1 = record every stage's decision for this packet"),
    ("vlan_count", "u1", "VLAN tags seen (0, 1, 2 for QinQ)"),
    ("ip_version", "u1", "4, 6, or 0"),
    ("layers", "u4", "bitmask of portico.packet.layers.Layer seen (inner at +16)"),
    ("l2", "i4", "Ethernet header offset"),
    ("l3", "i4", "IP (or ARP) header offset"),
    ("l4", "i4", "transport header offset (after IPv6 extension headers)"),
    ("payload", "i4", "offset of what follows the last decoded header"),
    ("ethertype", "u2", "ethertype after any VLAN tags"),
    ("eth_dst", "u8", "destination MAC of the (outer) frame, 48 bits; 0 when too short"),
    ("vlan_outer", "u2", "VID of the first tag (S-tag with QinQ)"),
    ("vlan_inner", "u2", "VID of the second tag (C-tag with QinQ)"),
    ("protocol", "u1", "IP protocol / IPv6 next header of the transport"),
    ("ttl", "u1", "IPv4 TTL or IPv6 hop limit"),
    ("tos", "u1", "IPv4 TOS or IPv6 traffic class"),
    ("frag", "u1", "1 = first fragment, 2 = non-first fragment, 0 = not fragmented"),
    ("l3_length", "u2", "IP total length (IPv6: 40 + payload length)"),
    ("src4", "u4", "IPv4 source"),
    ("dst4", "u4", "IPv4 destination"),
    ("src6_hi", "u8", "IPv6 source, high 64 bits"),
    ("src6_lo", "u8", "IPv6 source, low 64 bits"),
    ("dst6_hi", "u8", "IPv6 destination, high 64 bits"),
    ("dst6_lo", "u8", "IPv6 destination, low 64 bits"),
    ("sport", "u2", "transport source port (ICMP echo: the identifier)"),
    ("dport", "u2", "transport destination port (ICMP echo: the identifier)"),
    ("tcp_flags", "u1", "TCP flags"),
    ("icmp_type", "u1", "ICMP/ICMPv6 type"),
    ("icmp_code", "u1", "ICMP/ICMPv6 code"),
    ("tunnel", "u1", "Layer of the tunnel header (VXLAN, GENEVE, GTPU, GRE) or 0"),
    ("tunnel_id", "u4", "VNI, TEID or GRE key"),
    ("inner_l2", "i4", "inner Ethernet offset (VXLAN, Geneve, GRE TEB)"),
    ("inner_l3", "i4", "inner IP offset"),
    ("inner_l4", "i4", "inner transport offset"),
    ("inner_ip_version", "u1", "4, 6, or 0"),
    ("inner_protocol", "u1", "inner IP protocol"),
    ("inner_tcp_flags", "u1", "inner TCP flags"),
    ("inner_src4", "u4", "inner IPv4 source"),
    ("inner_dst4", "u4", "inner IPv4 destination"),
    ("inner_src6_hi", "u8", "inner IPv6 source, high 64 bits"),
    ("inner_src6_lo", "u8", "inner IPv6 source, low 64 bits"),
    ("inner_dst6_hi", "u8", "inner IPv6 destination, high 64 bits"),
    ("inner_dst6_lo", "u8", "inner IPv6 destination, low 64 bits"),
    ("inner_sport", "u2", "inner transport source port"),
    ("inner_dport", "u2", "inner transport destination port"),
    ("flow_hash", "u4", "hash of the (outer) 5-tuple, symmetric in direction"),
)

META_DTYPE = np.dtype([(name, dtype) for name, dtype, _ in COLUMNS], align=True)

# What a freshly received row holds before parsing; -1 for offsets and ports.
_RESET = np.zeros(1, dtype=META_DTYPE)
for _name in (
    "out_port",
    "tenant",
    "segment",
    "attachment",
    "out_attachment",
    "l2",
    "l3",
    "l4",
    "payload",
    "inner_l2",
    "inner_l3",
    "inner_l4",
):
    _RESET[_name] = -1


@njit(cache=True)
def _keep_rows(data, meta, keep, count):  # type: ignore[no-untyped-def]
    """Move the kept rows of [0, count) to the front, in order; return how many."""
    kept = 0
    for i in range(count):
        if not keep[i]:
            continue
        if kept != i:
            end = meta[i].start + meta[i].length
            data[kept, :end] = data[i, :end]
            meta[kept] = meta[i]
        kept += 1
    return kept


class Batch:
    """A fixed-capacity vector of packet slots and their metadata.

    ``count`` rows are in use; columns beyond it are stale and ignored.
    """

    __slots__ = ("data", "meta", "count", "headroom", "_fresh")

    def __init__(
        self,
        capacity: int = 256,
        *,
        slot_size: int = DEFAULT_SLOT,
        headroom: int = DEFAULT_HEADROOM,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"batch capacity must be positive, got {capacity}")
        if not 0 <= headroom < slot_size - 64:
            raise ValueError(f"headroom {headroom} leaves no room in a {slot_size}-byte slot")
        if slot_size > 32767:
            raise ValueError(f"slot size {slot_size} is over the 32767-byte limit")
        self.data = np.zeros((capacity, slot_size), dtype=np.uint8)
        self.meta = np.zeros(capacity, dtype=META_DTYPE)
        self.count = 0
        self.headroom = headroom
        # reset() copies these bytes: assigning one record to every row is ~40x slower.
        self._fresh = np.repeat(_RESET, capacity)
        self._fresh["start"] = headroom

    @property
    def capacity(self) -> int:
        return int(self.data.shape[0])

    @property
    def slot_size(self) -> int:
        return int(self.data.shape[1])

    @property
    def max_packet(self) -> int:
        """Largest packet a slot takes as received (slot less headroom)."""
        return self.slot_size - self.headroom

    def reset(self, count: int) -> None:
        """Make rows [0, count) fresh: metadata cleared, packets starting at the headroom."""
        if not 0 <= count <= self.capacity:
            raise ValueError(f"count {count} outside batch capacity {self.capacity}")
        size = count * META_DTYPE.itemsize
        self.meta.view(np.uint8)[:size] = self._fresh.view(np.uint8)[:size]
        self.count = count

    def rows(self) -> np.ndarray:
        return np.arange(self.count, dtype=np.intp)

    def remove(self, rows: np.ndarray) -> None:
        """Take ``rows`` out of the batch; the others move up in order (a row's slot is
        copied only as far as its packet ends). For the rare rows a port hands
        elsewhere before the datapath runs (in-band management's punts)."""
        if not len(rows):
            return
        keep = np.ones(self.count, dtype=np.bool_)
        keep[rows] = False
        self.count = int(_keep_rows(self.data, self.meta, keep, self.count))

    def packet(self, row: int) -> bytes:
        """One packet's bytes (a copy): for tests, traces and the scalar control plane."""
        start = int(self.meta["start"][row])
        return bytes(self.data[row, start : start + int(self.meta["length"][row])])

    def packets(self) -> list[bytes]:
        return [self.packet(row) for row in range(self.count)]

    @classmethod
    def from_packets(
        cls,
        packets: Iterable[bytes],
        *,
        port: int = 0,
        slot_size: int = DEFAULT_SLOT,
        headroom: int = DEFAULT_HEADROOM,
    ) -> Batch:
        """Fill a new Batch from byte strings (tests and the control plane; not a fast path).

        A packet longer than the slot allows is truncated to fit, with ``wire_length``
        keeping its real length, as a capture with a snap length would.
        """
        packets = list(packets)
        batch = cls(max(1, len(packets)), slot_size=slot_size, headroom=headroom)
        batch.reset(len(packets))
        room = batch.max_packet
        for row, pkt in enumerate(packets):
            n = min(len(pkt), room)
            batch.data[row, headroom : headroom + n] = np.frombuffer(pkt[:n], dtype=np.uint8)
            batch.meta["length"][row] = n
            batch.meta["wire_length"][row] = len(pkt)
        batch.meta["port"][: len(packets)] = port
        return batch
