"""flowcache: the exact-match flow cache the datapath puts in front of its stages.

Theory of operation
-------------------
The stages (classification, routing, NAT, firewall, ...) decide what happens to
a flow's first packet; the flow cache remembers the decision so that the next
packets of the flow get it from one hash-table probe. This module is only the
table: it maps a *flow key* to an *entry index*; what the index means (the
synthesized action, kept by the pipeline in its own arrays under ``action``)
is the caller's. It does no I/O, knows no stage, and every per-packet
operation is one Numba kernel call over a selection of a Batch's rows.

Key
~~~
A flow is what the stages could tell apart, taken from the parsed metadata
(``portico.batch.COLUMNS``), in the packet's own direction — a reply is a
different flow, because its actions differ (NAT rewrites the other address,
output goes the other way). Seven ``uint64`` words, ``KEY_WORDS``::

    w0  destination MAC (48) | ingress port (16)
    w1  tunnel id (32) | outer VLAN (16) | IP version (8) | IP protocol (8)
    w2  sport (16) | dport (16) | ICMP type (8, ICMP and ICMPv6 only) | tenant (24)
    w3  source high 64 bits      (IPv6; 0 for IPv4)
    w4  source low 64 bits       (IPv6; the IPv4 source for IPv4)
    w5  destination high 64 bits (IPv6; 0 for IPv4)
    w6  destination low 64 bits  (IPv6; the IPv4 destination for IPv4)

Every field keeps its full width (ports are 0..65535 and tenants 1..65535 in
the config; the -1 of "none yet" keeps distinct low bits), so two keys are
equal exactly when all the fields are. The tenant and the port are both in:
tenants reuse addresses, and a tenant's packets from two ports can be routed
differently. The destination MAC is in because it is what the L2 switch
decides on, and whether a frame is routed at all (addressed to the router's
MAC) or bridged. ICMP echo needs no
field of its own: parse puts the identifier in ``sport``/``dport``. Non-IP
packets (ARP, ND) and whatever else must see the stages (TCP SYN/FIN/RST, ICMP
errors) are the caller's to keep out of the cache: it passes only the rows it
wants looked up.

Hashing
~~~~~~~
Not the Batch's ``flow_hash`` (symmetric, 32 bits, no tenant): the kernel
hashes the seven words itself, the xxHash64 way — each word goes through its
own round ``rotl(lane + w * P2, 31) * P1`` from a lane seed of its own (so the
same value in two positions, a swapped source and destination, hashes
differently), the rounds are independent so the CPU overlaps them, and the sum
of the rotated lanes goes through xxHash64's avalanche. The lane seeds derive
from a per-table random seed, so an outside sender cannot aim flows at one
bucket (``seed=`` fixes it, for tests). The low bits of the hash pick the
bucket; the high 32 bits are the entry's *signature* (forced odd: 0 marks a free
slot).

Buckets
~~~~~~~
The table is ``capacity / WAYS`` buckets of ``WAYS = 8`` slots, and a key lives
only in its bucket. Bucketized rather than linear probing because

* a probe is bounded: one bucket's eight 32-bit signatures are one 32-byte
  piece of a cache line, compared before any key is read; a full key compare
  (one more cache line) happens only on a signature match, so a miss reads one
  line and a hit two, plus the entry's counters, however full the table is;
* deleting is just clearing a signature: no tombstones, no backward shifting,
  which matters because entries die all the time — lazily on lookup, by
  generation, by tag, by idle sweep;
* "least recently used" has a natural, bounded scope: the eight entries of the
  bucket. Linear probing's clusters have no such scope.

The price is load: with one candidate bucket, flows start to crowd each other
out as the table fills (a Poisson estimate of the flows that find their bucket
full: 0.015% at load 0.25, 0.8% at 0.5, 5% at 0.75, 14% at 1; measured: 0.66%
of 1M flows at load 0.48). ``capacity_for(flows)`` sizes a table at twice the
flows, rounded up to a power of two; at 132 bytes a slot (a 128-byte entry
record and a 4-byte signature) 1M flows take 2^21 slots, 264 MiB. Two candidate
buckets per key (as DPDK's rte_hash) would allow load ~0.9 at the cost of a
second probe on every miss; not needed to fit the 1 GiB budget.

Entries are one structured array (``ENTRY_DTYPE``, 128 bytes, 64-byte aligned):
the key and its full hash fill the first cache line; last-seen time, the packet
and byte counters, the generation, the action id, four dependency tags, and the
fields the datapath keeps per flow (``tcp_state``, ``nat_binding`` and ``conn``) fill
the second. One array rather than twelve because a kernel pays per argument.

Lookup and insert
~~~~~~~~~~~~~~~~~
``lookup`` returns, for each selected row, the entry index or -1. A hit
refreshes the entry's last-seen time and counts the packet and its bytes
(``length``). An entry that matches but is *stale* is a miss, and is freed on
the spot: it was made under an older generation (counted as an invalidation)
or has been idle for ``idle_timeout`` or longer (an expiration).

``insert`` makes (or refreshes) the entry of each row, in row order, with the
row's action id and tags, under the current generation. Where it goes:

1. the slot that already holds the key (stale or not: a stale one is counted
   as freed and starts over as a new entry; a live one is updated in place
   — action, tags, generation — and counts the row);
2. else the first free slot of the bucket;
3. else the first stale slot (counted as an invalidation or expiration);
4. else the least recently used entry of the bucket (lowest slot on a tie),
   counted as an eviction — but never one seen at ``now``: an entry that a
   lookup returned, or that this insert made, stays valid for the rest of the
   batch. A bucket whose eight entries were all seen at ``now`` is an insert
   failure, and the row gets -1 (the caller applies its action uncached).

Rows are taken in order, so several rows of one new flow end in one entry:
the first makes it, the others find it live.

``lookup`` runs in four passes over the rows — hash and prefetch the bucket's
signatures; pick the slot and prefetch its entry; prefetch the connection the
entry rests on; compare whole keys and count — so that on a table larger than
the caches the misses of a batch's rows are in flight together instead of one
after another. Prefetches, not loads: a load's value must arrive before it
retires, so loads ahead keep only a reorder window's worth of misses in flight
(measured at 100k flows, batch 256: 141 ns a packet with loads ahead, 83 with
prefetches). The table lives on huge pages (``portico.hugemem``), so a probe
does not also miss the TLB.

Generations and tags
~~~~~~~~~~~~~~~~~~~~
No packet may be decided by an entry made under tables that have since
changed. Two ways to say "these entries are no longer trusted":

* ``bump_generation()`` — everything: O(1), the table's generation goes up and
  every entry whose generation differs is stale from now on, dropped lazily by
  the lookup that meets it (or by ``insert``, or by the ``expire`` sweep). The
  generation is a ``uint32``; on wrap-around the table is flushed, so an entry
  can never be mistaken for a current one.
* ``invalidate_tags(tags)`` — exactly what a change can affect. Each entry
  carries up to ``MAX_TAGS`` dependency tags, the ids of the rules, routes, NAT
  pools, ... whose decisions it holds (``tag(kind, ident)`` namespaces them;
  ``NO_TAG`` fills unused ones). A change that removes a route drops the
  entries tagged with it, in one sweep over the table, and leaves the rest.
  The sweep costs O(capacity) per call, not per tag: batch the tags of one
  change. This is how the classifier's versioning turns a rule change into a
  precise invalidation instead of a flush.

Entries that rest on a connection
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A stateful firewall's decision holds while the connection it was made for is
open: a TCP flow's SYN decided nothing for the ACK of its handshake, and after
a FIN or an RST its packets are connection tracking's to judge again. So an
entry may name a connection: ``conn`` (a slot in the ``connections`` array
given to the constructor, -1 for none) and ``conn_gen`` (the slot's ``gen``
when the decision was made). A lookup that finds such an entry reads the
slot (prefetched with the entry) and treats the hit as a miss unless the slot
still holds that generation and its ``state`` is one of ``open_states``; the
entry itself stays, and the flow's next decision replaces it. One load of a
record the prefetch already asked for, instead of a pass over the hits.

Counters
~~~~~~~~
hits, misses (lookups), insertions (new entries), evictions (a live entry
pushed out), expirations (idle entries freed, whoever found them),
invalidations (entries freed for their generation or their tags), insert
failures. ``counters`` returns them as a dict.

Example::

    cache = FlowCache(capacity_for(100_000), idle_timeout=10 * SECOND)
    rows = np.flatnonzero(cacheable)
    entry = cache.lookup(batch.meta, rows, now)
    miss = rows[entry < 0]
    ...  # run the stages over `miss`, synthesize actions and their tags
    entry[entry < 0] = cache.insert(batch.meta, miss, action_ids, tags, now)
"""

