"""conntable: the compiled connection table — conntrack's state machine over a hash table.

Theory of operation
-------------------
``conntrack`` declares *what* a connection tracker decides (states, events, the
``TRANSITIONS``/``VERDICTS`` tables, timeouts) and keeps no table of its own
beyond the dict-backed reference ``ConnTable``. This module is the table the
firewall stage runs: connections held in NumPy arrays, found through an
open-addressing hash table, and one Numba kernel (``ConnTrack.process``) that
resolves, creates and advances the connections of a batch's rows. It reads the
machine from ``conntrack`` (``PROTO_CLASS``, ``EVENTS``, ``TRANSITIONS``,
``VERDICTS``, compiled in as constants) and repeats none of it.

Keys and orientation
~~~~~~~~~~~~~~~~~~~~
A connection is keyed by (zone, IP version, protocol, source address, source
port, destination address, destination port) as its *first* packet had them:
the ORIGINAL orientation. The zone is the tenant id (0..65535), so tenants
with overlapping address spaces never share a connection; the IP version keeps
an IPv4 address apart from the IPv6 address with the same 128-bit value (IPv4
sits in the low word, as in the flow cache). ICMP echo needs nothing special:
parse puts the identifier in both ports, so the reply's reversed tuple is the
request's. A packet *belongs* to a connection in ORIGINAL direction when its
tuple equals the key, in REPLY direction when its reversed tuple does.

One probe for both directions: the hash is *symmetric*. Each endpoint (address
words and port) is hashed on its own, from lanes seeded per table, and the two
endpoint hashes are added before the zone/version/protocol word and the final
avalanche (xxHash64's rounds and mixer, as in ``flowcache``), so a tuple and its
reverse land in the same place and one walk of the probe sequence compares the
packet against each candidate both ways. The table never holds a key and its
reverse at once (a packet that matches neither is the only one that makes an
entry), so the first match is the only one. The seed is random unless given:
a sender cannot aim tuples at one probe run.

Arrays
~~~~~~
* ``conns``: one 64-byte record per connection (``CONN_DTYPE``): the key as five
  words (``k0`` = zone | version | protocol | sport | dport, then the source and
  destination address words), ``expiry`` (ns), the ``hash``, ``state`` (a
  ``conntrack.State``, uint8) and ``next``, the free-list link. A connection's
  index in it, its *slot*, is what ``process`` returns and what the caller may
  keep (in a flow-cache entry) to ``touch`` it later. ``state == NONE`` marks a
  free record. ``gen`` counts the connections a record has held (it goes up when
  a connection is made in it, or a closed one's tuple opens again), so whoever
  kept a slot can tell its connection from a later one in the same record: the
  flow cache treats an entry as a miss unless its slot still holds the
  generation it saw, in an open state.
* ``ht``: the hash table, ``(hash, slot)`` pairs, slot -1 = empty, a power of two
  at least twice the capacity (load <= 0.5). Linear probing; deletion by
  backward shift (an entry further down the run moves into the hole when that
  keeps it reachable from its home), so there are no tombstones and a lookup
  stops at the first empty pair. The stored hash gives every entry's home
  without touching its record, and lets a probe skip non-matching entries
  without loading them.
* ``ctl``: one int64 array of parameters, the free-list head, the live count,
  the hash lanes, the timeouts table ``[class, state]`` and the counters — so a
  kernel takes three table arguments, not ten.

Per row, in row order
~~~~~~~~~~~~~~~~~~~~~
``process`` takes each row in turn, so a SYN and the SYN+ACK that answers it in
one batch see each other, exactly as if they came in two batches. For a row:

1. Rows conntrack does not track — no IP, a non-first fragment (no ports), an
   ICMP message other than a query (errors quote another connection's packet,
   which the firewall looks up itself) — are ``UNTRACKED``: the caller's.
2. Find the connection in either orientation. An entry past its expiry is
   gone: it is freed (``expired``) and the row continues as if none was found.
   A reply-side SYN on a TIME_WAIT or CLOSE entry starts a connection the other
   way round: the entry is freed and re-made in the packet's orientation
   (``rekeyed``) — if the rules allow the new connection; if not, the row is
   ``DENIED`` and the closed entry stays. (This is ``ConnTable._stale``.)
3. With a connection: ``VERDICTS[state, direction, event]``. INVALID: the row is
   ``INVALID`` and nothing changes, not even the expiry. NEW (an original-side
   SYN reopening a TIME_WAIT or CLOSE entry): a new connection, so the rules
   decide — ``NEW`` if ``allowed``, else ``DENIED`` and nothing changes.
   ACCEPT: ``ESTABLISHED`` (original direction) or ``REPLY``. The state becomes
   ``TRANSITIONS[...]``, the expiry the row's time plus the new state's timeout.
4. Without one: if the event cannot open a connection (``VERDICTS[NONE,
   ORIGINAL, event]`` is not NEW: an ACK, a reply, a RST with no connection)
   ``INVALID``; if it can but the rules said no, ``DENIED`` (nothing stored);
   else a record is taken from the free list and tracked from NONE: ``NEW``. A
   full table is swept for expired entries (at most once per
   ``sweep_interval``, so a flood of SYNs cannot make every row scan the table)
   and if still full the row is ``TABLE_FULL``.

``allowed`` is what the rules said about each row *if* it opens a connection;
the caller classifies every row first, and rows that belong to a connection
ignore it — which is what makes the firewall stateful. A row's time is its
``timestamp`` column, or one ``now`` for the whole call.

Against the reference ``ConnTable`` (which has no rules: every opening is
allowed, and no capacity): the same verdicts and the same states for any packet
stream the reference is given one packet at a time, wherever the batches here
are cut — the tests hold it to that. Given a whole batch in one call, the
reference resolves orientation against the table as it was before the call, so
it differs in corner cases (a row meeting an entry that an earlier row of the
same call closed, or that expired between the two rows).

Timers
~~~~~~
Expiry is lazy (the row that meets an expired entry frees it) plus ``expire(now)``,
a sweep of the whole table. Rows the flow cache forwards never reach
``process``; ``touch(slots, now)`` gives their connections the time of those
hits (expiry = now + the current state's timeout, never earlier than it was),
keeping the state. A connection already expired is not revived.

What the caller owns: the flow-cache entries that carry a slot must die with
the connection (a freed slot is reused by the next new connection); packets
that must change state (TCP SYN/FIN/RST) never hit the cache, so the datapath
already runs them through ``process``; ICMP errors, matched to the connection of
the packet they quote (``get`` answers for one tuple).

Example::

    table = ConnTrack(capacity=1 << 20)
    allowed = rules_allow(batch, miss)              # the firewall's rules, per row
    outcome, slot = table.process(batch.meta, miss, zones, allowed)
    forward = outcome <= Outcome.REPLY              # NEW, ESTABLISHED, REPLY
    ...
    table.touch(hit_slots, now)                     # flows forwarded from the cache
    table.expire(now)                               # now and then
"""

