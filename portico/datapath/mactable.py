"""mactable: the MAC addresses each segment has learned, and the attachment each lives behind.

Role. The switch stage learns a frame's source MAC where the frame came in,
and looks its destination MAC up to find where to send it; routing later looks
up a next hop's MAC the same way (``locate``). Static entries are config and
live in the ``Topology`` (``static_keys``); this table holds what traffic
taught, so it is mutable, one per topology, and owned by the datapath's miss
path.

Theory of operation.

*Shape.* Every segment has a region of its own of ``capacity`` slots (a power
of two), split into buckets of ``WAYS = 8``; a MAC lives only in the bucket
its seeded hash picks within its segment's region. A slot is one record
(``SLOT_DTYPE``: the MAC, 0 for a free slot; the attachment; a learn stamp).
Regions rather than one shared table because tenants must not be able to
touch each other's entries: a host spraying random source MACs fills and
churns its own segment's region and nothing else, which matters more here
than in a flooding switch, since an entry lost means dropped traffic (see
*Refresh and aging*). The hash is seeded per table so that a sender cannot
aim MACs at one bucket to push a neighbour's entry out (``seed=`` fixes it).

*Learning* (``learn_one``, row by row in arrival order, from the switch
kernel): a source MAC already in the bucket is refreshed, and *moved* if it
now comes from another attachment; a new one takes a free slot, or else the
bucket's least recently learned entry (an *eviction*). Never learned: group
(multicast, broadcast) and all-zero sources, the segment's own router MAC, a
MAC the segment has a static entry for (static wins: a host claiming it from
elsewhere is *refused*, counted), and anything in a segment with
``mac_learning: false``. Stamps are a per-table sequence number, not time:
eviction needs only an order, and capture timestamps can repeat or go back.

*What the flow cache must hear.* A decision made from this table is cached
with a dependency tag (``decided.add_tag``), so the table reports, after each
change, the tags whose flows must be re-decided (``take_changed_tags``; the
owner passes them to ``FlowCache.invalidate_tags`` before the next lookup):

* a move or an eviction: ``tag(TAG_KIND, slot)`` (the slot's index in the
  whole table) - every flow switched to the MAC through that slot;
* a new MAC in segment s: ``tag(TAG_KIND, UNKNOWN + s)`` - every flow that was
  dropped as unknown unicast in s, since the new MAC may be its destination.

One tag for a whole segment's unknown destinations keeps the tag small (an
entry holds four), at the price of a sweep over the cache whenever a segment
learns anything new; in a steady state that is rare. Packets the cache
decides in the batch that brings a change were looked up before the stages
ran, so they still get the old decision; the next batch gets the new one.

*Refresh and aging.* Learning happens on the miss path only: a packet the
cache decides never reaches the switch stage, so a host whose flows are all
cached is not refreshed. Two consequences, both chosen:

1. there is no time-based aging. An 802.1D bridge forgets after 300 s, which
   would here forget a host in the middle of a long, fully cached flow, and a
   forgotten destination is *dropped* (no flooding), not flooded. Entries go
   only when they move, or when their bucket is full and they are the least
   recently learned.
2. under bucket pressure the least recently *learned* entry may belong to a
   host that is busy but fully cached; traffic to it is then dropped as
   unknown unicast until it sends something the stages see (an ARP, a TCP
   SYN or FIN, a new flow, a flow whose cache entry expired). Refreshing from
   the hit path (the source MAC slot as one more tag on each flow, kept alive
   while the cache holds a live entry carrying it) would close this; it costs
   a tag per flow and is not done.

Moves are caught all the same: the ingress port and VLAN are in the flow key,
so a host's flows from a new place are new flows, seen by the stages.

Example::

    macs = MacTable(topology, capacity=1024)
    macs.learn(segments, source_macs, attachments)       # vectorized, in row order
    where, tags = macs.locate(segments, destination_macs) # -1 where unknown
    cache.invalidate_tags(macs.take_changed_tags())
"""

from __future__ import annotations

import os
from enum import IntEnum

import numpy as np
from numba import njit

from portico.datapath.flowcache import NO_TAG, TagKind
from portico.datapath.topology import MAC_BITS, NO_ATTACHMENT, Topology

WAYS = 8
DEFAULT_CAPACITY = 1024  # slots per segment: ~24 KiB
GROUP_BIT = 1 << 40  # the I/G bit of the first octet: multicast and broadcast
TAG_KIND = TagKind.MAC  # the MAC tags' namespace
TAG_BASE = int(TAG_KIND) << 28
UNKNOWN = 1 << 27  # tag idents: a slot is 0..UNKNOWN-1, "unknown in segment s" UNKNOWN + s