from __future__ import annotations

import os
from enum import IntEnum

import numpy as np
from numba import njit
from numpy.lib import recfunctions
from numpy.typing import ArrayLike

from portico import hugemem
from portico.datapath.xxh import avalanche, lane_round, rotl
from portico.prefetch import prefetch

SECOND = 1_000_000_000  # ns

WAYS = 8  # slots per bucket
GROUP = 256  # rows a lookup pass prefetches for before the next pass reads them
KEY_WORDS = 7
MAX_TAGS = 4
NO_TAG = 0xFFFFFFFF  # an unused tag slot
NO_BINDING = -1  # nat_binding of an entry without one

ENTRY_DTYPE = np.dtype(
    {
        "names": [
            *(f"k{w}" for w in range(KEY_WORDS)),
            "hash",
            "last_seen",
            "packets",
            "bytes",
            "generation",
            "action",
            *(f"tag{t}" for t in range(MAX_TAGS)),
            "nat_binding",
            "tcp_state",
            "conn",
            "conn_gen",
        ],
        "formats": [
            *(["u8"] * KEY_WORDS),
            "u8",
            "i8",
            "i8",
            "i8",
            "u4",
            "i4",
            *(["u4"] * MAX_TAGS),
            "i4",
            "u1",
            "i4",
            "u2",
        ],
        "offsets": [
            *(8 * w for w in range(KEY_WORDS)),
            56,
            64,
            72,
            80,
            88,
            92,
            *(96 + 4 * t for t in range(MAX_TAGS)),
            112,
            116,
            120,
            124,
        ],
        "itemsize": 128,  # two cache lines; bytes 117-119 and 126-127 spare
    }
)
BYTES_PER_SLOT = ENTRY_DTYPE.itemsize + 4  # the record and its signature