from __future__ import annotations

import ipaddress
import os
from enum import IntEnum
from typing import NamedTuple

import numpy as np
from numba import njit

from portico.datapath.conntrack import (
    EVENTS,
    N_STATES,
    PROTO_CLASS,
    TRANSITIONS,
    VERDICTS,
    Direction,
    Event,
    ProtoClass,
    State,
    Timeouts,
    Verdict,
)
from portico.datapath.xxh import avalanche, lane_round, rotl
from portico.prefetch import prefetch

SECOND = 1_000_000_000  # ns
MAX_CAPACITY = 1 << 26
MAX_ZONE = 0xFFFF
AHEAD = 8  # rows the second pass prefetches ahead


class Outcome(IntEnum):
    """What ``process`` decided for a row (uint8)."""

    NEW = 0  # opened a connection (the rules allowed it)
    ESTABLISHED = 1  # belongs to a connection, original direction
    REPLY = 2  # belongs to a connection, reply direction
    DENIED = 3  # would open a connection, the rules said no: nothing stored
    INVALID = 4  # makes no sense for the connection (or without one): nothing changed
    UNTRACKED = 5  # not conntrack's: no IP, a non-first fragment, ICMP errors
    TABLE_FULL = 6  # would open a connection, no room left


class Counter(IntEnum):
    """The table's counters; the first seven count rows by ``Outcome``."""

    CREATED = 0  # rows NEW
    ESTABLISHED = 1
    REPLY = 2
    DENIED = 3
    INVALID = 4
    UNTRACKED = 5
    TABLE_FULL = 6
    EXPIRED = 7  # connections freed past their expiry (by a row, a sweep)
    REKEYED = 8  # closed connections re-made the other way round by a reply-side SYN
    SWEEPS = 9  # full sweeps (expire() and a full table)
    TOUCHED = 10  # connections refreshed by touch()