SLOT_DTYPE = np.dtype([("mac", "u8"), ("stamp", "i8"), ("attachment", "i4")], align=True)


class Counter(IntEnum):
    """Per-segment counters (``MacTable.counters`` adds ``learned``: new + evicting)."""

    NEW = 0  # a new entry in a free slot
    EVICTED = 1  # a new entry over the bucket's least recently learned one
    MOVED = 2  # an entry's MAC seen behind another attachment
    REFUSED = 3  # a source claiming the router's MAC, or a static MAC from elsewhere


SCRATCH = len(Counter)  # a counts column nothing reads: where "nothing to count" goes

# ctl: the table's scalars, one kernel argument.
SEQ = 0  # the last learn stamp
SEED = 1

_NEW, _EVICTED, _MOVED, _REFUSED = (int(c) for c in Counter)
_GROUP = np.uint64(GROUP_BIT)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U27 = np.uint64(27)
_U30 = np.uint64(30)
_U31 = np.uint64(31)

# The helpers below are inlined into the batch kernels (the switch stage's, and
# this module's), once per row. Each reads every array it is given on every path,
# leaves no loop early, and stores through one index it chooses (SCRATCH, a spare
# ``changed`` cell, a slot written back as it was) rather than on one branch only:
# an inlined helper that does otherwise makes Numba keep a reference-count
# increment and decrement around it, two atomic operations per array per row (see
# lookup4 in portico/classify/lpm4.py). Measured here, the switch stage's kernel
# went from ~220 ns a row to ~70 when they went.
# Their callers guarantee 0 <= segment < the topology's segment count.


@njit(cache=True, inline="always")
def static_lookup(static_keys, static_attachment, segment, mac):  # type: ignore[no-untyped-def]
    """The attachment of a static entry for ``mac`` in ``segment``, or -1."""
    key = (np.uint64(segment) << np.uint64(MAC_BITS)) | np.uint64(mac)
    # Every index an explicit int64: with plain int literals this loop (and
    # np.searchsorted) measured 20-30 ns a call here, this ~3. The sentinel at the
    # end of the keys means ``lo`` is always a valid index.
    lo = np.int64(0)
    hi = np.int64(static_keys.shape[0]) - np.int64(1)
    while lo < hi:
        mid = (lo + hi) >> np.int64(1)
        if static_keys[mid] < key:
            lo = mid + np.int64(1)
        else:
            hi = mid
    found = np.int64(static_attachment[lo])
    return found if static_keys[lo] == key else np.int64(NO_ATTACHMENT)


@njit(cache=True, inline="always")
def _bucket(segment, mac, ctl, capacity):  # type: ignore[no-untyped-def]
    """The first slot of ``mac``'s bucket in ``segment``'s region (splitmix64 of MAC ^ seed)."""
    h = np.uint64(mac) ^ np.uint64(ctl[SEED])
    h = (h ^ (h >> _U30)) * _M1
    h = (h ^ (h >> _U27)) * _M2
    h ^= h >> _U31
    buckets = capacity // WAYS
    return np.int64(segment) * capacity + np.int64(h & np.uint64(buckets - 1)) * WAYS