class Counter(IntEnum):
    HITS = 0
    MISSES = 1
    INSERTIONS = 2
    EVICTIONS = 3
    EXPIRATIONS = 4
    INVALIDATIONS = 5
    INSERT_FAILURES = 6


class TagKind(IntEnum):
    """The namespaces of dependency tags: the top 4 bits of a tag."""

    RULE = 1
    ROUTE = 2
    NAT = 3
    NEIGHBOUR = 4
    PORT = 5
    OVERLAY = 6
    MAC = 7  # a learned MAC address (portico.datapath.mactable)
    CONNECTION = 8  # a tracked connection (the firewall's)


def tag(kind: TagKind | int, ident: int) -> int:
    """A dependency tag: ``kind`` in the top 4 bits, ``ident`` (< 2**28) below."""
    if not 0 < int(kind) < 16:
        raise ValueError(f"tag kind must be in 1..15, got {kind}")
    if not 0 <= ident < 1 << 28:
        raise ValueError(f"tag ident must be in 0..2**28-1, got {ident}")
    return int(kind) << 28 | ident


def capacity_for(flows: int) -> int:
    """The power-of-two capacity for ``flows`` flows at load <= 0.5 (see Buckets)."""
    need = max(WAYS, 2 * flows)
    return 1 << (need - 1).bit_length()


# What a cache without connections passes for them (entries never name one).
_NO_CONNECTIONS = np.dtype([("state", "u1"), ("gen", "u2")])

# ctl: one int64 array with the table's parameters and counters (one kernel argument).
GEN = 0  # current generation (a uint32's value)
IDLE = 1  # idle timeout, ns
MASK = 2  # buckets - 1
LANE = 3  # lane seeds, KEY_WORDS of them (uint64 bits)
COUNT = LANE + KEY_WORDS  # counters, in Counter order
CTL_SIZE = COUNT + len(Counter)