# One record per connection: 64 bytes, one cache line.
CONN_DTYPE = np.dtype(
    {
        "names": ["k0", "src_hi", "src_lo", "dst_hi", "dst_lo", "expiry", "hash", "next",
                  "state", "gen"],
        "formats": ["u8", "u8", "u8", "u8", "u8", "i8", "i8", "i4", "u1", "u2"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 56, 60, 62],
        "itemsize": 64,
    }
)

# k0: zone (16) | IP version (8) | protocol (8) | sport (16) | dport (16)
_ZONE_SHIFT, _VERSION_SHIFT, _PROTO_SHIFT, _SPORT_SHIFT = 48, 40, 32, 16

# ctl: parameters, free-list head, live count, hash lanes, timeouts, counters.
C_MASK = 0  # hash-table slots - 1
C_FREE = 1  # first free record, -1 when full
C_LIVE = 2  # records in use (expired ones not yet freed included)
C_SWEEP_IV = 3  # ns between sweeps a full table may trigger
C_LAST_SWEEP = 4
C_LANE = 5  # 4 hash lanes (uint64 bits)
N_LANES = 4
C_TIMEOUTS = C_LANE + N_LANES  # conntrack's timeouts table [class, state], flattened
C_COUNT = C_TIMEOUTS + len(ProtoClass) * N_STATES
CTL_SIZE = C_COUNT + len(Counter)

NOW_FROM_META = np.iinfo(np.int64).min  # process(): each row's own timestamp

O_NEW, O_ESTABLISHED = int(Outcome.NEW), int(Outcome.ESTABLISHED)
O_DENIED, O_INVALID = int(Outcome.DENIED), int(Outcome.INVALID)
O_UNTRACKED, O_TABLE_FULL = int(Outcome.UNTRACKED), int(Outcome.TABLE_FULL)
K_EXPIRED, K_REKEYED = C_COUNT + Counter.EXPIRED, C_COUNT + Counter.REKEYED
K_SWEEPS, K_TOUCHED = C_COUNT + Counter.SWEEPS, C_COUNT + Counter.TOUCHED
S_NONE, S_TIME_WAIT, S_CLOSE = int(State.NONE), int(State.TIME_WAIT), int(State.CLOSE)
E_SYN, E_UNTRACKED = int(Event.SYN), int(Event.UNTRACKED)
V_NEW, V_INVALID = int(Verdict.NEW), int(Verdict.INVALID)
C_ICMP, C_ICMPV6 = int(ProtoClass.ICMP), int(ProtoClass.ICMPV6)

# xxHash64 primes.
U1 = np.uint64(1)
U8 = np.uint64(8)
U16 = np.uint64(16)
U32 = np.uint64(32)


# ------------------------------------------------------------------ hashing
@njit(cache=True, inline="always")
def _hash(l0, l1, l2, l3, head, s_hi, s_lo, sport, d_hi, d_lo, dport):  # type: ignore[no-untyped-def]
    """Symmetric in (source, destination): each endpoint is hashed alone, the two
    are added, then the zone/version/protocol word ``head`` and the avalanche.
    Non-negative int64 (63 bits)."""
    a = lane_round(l0, s_hi) + rotl(lane_round(l1, s_lo), 19) + rotl(lane_round(l2, sport), 38)
    b = lane_round(l0, d_hi) + rotl(lane_round(l1, d_lo), 19) + rotl(lane_round(l2, dport), 38)
    h = a + b + rotl(lane_round(l3, head), 27)
    h = avalanche(h)
    return np.int64(h >> U1)


@njit(cache=True)
def _key_hash(ctl, head, s_hi, s_lo, sport, d_hi, d_lo, dport):  # type: ignore[no-untyped-def]
    """``_hash`` for the scalar API."""
    return _hash(np.uint64(ctl[C_LANE]), np.uint64(ctl[C_LANE + 1]), np.uint64(ctl[C_LANE + 2]),
                 np.uint64(ctl[C_LANE + 3]), head, s_hi, s_lo, sport, d_hi, d_lo, dport)