@njit(cache=True, inline="always")
def learn_one(segment, mac, attachment, slots, ctl, counts, capacity, learning,  # type: ignore[no-untyped-def]
              router_mac, static_keys, static_attachment, changed, n_changed):
    """Learn ``mac`` behind ``attachment`` in ``segment``; return the new ``n_changed``.

    Tags of flows to re-decide are appended to ``changed``, which must have room
    for two more at ``n_changed`` whatever happens (both cells are always written).
    """
    mac = np.uint64(mac)
    static = static_lookup(static_keys, static_attachment, segment, mac)
    learns = learning[segment]  # read before any "and": a short circuit is a branch
    router = router_mac[segment]
    valid = mac != 0 and (mac & _GROUP) == 0 and learns
    refused = mac == router or (static >= 0 and static != attachment)
    base = _bucket(segment, mac, ctl, capacity)
    found = np.int64(-1)
    free = np.int64(-1)
    oldest = np.int64(-1)
    for e in range(base, base + WAYS):
        held = slots[e].mac
        if held == mac:
            found = e
        elif held == 0:
            if free < 0:
                free = e
        elif oldest < 0 or slots[e].stamp < slots[oldest].stamp:
            oldest = e
    target = found if found >= 0 else (free if free >= 0 else oldest)
    moved = found >= 0 and slots[target].attachment != attachment
    column = SCRATCH
    first = np.uint32(TAG_BASE | target)  # the entry's own tag: a move or an eviction
    second = np.uint32(TAG_BASE | (UNKNOWN + segment))  # the segment's unknowns: anything new
    emitted = 0
    # A static MAC from its own place is neither learned nor refused.
    learn = valid and not refused and static < 0
    seq = ctl[SEQ] + 1  # stamps need only an order: spent whether or not anything is learned
    ctl[SEQ] = seq
    x = slots[target]  # written back as it was unless learning (one store, every path)
    x.mac = mac if learn else x.mac
    x.attachment = attachment if learn else x.attachment
    x.stamp = seq if learn else x.stamp
    if valid and refused:
        column = _REFUSED
    elif learn:
        if found >= 0:
            if moved:
                column = _MOVED
                emitted = 1
        elif free >= 0:
            column = _NEW
            first = second
            emitted = 1
        else:
            column = _EVICTED
            emitted = 2
    counts[segment, column] += 1
    changed[n_changed] = first
    changed[n_changed + 1] = second
    return n_changed + emitted


@njit(cache=True, inline="always")
def locate_one(segment, mac, slots, ctl, capacity, learning,  # type: ignore[no-untyped-def]
               static_keys, static_attachment):
    """(attachment or -1, dependency tag or NO_TAG) of unicast ``mac`` in ``segment``.

    A static entry needs no tag (it changes only with the topology's generation);
    a learned one is tagged with its slot; an unknown one, in a learning segment,
    with the segment's "unknown" tag, so that learning the MAC re-decides it.
    """
    mac = np.uint64(mac)
    static = static_lookup(static_keys, static_attachment, segment, mac)
    learns = learning[segment]
    base = _bucket(segment, mac, ctl, capacity)
    slot = np.int64(-1)
    for e in range(base, base + WAYS):
        if slots[e].mac == mac:
            slot = e
    if mac == 0:  # a free slot holds MAC 0: the all-zero MAC is nobody's
        slot = np.int64(-1)
    learned = np.int64(slots[max(slot, base)].attachment)
    where = static
    tag = np.uint32(NO_TAG)
    if static < 0 and learns:
        if slot >= 0:
            where = learned
            tag = np.uint32(TAG_BASE | slot)
        else:
            tag = np.uint32(TAG_BASE | (UNKNOWN + segment))
    return where, tag


@njit(cache=True)
def _learn(segments, macs, attachments, slots, ctl, counts, capacity, learning,  # type: ignore[no-untyped-def]
           router_mac, static_keys, static_attachment, changed):
    n_changed = 0
    for k in range(segments.shape[0]):
        if 0 <= segments[k] < learning.shape[0]:
            n_changed = learn_one(segments[k], macs[k], attachments[k], slots, ctl, counts,
                                  capacity, learning, router_mac, static_keys,
                                  static_attachment, changed, n_changed)
    return n_changed


@njit(cache=True)
def _locate(segments, macs, slots, ctl, capacity, learning,  # type: ignore[no-untyped-def]
            static_keys, static_attachment):
    n = segments.shape[0]
    where = np.full(n, NO_ATTACHMENT, dtype=np.int32)
    tags = np.full(n, NO_TAG, dtype=np.uint32)
    for k in range(n):
        if 0 <= segments[k] < learning.shape[0]:
            where[k], tags[k] = locate_one(segments[k], macs[k], slots, ctl, capacity,
                                           learning, static_keys, static_attachment)
    return where, tags