_HITS = COUNT + Counter.HITS
_MISSES = COUNT + Counter.MISSES
_INSERTIONS = COUNT + Counter.INSERTIONS
_EVICTIONS = COUNT + Counter.EVICTIONS
_EXPIRATIONS = COUNT + Counter.EXPIRATIONS
_INVALIDATIONS = COUNT + Counter.INVALIDATIONS
_FAILURES = COUNT + Counter.INSERT_FAILURES

# xxHash64 primes.
U8 = np.uint64(8)
U16 = np.uint64(16)
U24 = np.uint64(24)
U32 = np.uint64(32)
U48 = np.uint64(48)
LOW16 = np.uint64(0xFFFF)
LOW24 = np.uint64(0xFFFFFF)
ONE32 = np.uint32(1)
IP_ICMP = 1
IP_ICMPV6 = 58

# Lookup results for the free/stale classification of a slot.
_LIVE = 0
_IDLE = 1
_OLD = 2


# ------------------------------------------------------------------ kernels
@njit(cache=True, inline="always")
def _key(meta, r):  # type: ignore[no-untyped-def]
    """The seven key words of row ``r`` (see Key)."""
    m = meta[r]
    w0 = (np.uint64(m.eth_dst) << U16) | (np.uint64(np.uint32(m.port)) & LOW16)
    w1 = (
        (np.uint64(m.tunnel_id) << U32)
        | (np.uint64(m.vlan_outer) << U16)
        | (np.uint64(m.ip_version) << U8)
        | np.uint64(m.protocol)
    )
    w2 = ((np.uint64(m.sport) << U48) | (np.uint64(m.dport) << U32)
          | (np.uint64(np.uint32(m.tenant)) & LOW24))
    if m.protocol == IP_ICMP or m.protocol == IP_ICMPV6:  # noqa: SIM109 (kept plain for Numba)
        w2 |= np.uint64(m.icmp_type) << U24
    if m.ip_version == 6:
        w3 = np.uint64(m.src6_hi)
        w4 = np.uint64(m.src6_lo)
        w5 = np.uint64(m.dst6_hi)
        w6 = np.uint64(m.dst6_lo)
    else:
        w3 = np.uint64(0)
        w4 = np.uint64(m.src4)
        w5 = np.uint64(0)
        w6 = np.uint64(m.dst4)
    return w0, w1, w2, w3, w4, w5, w6


@njit(cache=True, inline="always")
def _lanes(ctl):  # type: ignore[no-untyped-def]
    """The lane seeds, read once per call (stores to the table may alias ``ctl``)."""
    return (
        np.uint64(ctl[LANE]),
        np.uint64(ctl[LANE + 1]),
        np.uint64(ctl[LANE + 2]),
        np.uint64(ctl[LANE + 3]),
        np.uint64(ctl[LANE + 4]),
        np.uint64(ctl[LANE + 5]),
        np.uint64(ctl[LANE + 6]),
    )


@njit(cache=True, inline="always")
def _hash(lanes, w0, w1, w2, w3, w4, w5, w6):  # type: ignore[no-untyped-def]
    h = (
        lane_round(lanes[0], w0)
        + rotl(lane_round(lanes[1], w1), 7)
        + rotl(lane_round(lanes[2], w2), 12)
        + rotl(lane_round(lanes[3], w3), 18)
        + rotl(lane_round(lanes[4], w4), 27)
        + rotl(lane_round(lanes[5], w5), 35)
        + rotl(lane_round(lanes[6], w6), 46)
    )
    h = avalanche(h)
    return h


@njit(cache=True, inline="always")
def _signature(h):  # type: ignore[no-untyped-def]
    return np.uint32(h >> U32) | ONE32


@njit(cache=True, inline="always")
def _same_key(x, w0, w1, w2, w3, w4, w5, w6):  # type: ignore[no-untyped-def]
    """Does entry record ``x`` hold the key words w0..w6?"""
    return (x.k0 == w0 and x.k1 == w1 and x.k2 == w2 and x.k3 == w3 and x.k4 == w4
            and x.k5 == w5 and x.k6 == w6)