# --------------------------------------------------------- freeing and sweeps
# Called from the kernels' loops on rare paths only (an expired or re-keyed entry,
# a full table): not inlined, so they count references to their arrays per call.
@njit(cache=True)
def _free(c, conns, ht, ctl):  # type: ignore[no-untyped-def]
    """Forget connection ``c``: backward-shift its hash entry out, push it on the free list."""
    mask = ctl[C_MASK]
    j = conns[c].hash & mask
    while ht[j, 1] != c:
        j = (j + 1) & mask
    i = j
    while True:
        i = (i + 1) & mask
        if ht[i, 1] < 0:
            break
        home = ht[i, 0] & mask
        if ((i - home) & mask) >= ((i - j) & mask):  # the hole lies on i's path from home
            ht[j, 0] = ht[i, 0]
            ht[j, 1] = ht[i, 1]
            j = i
    ht[j, 1] = -1
    x = conns[c]
    x.state = S_NONE
    x.next = ctl[C_FREE]
    ctl[C_FREE] = c
    ctl[C_LIVE] -= 1


@njit(cache=True)
def _sweep(now, conns, ht, ctl):  # type: ignore[no-untyped-def]
    n = 0
    for c in range(conns.shape[0]):
        if conns[c].state != S_NONE and now >= conns[c].expiry:
            _free(c, conns, ht, ctl)
            n += 1
    ctl[K_EXPIRED] += n
    ctl[K_SWEEPS] += 1
    ctl[C_LAST_SWEEP] = now
    return n


# ------------------------------------------------------------------ kernels
@njit(cache=True, inline="always")
def _tuple(m, zone):  # type: ignore[no-untyped-def]
    """Row ``m``'s (head, source words, sport, destination words, dport) as uint64;
    ``head`` is zone | IP version | protocol, the key's direction-free part."""
    version = m.ip_version
    if version == 6:
        s_hi = np.uint64(m.src6_hi)
        s_lo = np.uint64(m.src6_lo)
        d_hi = np.uint64(m.dst6_hi)
        d_lo = np.uint64(m.dst6_lo)
    else:
        s_hi = np.uint64(0)
        s_lo = np.uint64(m.src4)
        d_hi = np.uint64(0)
        d_lo = np.uint64(m.dst4)
    head = (np.uint64(zone) << U16) | (np.uint64(version) << U8) | np.uint64(m.protocol)
    return head, s_hi, s_lo, np.uint64(m.sport), d_hi, d_lo, np.uint64(m.dport)


