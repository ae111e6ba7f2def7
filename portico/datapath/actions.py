"""Actions: what a flow's stages decided, as data, and the one step that applies them.

Theory of operation. The stages of the miss path each decide something about a
packet (route it out of port 3, translate its source, decrement its TTL, push
a VLAN tag); the flow cache remembers the sum of those decisions for the flow
and later packets of the flow get them without running the stages. Both paths
need one representation of "the sum of the decisions" and one way to carry it
out, or they drift apart. That representation is an ``Action``: a record of
rewrites plus an output port or a drop reason, declared below as a NumPy
structured dtype so a table of them is one array. ``ActionTable`` interns them
(equal actions share an id, so a thousand flows through one NAT rule carry one
action), and ``apply`` carries out the actions of a whole batch in one
compiled pass, the same for a cache hit and for a freshly synthesized entry.

The order inside one action is fixed, the order a packet would meet the
operations on its way through the stages: pop VLAN; IPv4 source and
destination rewrite, transport ports (or the ICMP echo identifier), TTL
decrement; Ethernet addresses; push VLAN; output. Checksums are kept valid
incrementally (RFC 1624): the IPv4 header checksum for address and TTL
changes, and the TCP/UDP checksum for addresses (they are in the
pseudo-header) and ports; a UDP checksum of zero (none, over IPv4) stays zero.
The metadata columns follow the packet (``src4``, ``sport``, ``ttl``,
``vlan_*``, ``start``), so a later stage or the next parse sees what is on the
wire.

A VLAN push moves only the two MAC addresses four bytes into the headroom and
writes the tag behind them; the rest of the packet stays where it is, so the
absolute header offsets in the metadata remain right.

Address and port rewrites are IPv4 only for now (NAT64 and NPTv6 would add
IPv6 fields); DEC_TTL decrements an IPv6 hop limit too (no checksum covers
it). A row whose packet does not have what an operation needs (a port
rewrite on a non-first fragment, a TTL decrement on a non-IP packet) is
dropped with a named reason rather than half-rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.packet.checksum import update16, update32
from portico.packet.ipv6 import IPv6


class Op(IntFlag):
    """Operations an action may carry; several at once, applied in the order above."""

    POP_VLAN = 1 << 0
    SET_IP_SRC = 1 << 1
    SET_IP_DST = 1 << 2
    SET_SPORT = 1 << 3  # TCP/UDP source port, or the ICMP echo identifier
    SET_DPORT = 1 << 4
    DEC_TTL = 1 << 5
    SET_ETH_SRC = 1 << 6
    SET_ETH_DST = 1 << 7
    PUSH_VLAN = 1 << 8
    OUTPUT = 1 << 9
    DROP = 1 << 10


class ActionDrop(IntEnum):
    """Why applying an action dropped a packet (codes 64..79 belong to actions)."""

    TTL_EXPIRED = 64  # the stages should have answered with ICMP time exceeded first
    NOT_IPV4 = 65  # an IPv4 rewrite on a packet without an IPv4 header
    NO_TRANSPORT = 66  # a port rewrite on a packet without ports (a non-first fragment)
    NO_VLAN = 67  # pop on an untagged packet
    NO_HEADROOM = 68  # push with no room left in front of the packet
    NO_ACTION = 69  # the row carries no action id, or one the table does not have


drops.register("actions", ActionDrop)

# Declared once: the fields of an action record. ``reason`` is the drop reason of
# a DROP action (any stage's registered code).
ACTION_DTYPE = np.dtype([
    ("ops", "u4"),
    ("ip_src", "u4"),
    ("ip_dst", "u4"),
    ("sport", "u2"),
    ("dport", "u2"),
    ("eth_src", "u8"),
    ("eth_dst", "u8"),
    ("vlan_tci", "u2"),
    ("out_port", "i4"),
    ("reason", "u1"),
], align=True)

OPS = {str(op.name).lower(): op for op in Op}

D_TTL = int(ActionDrop.TTL_EXPIRED)
D_NOT_IPV4 = int(ActionDrop.NOT_IPV4)
D_NO_TRANSPORT = int(ActionDrop.NO_TRANSPORT)
D_NO_VLAN = int(ActionDrop.NO_VLAN)
D_NO_HEADROOM = int(ActionDrop.NO_HEADROOM)
D_NO_ACTION = int(ActionDrop.NO_ACTION)
POP_VLAN, SET_IP_SRC, SET_IP_DST = int(Op.POP_VLAN), int(Op.SET_IP_SRC), int(Op.SET_IP_DST)
SET_SPORT, SET_DPORT, DEC_TTL = int(Op.SET_SPORT), int(Op.SET_DPORT), int(Op.DEC_TTL)
SET_ETH_SRC, SET_ETH_DST, PUSH_VLAN = int(Op.SET_ETH_SRC), int(Op.SET_ETH_DST), int(Op.PUSH_VLAN)
OUTPUT, DROP = int(Op.OUTPUT), int(Op.DROP)
IP_OPS = SET_IP_SRC | SET_IP_DST | DEC_TTL | SET_SPORT | SET_DPORT
IP6_HOPS = IPv6.at("hop_limit").offset
IP4_OPS = IP_OPS & ~DEC_TTL  # rewrites IPv4 only; DEC_TTL also takes an IPv6 hop limit
PORT_OPS = SET_SPORT | SET_DPORT


@dataclass(frozen=True, kw_only=True)
class Action:
    """One action, as the stages build it; ``ActionTable.add`` turns it into a record."""

    ops: Op = Op(0)
    ip_src: int = 0
    ip_dst: int = 0
    sport: int = 0
    dport: int = 0
    eth_src: int = 0
    eth_dst: int = 0
    vlan_tci: int = 0
    out_port: int = -1
    reason: int = 0

    def __post_init__(self) -> None:
        if Op.OUTPUT in self.ops and Op.DROP in self.ops:
            raise ValueError("action: output and drop exclude each other")
        if Op.DROP in self.ops and not 0 < self.reason < 256:
            raise ValueError(f"action.reason: a drop needs a reason code 1..255, got {self.reason}")
        if Op.OUTPUT in self.ops and self.out_port < 0:
            raise ValueError(f"action.out_port: output needs a port, got {self.out_port}")
        for name, bits in (("ip_src", 32), ("ip_dst", 32), ("sport", 16), ("dport", 16),
                           ("eth_src", 48), ("eth_dst", 48), ("vlan_tci", 16)):
            value = getattr(self, name)
            if not 0 <= value < 1 << bits:
                raise ValueError(f"action.{name}: {value} does not fit in {bits} bits")


ACTION_WORDS = ACTION_DTYPE.itemsize // 8  # a record as uint64 words (padding zeroed)
EMPTY = -1


@njit(cache=True)
def _intern(words, table, slots, count):  # type: ignore[no-untyped-def]
    """The id of each record in ``words`` (rows of ACTION_WORDS uint64), adding the new
    ones to ``table`` from ``count[0]`` on; ``slots`` is the open-addressing index
    (linear probing, ids, EMPTY for none). The caller leaves room for every row."""
    n = words.shape[0]
    width = words.shape[1]
    mask = slots.shape[0] - 1
    ids = np.empty(n, dtype=np.int64)
    for k in range(n):
        h = np.uint64(0x9E3779B97F4A7C15)
        for w in range(width):
            h = (h ^ words[k, w]) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
        j = np.int64(h & np.uint64(mask))
        while True:
            found = slots[j]
            if found == EMPTY:
                found = count[0]
                count[0] += 1
                for w in range(width):
                    table[found, w] = words[k, w]
                slots[j] = found
                break
            same = True
            for w in range(width):
                if table[found, w] != words[k, w]:
                    same = False
                    break
            if same:
                break
            j = (j + 1) & mask
        ids[k] = found
    return ids


def normalized(records: np.ndarray) -> np.ndarray:
    """Records as the table keeps them: a drop carries nothing but its reason, and the
    port of a record without OUTPUT is -1, so equal decisions are equal bytes."""
    out = np.zeros(len(records), dtype=ACTION_DTYPE)  # zeroed padding too
    for name in ACTION_DTYPE.names or ():
        out[name] = records[name]
    drop = (out["ops"] & DROP) != 0
    if drop.any():
        reasons = out["reason"][drop]
        out[drop] = np.zeros(1, dtype=ACTION_DTYPE)[0]
        out["ops"][drop] = DROP
        out["reason"][drop] = reasons
    out["out_port"][(out["ops"] & OUTPUT) == 0] = -1
    return out


class ActionTable:
    """Interned actions: equal actions share one id; ids index ``records``.

    Interning is one compiled pass over a batch's records (``add_records``): each
    record's bytes are hashed into an open-addressing index over the table, so a
    batch of new flows costs no Python per flow. ``add`` is the scalar way in.
    """

    def __init__(self, capacity: int = 64) -> None:
        capacity = 1 << max(4, (capacity - 1).bit_length())
        self.records = np.zeros(capacity, dtype=ACTION_DTYPE)
        self._slots = np.full(2 * capacity, EMPTY, dtype=np.int64)
        self._count = np.zeros(1, dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self._count[0])

    def _reserve(self, more: int) -> None:
        need = self.count + more
        if need <= len(self.records):
            return
        capacity = 1 << (need - 1).bit_length()
        grown = np.zeros(capacity, dtype=ACTION_DTYPE)
        grown[: self.count] = self.records[: self.count]
        self.records = grown
        self._slots = np.full(2 * capacity, EMPTY, dtype=np.int64)
        existing = self.records[: self.count].view(np.uint64).reshape(-1, ACTION_WORDS)
        rebuilt = np.zeros(1, dtype=np.int64)
        _intern(existing, grown.view(np.uint64).reshape(-1, ACTION_WORDS), self._slots, rebuilt)

    def add_records(self, records: np.ndarray) -> np.ndarray:
        """The id of each ``ACTION_DTYPE`` record, interning the new ones."""
        records = normalized(records)
        self._reserve(len(records))
        words = records.view(np.uint64).reshape(-1, ACTION_WORDS)
        table = self.records.view(np.uint64).reshape(-1, ACTION_WORDS)
        return _intern(words, table, self._slots, self._count)  # type: ignore[no-any-return]

    def add(self, action: Action) -> int:
        record = np.zeros(1, dtype=ACTION_DTYPE)
        for name in ACTION_DTYPE.names or ():
            record[name] = int(getattr(action, name))
        return int(self.add_records(record)[0])

    def __len__(self) -> int:
        return self.count


# The big-endian field accessors of the rewriting kernels (here, icmp_quote).
@njit(cache=True, inline="always")
def get16(data, i, at):  # type: ignore[no-untyped-def]
    return (np.int64(data[i, at]) << 8) | np.int64(data[i, at + 1])


@njit(cache=True, inline="always")
def put16(data, i, at, value):  # type: ignore[no-untyped-def]
    data[i, at] = (value >> 8) & 0xFF
    data[i, at + 1] = value & 0xFF


@njit(cache=True, inline="always")
def _put32(data, i, at, value):  # type: ignore[no-untyped-def]
    put16(data, i, at, (value >> 16) & 0xFFFF)
    put16(data, i, at + 2, value & 0xFFFF)


@njit(cache=True, inline="always")
def _put48(data, i, at, value):  # type: ignore[no-untyped-def]
    put16(data, i, at, (value >> 32) & 0xFFFF)
    _put32(data, i, at + 2, value & 0xFFFFFFFF)


@njit(cache=True, inline="always")
def _set_address(data, i, at, old, new, ip_sum, l4_sum, in_pseudo_header):  # type: ignore[no-untyped-def]
    """Write an IPv4 address; return the header and transport checksums updated for it."""
    _put32(data, i, at, new)
    if in_pseudo_header:  # TCP and UDP sum the addresses too
        l4_sum = update32(l4_sum, old, new)
    return update32(ip_sum, old, new), l4_sum


@njit(cache=True)
def apply_kernel(data, meta, rows, action_ids, records, count):  # type: ignore[no-untyped-def]
    """Apply ``records[action_ids[k]]`` to packet ``rows[k]`` for k < count."""
    n_records = records.shape[0]
    for k in range(count):
        i = rows[k]
        m = meta[i]
        if m.drop != 0:
            continue
        aid = action_ids[k]
        if aid < 0 or aid >= n_records:
            m.drop = D_NO_ACTION
            continue
        a = records[aid]
        ops = np.int64(a.ops)
        if ops & DROP:
            m.drop = a.reason
            continue
        # Check everything first, so a packet is rewritten wholly or not at all.
        if ops & POP_VLAN and m.vlan_count == 0:
            m.drop = D_NO_VLAN
            continue
        if ops & IP_OPS and (m.l3 < 0 or (ops & IP4_OPS and m.ip_version != 4)
                             or m.ip_version == 0):
            m.drop = D_NOT_IPV4
            continue
        proto = np.int64(m.protocol)
        has_ports = m.l4 >= 0 and (proto == 6 or proto == 17)
        is_echo = m.l4 >= 0 and (proto == 1 and (m.icmp_type == 0 or m.icmp_type == 8))
        if ops & PORT_OPS and not (has_ports or (is_echo and not ops & SET_DPORT)):
            m.drop = D_NO_TRANSPORT
            continue
        if ops & DEC_TTL and m.ttl <= 1:
            m.drop = D_TTL
            continue
        if ops & PUSH_VLAN and m.start - (4 if not ops & POP_VLAN else 0) < 0:
            m.drop = D_NO_HEADROOM
            continue

        start = np.int64(m.start)
        if ops & POP_VLAN:  # move the MACs over the first tag
            for b in range(11, -1, -1):
                data[i, start + 4 + b] = data[i, start + b]
            start += 4
            m.length -= 4
            m.vlan_count -= 1
            m.vlan_outer = m.vlan_inner
            m.vlan_inner = 0
        l3 = np.int64(m.l3)
        l4 = np.int64(m.l4)
        if ops & DEC_TTL and m.ip_version == 6:  # the hop limit; no header checksum
            data[i, l3 + IP6_HOPS] -= 1
            m.ttl -= 1
        elif ops & IP_OPS:
            ip_sum = get16(data, i, l3 + 10)
            l4_at = -1
            if has_ports:
                l4_at = l4 + (16 if proto == 6 else 6)
            elif is_echo:
                l4_at = l4 + 2
            l4_sum = get16(data, i, l4_at) if l4_at >= 0 else 0
            udp_none = proto == 17 and l4_sum == 0  # IPv4 UDP without a checksum
            if ops & SET_IP_SRC:
                ip_sum, l4_sum = _set_address(data, i, l3 + 12, np.int64(m.src4),
                                              np.int64(a.ip_src), ip_sum, l4_sum, has_ports)
                m.src4 = a.ip_src
            if ops & SET_IP_DST:
                ip_sum, l4_sum = _set_address(data, i, l3 + 16, np.int64(m.dst4),
                                              np.int64(a.ip_dst), ip_sum, l4_sum, has_ports)
                m.dst4 = a.ip_dst
            if ops & SET_SPORT:
                at = l4 + 4 if is_echo else l4  # the echo identifier, or the source port
                old = get16(data, i, at)
                l4_sum = update16(l4_sum, old, np.int64(a.sport))
                put16(data, i, at, np.int64(a.sport))
                m.sport = a.sport
                if is_echo:
                    m.dport = a.sport
            if ops & SET_DPORT:
                old = get16(data, i, l4 + 2)
                l4_sum = update16(l4_sum, old, np.int64(a.dport))
                put16(data, i, l4 + 2, np.int64(a.dport))
                m.dport = a.dport
            if ops & DEC_TTL:  # TTL shares a 16-bit word with the protocol
                old = get16(data, i, l3 + 8)
                ip_sum = update16(ip_sum, old, old - 0x100)
                data[i, l3 + 8] -= 1
                m.ttl -= 1
            put16(data, i, l3 + 10, ip_sum)
            if l4_at >= 0 and not udp_none:
                if proto == 17 and l4_sum == 0:
                    l4_sum = 0xFFFF
                put16(data, i, l4_at, l4_sum)
        if ops & SET_ETH_DST:
            _put48(data, i, start, np.int64(a.eth_dst))
        if ops & SET_ETH_SRC:
            _put48(data, i, start + 6, np.int64(a.eth_src))
        if ops & PUSH_VLAN:  # MACs four bytes forward, then the tag behind them
            for b in range(12):
                data[i, start - 4 + b] = data[i, start + b]
            start -= 4
            put16(data, i, start + 12, 0x8100)
            put16(data, i, start + 14, np.int64(a.vlan_tci))
            m.length += 4
            m.vlan_inner = m.vlan_outer if m.vlan_count else 0
            m.vlan_outer = a.vlan_tci & 0x0FFF
            m.vlan_count += 1
        m.start = start
        m.l2 = start
        if ops & OUTPUT:
            m.out_port = a.out_port


def apply(batch: Batch, rows: np.ndarray, action_ids: np.ndarray, table: ActionTable) -> None:
    """Apply the table's actions ``action_ids[k]`` to ``rows[k]`` of the batch."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    ids = np.ascontiguousarray(action_ids, dtype=np.int64)
    if len(rows) != len(ids):
        raise ValueError(f"apply: {len(rows)} rows but {len(ids)} action ids")
    apply_kernel(batch.data, batch.meta, rows, ids, table.records[: table.count], len(rows))