@njit(cache=True, inline="always")
def _find(sig, entries, base, s, w0, w1, w2, w3, w4, w5, w6):  # type: ignore[no-untyped-def]
    """The slot of the bucket at ``base`` holding the key, or -1."""
    # Every slot is looked at (downwards, so the lowest match wins), with no return or
    # break inside the loop: leaving it early makes Numba keep a reference-count pair
    # on sig and entries around every call of this inlined helper (see lookup4 in
    # portico/classify/lpm4.py).
    found = -1
    for e in range(base + WAYS - 1, base - 1, -1):
        if sig[e] == s and _same_key(entries[e], w0, w1, w2, w3, w4, w5, w6):
            found = e
    return found


@njit(cache=True, inline="always")
def _staleness(x, now, gen, idle):  # type: ignore[no-untyped-def]
    if x.generation != gen:
        return _OLD
    if now - x.last_seen >= idle:
        return _IDLE
    return _LIVE


@njit(cache=True, inline="always")
def _count_freed(ctl, why):  # type: ignore[no-untyped-def]
    # One store at a chosen index, not a store on each branch (see _find).
    ctl[_INVALIDATIONS if why == _OLD else _EXPIRATIONS] += 1


@njit(cache=True)
def flow_keys(meta, rows, ctl):  # type: ignore[no-untyped-def]
    """The key words (n, KEY_WORDS) and hashes (n,) of the selected rows."""
    n = rows.shape[0]
    keys = np.empty((n, KEY_WORDS), dtype=np.uint64)
    hashes = np.empty(n, dtype=np.uint64)
    lanes = _lanes(ctl)
    for i in range(n):
        w0, w1, w2, w3, w4, w5, w6 = _key(meta, rows[i])
        keys[i, 0] = w0
        keys[i, 1] = w1
        keys[i, 2] = w2
        keys[i, 3] = w3
        keys[i, 4] = w4
        keys[i, 5] = w5
        keys[i, 6] = w6
        hashes[i] = _hash(lanes, w0, w1, w2, w3, w4, w5, w6)
    return keys, hashes


@njit(cache=True)
def _peek(meta, rows, sig, entries, ctl):  # type: ignore[no-untyped-def]
    """The entry holding each row's key, current generation or not, or -1; no side effects."""
    n = rows.shape[0]
    out = np.empty(n, dtype=np.int64)
    mask = np.uint64(ctl[MASK])
    lanes = _lanes(ctl)
    for i in range(n):
        w0, w1, w2, w3, w4, w5, w6 = _key(meta, rows[i])
        h = _hash(lanes, w0, w1, w2, w3, w4, w5, w6)
        out[i] = _find(sig, entries, np.int64(h & mask) * WAYS, _signature(h),
                       w0, w1, w2, w3, w4, w5, w6)
    return out


@njit(cache=True)
def lookup_kernel(meta, rows, now, sig, entries, ctl, conns, open_state):  # type: ignore[no-untyped-def]
    # Passes, so that a large table's cache misses overlap instead of queueing: each
    # pass only prefetches what the next one reads (see "Lookup and insert"). The
    # passes go over GROUP rows at a time: what a pass prefetched for a whole batch
    # of 4096 would be pushed out of the cache before the next pass reads it.
    n = rows.shape[0]
    out = np.empty(n, dtype=np.int64)
    hs = np.empty(n, dtype=np.uint64)
    mask = np.uint64(ctl[MASK])
    lanes = _lanes(ctl)
    gen = np.uint32(ctl[GEN])
    idle = ctl[IDLE]
    hits = 0
    for first in range(0, n, GROUP):
        last = min(n, first + GROUP)
        for i in range(first, last):  # 1: hash, and prefetch the bucket's signatures
            w0, w1, w2, w3, w4, w5, w6 = _key(meta, rows[i])
            h = _hash(lanes, w0, w1, w2, w3, w4, w5, w6)
            hs[i] = h
            prefetch(sig, np.int64(h & mask) * WAYS)
        for i in range(first, last):  # 2: the signature's slot; prefetch its entry
            h = hs[i]
            s = _signature(h)
            base = np.int64(h & mask) * WAYS
            e = -1
            for j in range(base, base + WAYS):
                if sig[j] == s:
                    e = j
            out[i] = e
            if e >= 0:
                prefetch(entries, e)
        for i in range(first, last):  # 3: prefetch the connection the entry rests on
            e = out[i]
            if e >= 0:
                prefetch(conns, max(entries[e].conn, 0))
        for i in range(first, last):  # 4: compare whole keys, check staleness, count
            r = rows[i]
            w0, w1, w2, w3, w4, w5, w6 = _key(meta, r)
            e = out[i]
            s = _signature(hs[i])
            # An earlier row of the batch may have freed the slot, or two signatures in
            # one bucket are alike: then look properly.
            if e >= 0 and not (sig[e] == s
                               and _same_key(entries[e], w0, w1, w2, w3, w4, w5, w6)):
                base = np.int64(hs[i] & mask) * WAYS
                e = _find(sig, entries, base, s, w0, w1, w2, w3, w4, w5, w6)
            if e >= 0:
                x = entries[e]
                why = _staleness(x, now, gen, idle)
                c = np.int64(x.conn)
                closed = False
                if c >= 0:  # the decision rests on a connection: still that one, open
                    conn = conns[c]
                    closed = conn.gen != x.conn_gen or not open_state[conn.state]
                if closed and why == _LIVE:
                    e = -1  # kept: the flow's next decision replaces it
                elif why == _LIVE:
                    x.last_seen = now
                    x.packets += 1
                    x.bytes += meta[r].length
                    hits += 1
                else:
                    sig[e] = 0
                    _count_freed(ctl, why)
                    e = -1
            out[i] = e
    ctl[_HITS] += hits
    ctl[_MISSES] += n - hits
    return out