@njit(cache=True)
def _process(meta, rows, zones, allowed, now, outcome, slots, conns, ht, ctl):  # type: ignore[no-untyped-def]
    """Resolve, open and advance the connection of each selected row, in row order;
    return -1, or the index of the first zone out of range (then nothing is done).

    Two passes, so that on a table bigger than the caches the rows' loads overlap:
    the first hashes every row and prefetches its hash-table slot, the second
    prefetches the record that slot names for row ``k + AHEAD`` while it decides row
    ``k``. The probe and the insert are written out here rather than in helpers: a
    helper that reads ``conns`` only when a hash matches would count references to
    it on every call (see ``lookup4`` in portico/classify/lpm4.py).
    """
    n = rows.shape[0]
    for k in range(n):  # checked first: a bad call changes nothing
        if zones[k] < 0 or zones[k] > MAX_ZONE:
            return k
    mask = ctl[C_MASK]
    l0 = np.uint64(ctl[C_LANE])
    l1 = np.uint64(ctl[C_LANE + 1])
    l2 = np.uint64(ctl[C_LANE + 2])
    l3 = np.uint64(ctl[C_LANE + 3])
    hs = np.empty(n, dtype=np.int64)
    for k in range(n):
        head, s_hi, s_lo, sport, d_hi, d_lo, dport = _tuple(meta[rows[k]], zones[k])
        h = _hash(l0, l1, l2, l3, head, s_hi, s_lo, sport, d_hi, d_lo, dport)
        hs[k] = h
        prefetch(ht, h & mask)
    for k in range(n):
        if k + AHEAD < n:
            prefetch(conns, max(ht[hs[k + AHEAD] & mask, 1], 0))
        m = meta[rows[k]]
        ts = m.timestamp if now == NOW_FROM_META else now
        cls = PROTO_CLASS[m.protocol]
        fkey = m.tcp_flags
        if cls == C_ICMP or cls == C_ICMPV6:  # noqa: SIM109 (kept plain for Numba)
            fkey = m.icmp_type
        ev = EVENTS[cls, fkey]
        version = m.ip_version
        go = allowed[k]
        out = O_UNTRACKED
        c = -1
        if (version == 4 or version == 6) and ev != E_UNTRACKED and m.frag != 2:
            head, s_hi, s_lo, sport, d_hi, d_lo, dport = _tuple(m, zones[k])
            k_head = head << U32
            fwd = k_head | (sport << U16) | dport
            rev = k_head | (dport << U16) | sport
            h = hs[k]

            # Find the connection, either way round.
            d = 0
            j = h & mask
            while c < 0 and ht[j, 1] >= 0:
                if ht[j, 0] == h:
                    e = ht[j, 1]
                    x = conns[e]
                    if (x.k0 == fwd and x.src_hi == s_hi and x.src_lo == s_lo
                            and x.dst_hi == d_hi and x.dst_lo == d_lo):
                        c = e
                    elif (x.k0 == rev and x.src_hi == d_hi and x.src_lo == d_lo
                            and x.dst_hi == s_hi and x.dst_lo == s_lo):
                        c = e
                        d = 1
                j = (j + 1) & mask

            # Gone, or to be turned round?
            refused = False
            if c >= 0:
                s = conns[c].state
                if ts >= conns[c].expiry:
                    _free(c, conns, ht, ctl)
                    ctl[K_EXPIRED] += 1
                    c = -1
                elif d == 1 and ev == E_SYN and (s == S_TIME_WAIT or s == S_CLOSE):  # noqa: SIM109
                    if go:
                        _free(c, conns, ht, ctl)
                        ctl[K_REKEYED] += 1
                    else:
                        refused = True
                    c = -1

            if refused:
                out = O_DENIED
            elif c >= 0:
                x = conns[c]
                s = x.state
                v = VERDICTS[s, d, ev]
                if v == V_INVALID:
                    out = O_INVALID
                    c = -1
                elif v == V_NEW and not go:
                    out = O_DENIED
                    c = -1
                else:
                    nxt = TRANSITIONS[s, d, ev]
                    x.state = nxt
                    x.expiry = ts + ctl[C_TIMEOUTS + cls * N_STATES + nxt]
                    out = O_NEW if v == V_NEW else O_ESTABLISHED + d
                    if v == V_NEW:  # a closed connection's tuple opened again: a new one
                        x.gen = np.uint16((np.int64(x.gen) + 1) & 0xFFFF)
            elif VERDICTS[S_NONE, 0, ev] != V_NEW:
                out = O_INVALID
            elif not go:
                out = O_DENIED
            else:
                if ctl[C_FREE] < 0 and ts - ctl[C_LAST_SWEEP] >= ctl[C_SWEEP_IV]:
                    _sweep(ts, conns, ht, ctl)
                if ctl[C_FREE] < 0:
                    out = O_TABLE_FULL
                else:
                    c = ctl[C_FREE]
                    x = conns[c]
                    ctl[C_FREE] = x.next
                    x.gen = np.uint16((np.int64(x.gen) + 1) & 0xFFFF)  # a new connection here
                    x.k0 = fwd
                    x.src_hi = s_hi
                    x.src_lo = s_lo
                    x.dst_hi = d_hi
                    x.dst_lo = d_lo
                    x.hash = h
                    nxt = TRANSITIONS[S_NONE, 0, ev]
                    x.state = nxt
                    x.expiry = ts + ctl[C_TIMEOUTS + cls * N_STATES + nxt]
                    j = h & mask
                    while ht[j, 1] >= 0:
                        j = (j + 1) & mask
                    ht[j, 0] = h
                    ht[j, 1] = c
                    ctl[C_LIVE] += 1
                    out = O_NEW
        outcome[k] = out
        slots[k] = c
        ctl[C_COUNT + out] += 1
    return -1