class MacTable:
    """Learned MACs per segment of one ``Topology``; see the module's theory of operation."""

    def __init__(self, topology: Topology, *, capacity: int = DEFAULT_CAPACITY,
                 seed: int | None = None) -> None:
        if capacity < WAYS or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= {WAYS}, got {capacity}")
        if topology.segment_count * capacity > UNKNOWN:
            raise ValueError(f"{topology.segment_count} segments of {capacity} slots exceed "
                             f"the {UNKNOWN} slots a tag can name")
        self.topology = topology
        self.capacity = capacity
        self.slots = np.zeros(topology.segment_count * capacity, dtype=SLOT_DTYPE)
        self.slots["attachment"] = NO_ATTACHMENT
        self.ctl = np.zeros(2, dtype=np.int64)
        self.ctl[SEED] = np.int64(np.uint64(
            int.from_bytes(os.urandom(8)) if seed is None else seed).view(np.int64))
        self.counts = np.zeros((topology.segment_count, len(Counter) + 1), dtype=np.int64)
        self._changed: list[np.ndarray] = []

    # -------------------------------------------------------------- per batch
    def learn(self, segments: np.ndarray, macs: np.ndarray, attachments: np.ndarray) -> None:
        """Learn ``macs[k]`` behind ``attachments[k]`` in ``segments[k]``, in order."""
        segments = np.ascontiguousarray(segments, dtype=np.int64)
        changed = np.empty(2 * len(segments) + 2, dtype=np.uint32)  # see learn_one
        t = self.topology
        n = _learn(segments, np.ascontiguousarray(macs, dtype=np.uint64),
                   np.ascontiguousarray(attachments, dtype=np.int64), self.slots, self.ctl,
                   self.counts, self.capacity, t.segment_learning, t.segment_router_mac,
                   t.static_keys, t.static_attachment, changed)
        self.note_changed(changed[:n])

    def locate(self, segments: np.ndarray, macs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the attachment ``macs[k]`` lives behind in ``segments[k]`` (-1 unknown),
        and the tag a decision resting on that answer carries (``NO_TAG`` for none)."""
        t = self.topology
        where, tags = _locate(np.ascontiguousarray(segments, dtype=np.int64),
                              np.ascontiguousarray(macs, dtype=np.uint64), self.slots,
                              self.ctl, self.capacity, t.segment_learning, t.static_keys,
                              t.static_attachment)
        return where, tags

    def note_changed(self, tags: np.ndarray) -> None:
        """Tags a kernel reported (``learn_one``'s ``changed``), kept for ``take_changed_tags``."""
        if len(tags):
            self._changed.append(np.array(tags, dtype=np.uint32))

    def take_changed_tags(self) -> np.ndarray:
        """The tags of cached flows to re-decide since the last call (sorted, unique)."""
        if not self._changed:
            return np.empty(0, dtype=np.uint32)
        tags = np.unique(np.concatenate(self._changed))
        self._changed.clear()
        return tags

    # ----------------------------------------------------------- control side
    def __len__(self) -> int:
        return int(np.count_nonzero(self.slots["mac"]))

    def counters(self, segment: int | None = None) -> dict[str, int]:
        """Counters of one segment, or summed over all: learned (new entries, whether they
        took a free slot or evicted one), evicted, moved, refused."""
        row = self.counts.sum(axis=0) if segment is None else self.counts[segment]
        return {"learned": int(row[Counter.NEW] + row[Counter.EVICTED]),
                "evicted": int(row[Counter.EVICTED]), "moved": int(row[Counter.MOVED]),
                "refused": int(row[Counter.REFUSED])}

    def entries(self, segment: int) -> dict[int, int]:
        """The learned MACs of a segment and their attachments (``show mac table``)."""
        region = self.slots[segment * self.capacity : (segment + 1) * self.capacity]
        used = region[region["mac"] != 0]
        return {int(m): int(a) for m, a in zip(used["mac"], used["attachment"], strict=True)}

    def carry_over(self, previous: MacTable) -> None:
        """Take the entries of ``previous`` (the table of the last topology) that still hold.

        An entry carries over when its segment (by name) and its attachment (the
        same place in that segment) both exist in this topology; it is learned
        again here, oldest first, so the eviction order is kept. Called on a
        fresh table before traffic; the flow cache is flushed by the generation
        bump that comes with a new topology, so no tags are reported.
        """
        old, new = previous.topology, self.topology
        segment_ids = {s.key: s.id for s in new.segments}
        place_ids = {(new.segments[a.segment].key, a.where): a.id for a in new.attachments}
        remap = np.full(max(len(old.attachments), 1), NO_ATTACHMENT, dtype=np.int64)
        for a in old.attachments:
            key = old.segments[a.segment].key
            if key in segment_ids:
                remap[a.id] = place_ids.get((key, a.where), NO_ATTACHMENT)
        used = np.flatnonzero(previous.slots["mac"])
        used = used[np.argsort(previous.slots["stamp"][used], kind="stable")]
        where = remap[previous.slots["attachment"][used]]
        keep = where >= 0
        self.learn(new.attachment_segment[where[keep]], previous.slots["mac"][used[keep]],
                   where[keep])
        self.counts[:] = 0
        self._changed.clear()