@njit(cache=True)
def _insert(meta, rows, actions, tags, now, sig, entries, ctl):  # type: ignore[no-untyped-def]
    n = rows.shape[0]
    out = np.empty(n, dtype=np.int64)
    mask = np.uint64(ctl[MASK])
    lanes = _lanes(ctl)
    gen = np.uint32(ctl[GEN])
    idle = ctl[IDLE]
    for i in range(n):
        r = rows[i]
        w0, w1, w2, w3, w4, w5, w6 = _key(meta, r)
        h = _hash(lanes, w0, w1, w2, w3, w4, w5, w6)
        s = _signature(h)
        base = np.int64(h & mask) * WAYS
        e = _find(sig, entries, base, s, w0, w1, w2, w3, w4, w5, w6)
        fresh = True
        if e >= 0:
            why = _staleness(entries[e], now, gen, idle)
            if why == _LIVE:
                fresh = False
            else:
                _count_freed(ctl, why)
        else:
            free = -1
            stale = -1
            stale_why = _LIVE
            lru = -1
            for j in range(base, base + WAYS):
                if sig[j] == 0:
                    free = j
                    break
                x = entries[j]
                why = _staleness(x, now, gen, idle)
                if why != _LIVE:
                    if stale < 0:
                        stale = j
                        stale_why = why
                elif x.last_seen < now and (lru < 0 or x.last_seen < entries[lru].last_seen):
                    lru = j
            if free >= 0:
                e = free
            elif stale >= 0:
                e = stale
                _count_freed(ctl, stale_why)
            elif lru >= 0:
                e = lru
                ctl[_EVICTIONS] += 1
            else:
                ctl[_FAILURES] += 1
                out[i] = -1
                continue
        x = entries[e]
        if fresh:
            sig[e] = s
            x.k0 = w0
            x.k1 = w1
            x.k2 = w2
            x.k3 = w3
            x.k4 = w4
            x.k5 = w5
            x.k6 = w6
            x.hash = h
            x.packets = 0
            x.bytes = 0
            x.tcp_state = 0
            x.nat_binding = NO_BINDING
            x.conn = -1
            x.conn_gen = 0
            ctl[_INSERTIONS] += 1
        x.generation = gen
        x.action = actions[i]
        x.tag0 = tags[i, 0]
        x.tag1 = tags[i, 1]
        x.tag2 = tags[i, 2]
        x.tag3 = tags[i, 3]
        x.last_seen = now
        x.packets += 1
        x.bytes += meta[r].length
        out[i] = e
    return out