@njit(cache=True)
def _touch(slots, now, conns, ctl):  # type: ignore[no-untyped-def]
    """Refresh the expiry of live connections (slot -1: skipped); return how many."""
    n = 0
    for k in range(slots.shape[0]):
        c = slots[k]
        if c >= 0:
            x = conns[c]
            s = x.state
            if s != S_NONE and now < x.expiry:
                cls = PROTO_CLASS[(x.k0 >> U32) & np.uint64(0xFF)]
                x.expiry = max(x.expiry, now + ctl[C_TIMEOUTS + cls * N_STATES + s])
                n += 1
    ctl[K_TOUCHED] += n
    return n


@njit(cache=True)
def _find(fwd, rev, s_hi, s_lo, d_hi, d_lo, h, conns, ht, ctl):  # type: ignore[no-untyped-def]
    """(slot, direction) of the connection with this tuple either way round, or (-1, 0)."""
    mask = ctl[C_MASK]
    j = h & mask
    while ht[j, 1] >= 0:
        if ht[j, 0] == h:
            e = ht[j, 1]
            x = conns[e]
            if (x.k0 == fwd and x.src_hi == s_hi and x.src_lo == s_lo
                    and x.dst_hi == d_hi and x.dst_lo == d_lo):
                return e, 0
            if (x.k0 == rev and x.src_hi == d_hi and x.src_lo == d_lo
                    and x.dst_hi == s_hi and x.dst_lo == s_lo):
                return e, 1
        j = (j + 1) & mask
    return -1, 0


@njit(cache=True)
def _peek(meta, rows, zones, now, out, conns, ht, ctl):  # type: ignore[no-untyped-def]
    """out[k] = whether row ``rows[k]`` belongs to a live connection (either way round).
    Changes nothing: the firewall asks before deciding what may wait for tracking."""
    for k in range(rows.shape[0]):
        head, s_hi, s_lo, sport, d_hi, d_lo, dport = _tuple(meta[rows[k]], zones[k])
        fwd = (head << U32) | (sport << U16) | dport
        rev = (head << U32) | (dport << U16) | sport
        h = _key_hash(ctl, head, s_hi, s_lo, sport, d_hi, d_lo, dport)
        c, _ = _find(fwd, rev, s_hi, s_lo, d_hi, d_lo, h, conns, ht, ctl)
        out[k] = c >= 0 and conns[max(c, 0)].expiry > now


# ------------------------------------------------------------------ the table
class Connection(NamedTuple):
    """One connection, readable (the CLI's flow dump, tests), key in ORIGINAL orientation."""

    slot: int
    zone: int
    ip_version: int
    protocol: int
    src: int
    sport: int
    dst: int
    dport: int
    state: State
    expiry: int  # ns

    def text(self) -> dict[str, object]:
        """As a dict with addresses written out and the state by name."""
        ip = ipaddress.IPv4Address if self.ip_version == 4 else ipaddress.IPv6Address
        return {**self._asdict(), "src": str(ip(self.src)), "dst": str(ip(self.dst)),
                "state": self.state.name}


class Found(NamedTuple):
    """What ``get`` returns: the connection's state, expiry, and the direction the
    asked-for tuple has in it (ORIGINAL: it is the key; REPLY: its reverse is)."""

    state: State
    expiry: int
    direction: Direction


Address = int | str | ipaddress.IPv4Address | ipaddress.IPv6Address


def capacity_slots(capacity: int) -> int:
    """Hash-table slots for ``capacity`` connections: a power of two, load <= 0.5."""
    return 1 << max(3, (2 * capacity - 1).bit_length())


class ConnTrack:
    """The datapath's connection table: connections in NumPy records, an open-addressing
    hash table over them, and the compiled kernels that run conntrack's state machine
    for a batch's rows (see the module's theory of operation)."""

    def __init__(
        self,
        *,
        capacity: int = 1 << 16,
        timeouts: Timeouts | None = None,
        sweep_interval: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"conntrack.capacity: {capacity!r} is not 1..2**26 connections")
        if not sweep_interval >= 0:
            raise ValueError(f"conntrack.sweep_interval: {sweep_interval!r} must be >= 0 s")
        self.capacity = capacity
        self.timeouts = timeouts or Timeouts()
        self.conns = np.zeros(capacity, dtype=CONN_DTYPE)
        self.conns["next"] = np.arange(1, capacity + 1, dtype=np.int32)
        self.conns["next"][-1] = -1
        slots = capacity_slots(capacity)
        self.ht = np.zeros((slots, 2), dtype=np.int64)
        self.ht[:, 1] = -1
        ctl = np.zeros(CTL_SIZE, dtype=np.int64)
        ctl[C_MASK] = slots - 1
        ctl[C_FREE] = 0
        ctl[C_SWEEP_IV] = round(sweep_interval * SECOND)
        ctl[C_LAST_SWEEP] = -(2**62)
        state = seed if seed is not None else int.from_bytes(os.urandom(8))
        for lane in range(N_LANES):
            state, value = _splitmix(state)
            ctl[C_LANE + lane] = value - (1 << 64) if value >= 1 << 63 else value
        ctl[C_TIMEOUTS:C_COUNT] = self.timeouts.table().ravel()
        self.ctl = ctl

    # -------------------------------------------------------------- batch API
    def process(
        self,
        meta: np.ndarray,
        rows: np.ndarray,
        zones: int | np.ndarray,
        allowed: bool | np.ndarray,
        now: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track the rows ``meta[rows]`` in order; return (``Outcome`` per row as uint8,
        connection slot per row as int64, -1 unless NEW, ESTABLISHED or REPLY).

        ``zones`` (0..65535) and ``allowed`` (the rules' word on a row that would open
        a connection) are per row of ``rows``, or one value for all. A row's time
        is its ``timestamp`` column unless ``now`` is given.
        """
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        n = len(rows)
        zone = _per_row(zones, np.int64, n, "zones")
        allow = _per_row(allowed, np.bool_, n, "allowed")
        outcome = np.empty(n, dtype=np.uint8)
        slots = np.empty(n, dtype=np.int64)
        bad = _process(meta, rows, zone, allow, np.int64(NOW_FROM_META if now is None else now),
                       outcome, slots, self.conns, self.ht, self.ctl)
        if bad >= 0:
            raise ValueError(f"zones[{bad}]: {int(zone[bad])} is not a zone 0..{MAX_ZONE}")
        return outcome, slots

    def peek(self, meta: np.ndarray, rows: np.ndarray, zones: np.ndarray, now: int) -> np.ndarray:
        """Per row: whether it belongs to a live connection now (nothing changes)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.bool_)
        _peek(meta, rows, np.ascontiguousarray(zones, dtype=np.int64), np.int64(now), out,
              self.conns, self.ht, self.ctl)
        return out

    def touch(self, slots: np.ndarray, now: int) -> int:
        """Refresh the connections of flows forwarded without ``process`` (flow-cache
        hits): expiry = ``now`` + the state's timeout, state kept. -1 and expired or
        free slots are skipped. Returns how many were refreshed."""
        idx = np.ascontiguousarray(slots, dtype=np.int64)
        if len(idx) and int(idx.max()) >= self.capacity:
            raise ValueError(f"slots: {int(idx.max())} is not a slot of this table")
        return int(_touch(idx, np.int64(now), self.conns, self.ctl))

    def expire(self, now: int) -> int:
        """Free every connection past its expiry at ``now``; return how many."""
        return int(_sweep(np.int64(now), self.conns, self.ht, self.ctl))

    # ------------------------------------------------------------ scalar API
    def __len__(self) -> int:
        """Connections held (expired ones not yet freed included)."""
        return int(self.ctl[C_LIVE])

    def counters(self) -> dict[str, int]:
        return {c.name.lower(): int(self.ctl[C_COUNT + c]) for c in Counter}

    def get(
        self,
        zone: int,
        protocol: int,
        src: Address,
        sport: int,
        dst: Address,
        dport: int,
        *,
        ip_version: int | None = None,
        now: int | None = None,
    ) -> Found | None:
        """The connection a packet with this tuple belongs to, either way round, or None.

        Addresses as text, ``ipaddress`` objects or ints; ints are IPv4 when both fit
        in 32 bits unless ``ip_version`` says otherwise. With ``now``, a connection
        past its expiry counts as gone. Changes nothing.
        """
        version, s, d = _family(src, dst, ip_version)
        for name, value, top in (("zone", zone, MAX_ZONE), ("protocol", protocol, 255),
                                 ("sport", sport, 0xFFFF), ("dport", dport, 0xFFFF)):
            if not 0 <= value <= top:
                raise ValueError(f"{name}: {value!r} is not in 0..{top}")
        head = (zone << 16) | (version << 8) | protocol
        fwd = (head << 32) | (sport << 16) | dport
        rev = (head << 32) | (dport << 16) | sport
        s_hi, s_lo = np.uint64(s >> 64), np.uint64(s & _LOW64)
        d_hi, d_lo = np.uint64(d >> 64), np.uint64(d & _LOW64)
        h = _key_hash(self.ctl, np.uint64(head), s_hi, s_lo, np.uint64(sport), d_hi, d_lo,
                      np.uint64(dport))
        c, direction = _find(np.uint64(fwd), np.uint64(rev), s_hi, s_lo, d_hi, d_lo, h,
                             self.conns, self.ht, self.ctl)
        if c < 0:
            return None
        x = self.conns[c]
        if now is not None and now >= int(x["expiry"]):
            return None
        return Found(State(int(x["state"])), int(x["expiry"]), Direction(int(direction)))

    def connection(self, slot: int) -> Connection:
        """The connection in ``slot`` (KeyError if the slot is free)."""
        x = self.conns[slot]
        if x["state"] == S_NONE:
            raise KeyError(f"slot {slot} holds no connection")
        k0 = int(x["k0"])
        return Connection(
            slot=int(slot),
            zone=k0 >> _ZONE_SHIFT,
            ip_version=(k0 >> _VERSION_SHIFT) & 0xFF,
            protocol=(k0 >> _PROTO_SHIFT) & 0xFF,
            src=int(x["src_hi"]) << 64 | int(x["src_lo"]),
            sport=(k0 >> _SPORT_SHIFT) & 0xFFFF,
            dst=int(x["dst_hi"]) << 64 | int(x["dst_lo"]),
            dport=k0 & 0xFFFF,
            state=State(int(x["state"])),
            expiry=int(x["expiry"]),
        )

    def dump(self, now: int | None = None) -> list[Connection]:
        """Every connection held, by slot; with ``now``, only those not yet expired."""
        live = self.conns["state"] != S_NONE
        if now is not None:
            live &= self.conns["expiry"] > now
        return [self.connection(int(c)) for c in np.flatnonzero(live)]