@njit(cache=True, inline="always")
def _member(sorted_tags, t):  # type: ignore[no-untyped-def]
    lo = 0
    hi = sorted_tags.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_tags[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo < sorted_tags.shape[0] and sorted_tags[lo] == t


@njit(cache=True)
def _invalidate_tags(sorted_tags, sig, entries, ctl):  # type: ignore[no-untyped-def]
    dropped = 0
    for e in range(sig.shape[0]):
        if sig[e] != 0:
            x = entries[e]
            if (
                _member(sorted_tags, x.tag0)
                or _member(sorted_tags, x.tag1)
                or _member(sorted_tags, x.tag2)
                or _member(sorted_tags, x.tag3)
            ):
                sig[e] = 0
                dropped += 1
    ctl[_INVALIDATIONS] += dropped
    return dropped


@njit(cache=True)
def _expire(now, sig, entries, ctl):  # type: ignore[no-untyped-def]
    gen = np.uint32(ctl[GEN])
    idle = ctl[IDLE]
    dropped = 0
    for e in range(sig.shape[0]):
        if sig[e] != 0:
            why = _staleness(entries[e], now, gen, idle)
            if why != _LIVE:
                sig[e] = 0
                _count_freed(ctl, why)
                dropped += 1
    return dropped


# -------------------------------------------------------------------- table
class FlowCache:
    """An exact-match flow table in NumPy arrays; see the module's theory of operation.

    ``entries`` (``ENTRY_DTYPE``) and ``sig`` (``uint32``, 0 = free slot) are
    the table; an entry index is a row of both. Field views for the datapath:
    ``entries["action"]``, ``entries["tcp_state"]``, ``entries["nat_binding"]``,
    and so on. ``capacity`` is a power of two, at least ``WAYS``;
    ``idle_timeout`` is in ns; ``seed`` fixes the hash (tests), random otherwise.
    """

    def __init__(
        self,
        capacity: int,
        *,
        idle_timeout: int = 10 * SECOND,
        seed: int | None = None,
        connections: np.ndarray | None = None,
        open_states: ArrayLike = (),
    ) -> None:
        if capacity < WAYS or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= {WAYS}, got {capacity}")
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive ns, got {idle_timeout}")
        self.entries = hugemem.zeros(capacity, ENTRY_DTYPE)
        self.sig = hugemem.zeros(capacity, np.uint32)
        self._ctl = np.zeros(CTL_SIZE, dtype=np.int64)
        self._ctl[GEN] = 1
        self._ctl[IDLE] = idle_timeout
        self._ctl[MASK] = capacity // WAYS - 1
        # Connections entries may rest on (see "Entries that rest on a connection").
        self.connections = (connections if connections is not None
                            else np.zeros(1, dtype=_NO_CONNECTIONS))
        self.open_states = np.zeros(256, dtype=np.bool_)
        self.open_states[np.asarray(open_states, dtype=np.intp)] = True
        rng = np.random.default_rng(int.from_bytes(os.urandom(8)) if seed is None else seed)
        self._ctl[LANE : LANE + KEY_WORDS] = rng.integers(
            np.iinfo(np.int64).min, np.iinfo(np.int64).max, KEY_WORDS, dtype=np.int64
        )

    # ---------------------------------------------------------- properties
    @property
    def capacity(self) -> int:
        return int(self.sig.shape[0])

    @property
    def buckets(self) -> int:
        return self.capacity // WAYS

    @property
    def generation(self) -> int:
        return int(self._ctl[GEN])

    @property
    def idle_timeout(self) -> int:
        return int(self._ctl[IDLE])

    @property
    def nbytes(self) -> int:
        return int(self.entries.nbytes + self.sig.nbytes + self._ctl.nbytes)

    @property
    def counters(self) -> dict[str, int]:
        return {c.name.lower(): int(self._ctl[COUNT + c]) for c in Counter}

    def __len__(self) -> int:
        """Occupied slots, stale ones not yet dropped included."""
        return int(np.count_nonzero(self.sig))

    def occupied(self) -> np.ndarray:
        """Indices of the occupied slots."""
        return np.flatnonzero(self.sig)

    def tags(self) -> np.ndarray:
        """The (capacity, MAX_TAGS) tag columns, as a view."""
        names = [f"tag{t}" for t in range(MAX_TAGS)]
        return recfunctions.structured_to_unstructured(self.entries[names], copy=False)

    def used_since(self, since: int) -> np.ndarray:
        """The occupied entries a lookup or an insert touched at ``since`` or later, under
        the current generation: the flows alive since then, whose per-flow state (NAT
        binding, connection) the owner keeps alive in one sweep rather than per hit."""
        e = self.entries
        live = (self.sig != 0) & (e["last_seen"] >= since) & (e["generation"] == self.generation)
        return np.flatnonzero(live)

    def keys(self) -> np.ndarray:
        """The (capacity, KEY_WORDS) key words, a copy."""
        names = [f"k{w}" for w in range(KEY_WORDS)]
        return recfunctions.structured_to_unstructured(self.entries[names])

    # ------------------------------------------------------- per batch
    def flow_keys(self, meta: np.ndarray, rows: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Key words (n, KEY_WORDS) and this table's hashes (n,) of the selected rows."""
        keys, hashes = flow_keys(meta, np.asarray(rows, dtype=np.intp), self._ctl)
        return keys, hashes

    def bucket_of(self, hashes: ArrayLike) -> np.ndarray:
        return (np.asarray(hashes, dtype=np.uint64) & np.uint64(self._ctl[MASK])).astype(np.intp)

    @property
    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What ``lookup_kernel`` takes after ``now`` (sig, entries, ctl, connections,
        open states): for a caller that calls the lookup from a kernel of its own."""
        return self.sig, self.entries, self._ctl, self.connections, self.open_states

    def lookup(self, meta: np.ndarray, rows: np.ndarray, now: int) -> np.ndarray:
        """Entry index per selected row (int64), -1 for a miss; hits refresh and count.

        ``meta`` is a Batch's whole ``meta`` array, ``rows`` an intp array of its rows.
        """
        return lookup_kernel(meta, rows, now, self.sig, self.entries, self._ctl,  # type: ignore[no-any-return]
                       self.connections, self.open_states)

    def peek(self, meta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The entry holding each row's key (stale or not), or -1: no refresh, no count,
        nothing freed. For rows that will not be looked up (the forced ones) but whose
        entries matter (a FIN's: its connection's other packets in the batch)."""
        return _peek(meta, np.asarray(rows, dtype=np.int64), self.sig, self.entries,  # type: ignore[no-any-return]
                     self._ctl)

    def insert(
        self,
        meta: np.ndarray,
        rows: np.ndarray,
        action_ids: ArrayLike,
        tags: ArrayLike | None,
        now: int,
    ) -> np.ndarray:
        """Make or refresh the entries of the selected rows; entry index per row, -1 on failure.

        ``action_ids`` (int32, one per row) are the caller's; ``tags`` is an
        (n, k <= MAX_TAGS) uint32 array of dependency tags, or None for none.
        """
        n = len(rows)
        actions = np.ascontiguousarray(action_ids, dtype=np.int32).reshape(n)
        full = np.full((n, MAX_TAGS), NO_TAG, dtype=np.uint32)
        if tags is not None:
            given = np.asarray(tags, dtype=np.uint32).reshape(n, -1)
            if given.shape[1] > MAX_TAGS:
                raise ValueError(f"at most {MAX_TAGS} tags per entry, got {given.shape[1]}")
            full[:, : given.shape[1]] = given
        return _insert(  # type: ignore[no-any-return]
            meta, np.asarray(rows, dtype=np.intp), actions, full, now,
            self.sig, self.entries, self._ctl,
        )  # fmt: skip

    # ---------------------------------------------------- invalidation
    def bump_generation(self) -> int:
        """Stop trusting every entry made so far (O(1)); return the new generation."""
        nxt = int(self._ctl[GEN]) + 1
        if nxt > 0xFFFFFFFF:  # wrapped: an old entry could look current again
            self.flush()
            nxt = 1
        self._ctl[GEN] = nxt
        return nxt

    def invalidate_tags(self, tags: ArrayLike) -> int:
        """Drop every entry carrying any of ``tags``; return how many were dropped."""
        wanted = np.unique(np.asarray(tags, dtype=np.uint32))
        wanted = wanted[wanted != NO_TAG]
        if not len(wanted):
            return 0
        return int(_invalidate_tags(wanted, self.sig, self.entries, self._ctl))

    def expire(self, now: int) -> int:
        """Free the idle entries and those of older generations; return how many."""
        return int(_expire(now, self.sig, self.entries, self._ctl))

    def flush(self) -> None:
        """Free every entry (counters are kept)."""
        self.sig[:] = 0