_LOW64 = (1 << 64) - 1


def _per_row(value: object, dtype: type, n: int, where: str) -> np.ndarray:
    """``value`` as a contiguous array of ``n`` (one value repeated, or checked)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        if len(value) != n:
            raise ValueError(f"{where}: {len(value)} values for {n} rows")
        return np.ascontiguousarray(value, dtype=dtype)
    if np.ndim(value) != 0:  # type: ignore[arg-type]
        return _per_row(np.asarray(value), dtype, n, where)
    return np.full(n, value, dtype=dtype)


def _splitmix(state: int) -> tuple[int, int]:
    """splitmix64: (next state, output), for the hash lanes."""
    state = (state + 0x9E3779B97F4A7C15) & _LOW64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _LOW64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _LOW64
    return state, z ^ (z >> 31)


def _address(value: Address, where: str) -> tuple[int | None, int]:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.version, int(value)
    if isinstance(value, str):
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not an IP address") from None
        return ip.version, int(ip)
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0:
        return None, int(value)
    raise ValueError(f"{where}: {value!r} is not an IP address")


def _family(src: Address, dst: Address, ip_version: int | None) -> tuple[int, int, int]:
    sv, s = _address(src, "src")
    dv, d = _address(dst, "dst")
    versions = {v for v in (sv, dv, ip_version) if v is not None}
    if len(versions) > 1:
        raise ValueError(f"src, dst: mixed IP versions {sorted(versions)}")
    version = versions.pop() if versions else (4 if max(s, d) < 1 << 32 else 6)
    if version not in (4, 6):
        raise ValueError(f"ip_version: {version!r} is not 4 or 6")
    limit = 1 << (32 if version == 4 else 128)
    if s >= limit or d >= limit:
        raise ValueError(f"src, dst: not IPv{version} addresses")
    return version, s, d
