"""neighbours: next hop to MAC (ARP, neighbour discovery), and the packets waiting for one.

Role. A router that has picked a route still needs the next hop's MAC before a
frame can leave: ARP (RFC 826) for IPv4, neighbour discovery (RFC 4861) for
IPv6. Every router is a routing *domain*: 1..65535 for the tenants' routers
(the tenant id) and 0 for the provider router, and the same address in two
domains is two neighbours. ``NeighbourTable`` answers "which MAC?" for a whole
batch of (domain, address) pairs at once; ``PendingQueue`` keeps the packets
whose next hop has no answer yet until it has one. Neither does I/O: the
caller reads ARP replies, ARP requests and neighbour advertisements (the
route stage's control path) and teaches the table (``learn4``/``learn6``);
it builds the ARP requests and neighbour solicitations that ``solicit`` asks
for, and re-injects what ``release_resolved`` hands back.

Theory of operation
-------------------

*Storage.* Static entries (the config's) and learned ones live together, one
record each (``RECORD_DTYPE``: domain, family, address as two 64-bit halves
(IPv4 in ``lo``), MAC, expiry time, learn time and order, a static flag),
sorted by a seeded 64-bit hash of the whole key (domain, family, address);
the hashes are a separate ``uint64`` array, ``keys``. A lookup hashes its
key, binary-searches ``keys`` and verifies the record's full key: ~16 probes
at 65,536 entries, in one compiled loop over the batch (``lookup``, also for
other kernels to inline). Measured here at batch 256, each batch of fresh
random keys: ~50 ns a row over 16 entries, ~90 over 1,000, ~150 over 65,536
(the search's dependent loads; lookups run on flow-cache misses only). One
order for both families, rather than ``domain << 32 | address`` for IPv4 and
a hash for IPv6, so that one kernel, one learning path and one eviction order
serve both. No two entries share a
hash: a learned key whose hash an entry already holds is refused and counted
(``hash_collisions``; with a seeded 64-bit hash, about one chance in 10**10 at
65,536 entries), so the search needs no scan over equal hashes. The seed is
random per table (``seed=`` fixes it), so a sender cannot aim addresses at
one hash.

Sorted arrays because lookups are per batch and learning is rare (ARP and NA
packets): refreshing or changing a known neighbour writes its record in
place; only a new neighbour inserts (``np.insert``, a copy of the arrays),
and an eviction or an expiry sweep deletes. ``learn4_many``/``learn6_many``
take a burst in one insert. Measured: a refresh or a MAC change through
``learn4``/``learn6`` ~5 µs (found by one kernel call, written in place);
a few rows through the ``_many`` calls ~150 µs (NumPy calls); a new neighbour in a
full 65,536-entry table ~2 ms (an insert and an eviction: two copies of
4 MiB).

*Learning.* A static entry is never overwritten: a learned MAC that differs
from it is refused and counted (``static_conflicts``). Refused as ``invalid``
and never learned: a zero, group (multicast, broadcast) or wider than 48-bit
MAC; an unspecified, multicast or broadcast address (an ARP probe's sender
0.0.0.0, RFC 5227, is not a neighbour). When several rows of one call name
the same neighbour, the last one wins. A learned entry expires ``timeout``
after it was last learned (refreshed by any ARP or NA that names it):
``resolve4``/``resolve6`` answer 0 for it from then on, as for an unknown
neighbour, and ``expire`` removes it. At ``capacity`` learned entries, a new
one pushes out the entry learned longest ago (``evicted``; static entries do
not count and never go). The bound is shared by every domain: a tenant whose
router learns many neighbours pushes out other domains' learned entries,
which then cost their flows a solicitation's delay (a bound per domain would
close this, as ``mactable`` gives each segment its own region). The caller
decides what is worth learning: Linux, by default, creates an entry only from
an ARP request for one of its own addresses or a reply it asked for.

*What the flow cache must hear.* A routed flow's cached decision rests on its
next hop's answer, so it carries the neighbour's dependency tag
(``tags4``/``tags6``: ``tag(TagKind.NEIGHBOUR, ident)``, ident the top 28
bits of the key's hash). The tag is the same whether the neighbour is known
or not: a flow decided "unresolved, hold the packet" and one decided "send to
this MAC" both rest on the same entry. ``take_changed_tags`` returns the tags
whose answer changed since the last call, for ``FlowCache.invalidate_tags``:

* a new neighbour, or one learned again after it expired: flows that were
  waiting on it re-decide, and now find a MAC;
* a learned MAC that changed: flows sent to the old MAC re-decide;
* an entry removed, by eviction or by ``expire``: flows sent to its MAC
  re-decide (and now wait for an answer).

A refresh with the same MAC changes nothing and reports nothing. An entry
that expires keeps its cached flows until the sweep that removes it, so the
owner calls ``expire(now)`` now and then (each second, with the flow cache's
own sweep). Tags are 28 bits of a hash: two neighbours may share one, and a
change to either re-decides the flows of both, which costs a miss, never a
wrong answer.

Pending packets
---------------
A packet whose next hop has no MAC yet is held, not dropped: RFC 4861 7.2.2
asks a node to queue at least one packet per unresolved neighbour, and Linux
queues a few (``unres_qlen``, in bytes since 3.3, ~100 packets' worth by
default). Bounded twice: ``per_neighbour`` packets a neighbour (16 here: a
TCP initial window's worth, and the first packets of a flow are what a
sender retransmits last), so that one silent next hop cannot take the whole
queue, and ``total`` packets in all, preallocated as ``total`` packet slots
(2 MiB at the defaults), so that a flood towards addresses that never answer
costs bounded memory and no allocation. What does not fit is refused, and
the caller drops it with its own reason. A held packet waits ``timeout`` (3 s,
Linux's resolution time at its default retransmit timer and three probes)
and is dropped after that (``expire``); meanwhile ``solicit`` asks for one
request per neighbour per ``retry`` (1 s, RFC 4861's RETRANS_TIMER), the
first at once.

The bytes are copied (from ``start``, ``length`` bytes) into a free slot of a
preallocated 2-D array, with the row's ``port``, ``timestamp`` and
``wire_length``; a neighbour's packets are a list of slot numbers (Python:
this is the rare path, and each list holds at most ``per_neighbour``).

*Re-injection.* Released packets come back as a fresh Batch, in arrival
order, with their receive port, time and wire length restored and every
other column reset, and the caller runs them through the datapath again from
the start, as if newly received. So every decision (firewall, NAT, route,
TTL) is made once, by the same code as for any packet, and now under the
known neighbour; the route stage holds packets before any action is applied
(actions are applied after the stages), so the bytes held are the bytes
received and nothing is done twice. The price is parsing and classifying a
few packets twice, on a path taken once per neighbour.

Example::

    table = NeighbourTable([(0, IPv4Address("192.0.2.1"), 0x020000000001)])
    macs = table.resolve4(domains, next_hops, now)          # 0 = unresolved
    tags = table.tags4(domains, next_hops)                  # one per row, for the cache
    waiting = np.flatnonzero(macs == 0)
    accepted = pending.hold(batch, rows[waiting], domains[waiting], 4,
                            None, next_hops[waiting], now)  # drop ~accepted
    for domain, family, hi, lo in pending.solicit(now): ...  # send ARP requests / NS
    table.learn4(domain, sender_ip, sender_mac, now)         # from an ARP reply
    cache.invalidate_tags(table.take_changed_tags())
    again = pending.release_resolved(table, now)            # process it like a new batch
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from numba import njit

from portico.batch import DEFAULT_HEADROOM, DEFAULT_SLOT, Batch
from portico.datapath.flowcache import SECOND, TagKind

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_DOMAIN",
    "NeighbourEntry",
    "NeighbourKey",
    "NeighbourTable",
    "PendingQueue",
    "RECORD_DTYPE",
    "TAG_BASE",
    "key_hash",
    "lookup",
]

MAX_DOMAIN = 65535  # domain 0: the provider router; 1..65535: a tenant's, by tenant id
DEFAULT_TIMEOUT = 300.0  # s: a learned entry's life without a refresh
DEFAULT_CAPACITY = 65536  # learned entries
TAG_KIND = TagKind.NEIGHBOUR
TAG_BASE = int(TAG_KIND) << 28
MAC_MASK = (1 << 48) - 1
GROUP_BIT = 1 << 40  # the I/G bit of the first octet: multicast and broadcast
NEVER = np.iinfo(np.int64).max  # a static entry's expiry

RECORD_DTYPE = np.dtype(
    [
        ("domain", "i8"),
        ("hi", "u8"),  # IPv6 high 64 bits; 0 for IPv4
        ("lo", "u8"),  # IPv6 low 64 bits, or the IPv4 address
        ("mac", "u8"),
        ("expires", "i8"),  # ns; NEVER for a static entry
        ("learned", "i8"),  # ns, when last learned
        ("stamp", "i8"),  # learn order, for eviction (capture clocks repeat and go back);
        # NEVER for a static entry, so that "the lowest stamps" are learned entries
        ("family", "u1"),  # 4 or 6
        ("static", "?"),
    ],
    align=True,
)
_KEY_DTYPE = np.dtype([("domain", "i8"), ("hi", "u8"), ("lo", "u8")])

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U0 = np.uint64(0)
_U8 = np.uint64(8)
_U27 = np.uint64(27)
_U30 = np.uint64(30)
_U31 = np.uint64(31)
_U36 = np.uint64(36)
_U32MAX = np.uint64(0xFFFFFFFF)
_NO_HI = np.empty(0, dtype=np.uint64)  # the ``hi`` of IPv4 rows, for _hashes and _tags


# ------------------------------------------------------------------ kernels
# The helpers take scalars, or index every array they are given on every path
# (the sentinel record at the end of ``keys``/``records`` makes every position
# valid): an inlined helper that indexes an array on one branch only makes Numba
# keep a reference-count pair around each call (see lookup4 in classify/lpm4.py).


@njit(cache=True, inline="always")
def _mix(h):  # type: ignore[no-untyped-def]
    """splitmix64's finalizer: a bijection of uint64 that spreads every bit."""
    h = (h ^ (h >> _U30)) * _M1
    h = (h ^ (h >> _U27)) * _M2
    return h ^ (h >> _U31)


@njit(cache=True, inline="always")
def key_hash(seed, domain, family, hi, lo):  # type: ignore[no-untyped-def]
    """The seeded 64-bit hash of a neighbour's key; its top 28 bits are the tag's ident."""
    h = _mix(np.uint64(seed) ^ ((np.uint64(domain) << _U8) | np.uint64(family)))
    h = _mix((h + _GOLDEN) ^ np.uint64(hi))
    return _mix((h + _GOLDEN) ^ np.uint64(lo))


@njit(cache=True, inline="always")
def _position(keys, records, h, domain, family, hi, lo):  # type: ignore[no-untyped-def]
    """(position of the entry with this key and hash ``h``, found?). Without it, the
    position is where ``h`` would go (the sentinel's at most)."""
    # Explicit int64 indices: with plain literals a search like this measured 20-30 ns
    # a call in mactable.static_lookup, this ~3. ``keys`` ends in a sentinel at
    # 2**64-1 that no record matches, so ``a`` is always a valid index.
    a = np.int64(0)
    b = np.int64(keys.shape[0]) - np.int64(1)
    while a < b:
        mid = (a + b) >> np.int64(1)
        if keys[mid] < h:
            a = mid + np.int64(1)
        else:
            b = mid
    r = records[a]
    held = keys[a]
    found = (held == h) & (r.domain == domain) & (r.family == family) & (r.hi == hi) & (r.lo == lo)
    return a, found


@njit(cache=True, inline="always")
def lookup(keys, records, seed, domain, family, hi, lo, now):  # type: ignore[no-untyped-def]
    """The MAC of (domain, family, hi, lo) at ``now``, or 0: for kernels that inline it,
    with a table's ``keys``, ``records`` and ``seed`` (both arrays taken afresh for each
    batch: learning a new neighbour replaces them)."""
    h = key_hash(seed, domain, family, hi, lo)
    a, found = _position(keys, records, h, np.int64(domain), family, np.uint64(hi),
                         np.uint64(lo))
    r = records[a]
    return r.mac if found and now < r.expires else _U0


@njit(cache=True)
def _find(keys, records, seed, domain, family, hi, lo):  # type: ignore[no-untyped-def]
    """The position of one key's entry, or -1 (learning's fast path)."""
    h = key_hash(seed, domain, family, hi, lo)
    a, found = _position(keys, records, h, domain, family, hi, lo)
    return a if found else np.int64(-1)


@njit(cache=True)
def _resolve4(keys, records, seed, domains, addresses, now):  # type: ignore[no-untyped-def]
    n = domains.shape[0]
    out = np.empty(n, dtype=np.uint64)
    for k in range(n):
        out[k] = lookup(keys, records, seed, domains[k], 4, _U0, addresses[k], now)
    return out


@njit(cache=True)
def _resolve6(keys, records, seed, domains, hi, lo, now):  # type: ignore[no-untyped-def]
    n = domains.shape[0]
    out = np.empty(n, dtype=np.uint64)
    for k in range(n):
        out[k] = lookup(keys, records, seed, domains[k], 6, hi[k], lo[k], now)
    return out


@njit(cache=True)
def _hashes(seed, domains, family, hi, lo):  # type: ignore[no-untyped-def]
    """Key hashes of a family's rows (``hi`` empty: all zero, as for IPv4)."""
    n = domains.shape[0]
    out = np.empty(n, dtype=np.uint64)
    zero = hi.shape[0] == 0
    for k in range(n):
        out[k] = key_hash(seed, domains[k], family, _U0 if zero else hi[k], lo[k])
    return out


@njit(cache=True)
def _tags(seed, domains, family, hi, lo):  # type: ignore[no-untyped-def]
    """Dependency tags of a family's rows (``hi`` empty: all zero, as for IPv4)."""
    n = domains.shape[0]
    out = np.empty(n, dtype=np.uint32)
    zero = hi.shape[0] == 0
    for k in range(n):
        h = key_hash(seed, domains[k], family, _U0 if zero else hi[k], lo[k])
        out[k] = np.uint32(TAG_BASE) | np.uint32(h >> _U36)
    return out


def _raw(records: np.ndarray) -> np.ndarray:
    """``records`` as opaque bytes a record: NumPy copies a many-field record array
    (np.insert, np.delete) ~7x slower than the same bytes (measured at 65,536 entries)."""
    return records.view(f"V{RECORD_DTYPE.itemsize}")


def _tags_of(hashes: np.ndarray) -> np.ndarray:
    return (np.uint32(TAG_BASE) | (hashes >> _U36).astype(np.uint32)).astype(np.uint32)


# --------------------------------------------------------------- the table
class NeighbourEntry(NamedTuple):
    """One row of ``NeighbourTable.entries`` (``show neighbours``)."""

    domain: int
    address: str
    mac: int
    static: bool
    age: float | None  # seconds since learned; None for a static entry


def _split(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int, int]:
    """(family, hi, lo) of an address."""
    if isinstance(address, ipaddress.IPv4Address):
        return 4, 0, int(address)
    if isinstance(address, ipaddress.IPv6Address):
        value = int(address)
        return 6, value >> 64, value & 0xFFFFFFFFFFFFFFFF
    raise TypeError(f"not an IPv4Address or IPv6Address: {address!r}")


def _address(family: int, hi: int, lo: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == 4:
        return ipaddress.IPv4Address(lo)
    return ipaddress.IPv6Address(hi << 64 | lo)


def _i64(values: object) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


def _u64(values: object) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.uint64)


def _sentinel() -> np.ndarray:
    end = np.zeros(1, dtype=RECORD_DTYPE)
    end["domain"] = -1  # no key's: never found
    end["expires"] = np.iinfo(np.int64).min
    return end


_COUNTERS = ("learned", "changed", "refreshed", "static_conflicts", "invalid",
             "hash_collisions", "evicted", "expired")


class NeighbourTable:
    """Static and learned neighbours of every routing domain; see the theory of operation.

    ``static``: (domain, address, mac) entries from the config. ``timeout`` (seconds):
    a learned entry's life without a refresh. ``capacity``: learned entries kept at
    most. ``seed`` fixes the key hash (tests). Times (``now``) are ns, as the Batch's.
    """

    def __init__(
        self,
        static: Iterable[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        capacity: int = DEFAULT_CAPACITY,
        seed: int | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.timeout = round(timeout * SECOND)  # ns
        self.capacity = capacity
        entries: dict[tuple[int, int, int, int], int] = {}
        for domain, address, mac in static:
            _check_domain(domain)
            family, hi, lo = _split(address)
            if not 0 < mac <= MAC_MASK or mac & GROUP_BIT:
                raise ValueError(f"neighbour {address} in domain {domain}: {mac:#x} is not "
                                 "a unicast MAC")
            key = (domain, family, hi, lo)
            if entries.get(key, mac) != mac:
                raise ValueError(f"neighbour {address} in domain {domain} has two MACs")
            entries[key] = mac
        rows = np.zeros(len(entries), dtype=RECORD_DTYPE)
        for i, ((domain, family, hi, lo), mac) in enumerate(entries.items()):
            rows[i] = (domain, hi, lo, mac, NEVER, 0, NEVER, family, True)
        hashes = np.empty(len(rows), dtype=np.uint64)
        while True:  # a fresh seed until no two static keys share a hash (see Storage)
            self.seed = np.uint64(int.from_bytes(os.urandom(8)) if seed is None else seed)
            for family in (4, 6):
                sel = rows["family"] == family
                hashes[sel] = _hashes(self.seed, rows["domain"][sel], family, rows["hi"][sel],
                                      rows["lo"][sel])
            if len(np.unique(hashes)) == len(hashes):
                break
            if seed is not None:
                raise ValueError(f"two static neighbours share a hash under seed {seed}")
        order = np.argsort(hashes, kind="stable")
        self.keys = np.append(hashes[order], np.uint64(2**64 - 1))
        self.records = np.concatenate([rows[order], _sentinel()])
        self._seq = 0
        self._dynamic = 0  # learned entries held
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._changed: list[np.ndarray] = []

    # ----------------------------------------------------------- per batch
    def resolve4(self, domains: np.ndarray, addresses: np.ndarray, now: int) -> np.ndarray:
        """The MAC of each (domain, IPv4 address) at ``now`` (``uint64``), 0 = unresolved."""
        return _resolve4(self.keys, self.records, self.seed, _i64(domains), _u64(addresses),
                         np.int64(now))

    def resolve6(self, domains: np.ndarray, hi: np.ndarray, lo: np.ndarray,
                 now: int) -> np.ndarray:
        """The MAC of each (domain, IPv6 address as hi, lo) at ``now``, 0 = unresolved."""
        return _resolve6(self.keys, self.records, self.seed, _i64(domains), _u64(hi), _u64(lo),
                         np.int64(now))

    def tags4(self, domains: np.ndarray, addresses: np.ndarray) -> np.ndarray:
        """The dependency tag (``uint32``) of each (domain, IPv4 address), known or not."""
        return _tags(self.seed, _i64(domains), 4, _NO_HI, _u64(addresses))

    def tags6(self, domains: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The dependency tag of each (domain, IPv6 address as hi, lo), known or not."""
        return _tags(self.seed, _i64(domains), 6, _u64(hi), _u64(lo))

    def take_changed_tags(self) -> np.ndarray:
        """The tags of cached flows to re-decide since the last call (sorted, unique)."""
        if not self._changed:
            return np.empty(0, dtype=np.uint32)
        tags = np.unique(np.concatenate(self._changed))
        self._changed.clear()
        return tags

    # ------------------------------------------------------------ learning
    def learn4(self, domain: int, address: int | ipaddress.IPv4Address, mac: int,
               now: int) -> None:
        """Learn (or refresh) one IPv4 neighbour: an ARP reply's or request's sender."""
        if self._known(domain, 4, 0, int(address), mac, now):
            return
        self.learn4_many(np.array([domain]), np.array([int(address)], dtype=np.uint64),
                         np.array([mac], dtype=np.uint64), now)

    def learn6(self, domain: int, hi: int, lo: int, mac: int, now: int) -> None:
        """Learn (or refresh) one IPv6 neighbour: a neighbour advertisement's target."""
        if self._known(domain, 6, hi, lo, mac, now):
            return
        self.learn6_many(np.array([domain]), np.array([hi], dtype=np.uint64),
                         np.array([lo], dtype=np.uint64), np.array([mac], dtype=np.uint64),
                         now)

    def learn4_many(self, domains: np.ndarray, addresses: np.ndarray, macs: np.ndarray,
                    now: int) -> None:
        """Learn IPv4 neighbours, in row order (the last row of a neighbour wins)."""
        lo = _u64(addresses)
        self._learn(4, _i64(domains), np.zeros(len(lo), dtype=np.uint64), lo, _u64(macs), now)

    def learn6_many(self, domains: np.ndarray, hi: np.ndarray, lo: np.ndarray,
                    macs: np.ndarray, now: int) -> None:
        """Learn IPv6 neighbours, in row order (the last row of a neighbour wins)."""
        self._learn(6, _i64(domains), _u64(hi), _u64(lo), _u64(macs), now)

    def expire(self, now: int) -> int:
        """Remove the learned entries expired at ``now``, reporting their tags; how many."""
        body = self.records[:-1]
        gone = np.flatnonzero(~body["static"] & (body["expires"] <= now))
        self._remove(gone)
        self._counts["expired"] += len(gone)
        return len(gone)

    def _known(self, domain: int, family: int, hi: int, lo: int, mac: int, now: int) -> bool:
        """Refresh or change a known learned neighbour in place, as ``_learn`` would (~4 µs
        rather than ~150: most ARP and NA packets name a known neighbour); False to leave
        anything else to ``_learn``."""
        if not (0 < mac <= MAC_MASK and mac & GROUP_BIT == 0 and 0 <= domain <= MAX_DOMAIN
                and 0 <= hi < 1 << 64 and 0 <= lo < 1 << 64):
            return False
        pos = int(_find(self.keys, self.records, self.seed, np.int64(domain), family,
                        np.uint64(hi), np.uint64(lo)))
        if pos < 0 or self.records["static"][pos]:
            return False
        r = self.records[pos : pos + 1]
        if r["mac"][0] != mac or r["expires"][0] <= now:
            self._note(self.keys[pos : pos + 1])
        self._counts["changed" if r["mac"][0] != mac else "refreshed"] += 1
        r["mac"], r["learned"], r["expires"], r["stamp"] = mac, now, now + self.timeout, self._seq
        self._seq += 1
        return True

    def _learn(self, family: int, domains: np.ndarray, hi: np.ndarray, lo: np.ndarray,
               macs: np.ndarray, now: int) -> None:
        n = len(domains)
        if not n == len(hi) == len(lo) == len(macs):
            raise ValueError("learn: domains, addresses and MACs differ in length")
        if n == 0:
            return
        if np.any((domains < 0) | (domains > MAX_DOMAIN)):
            raise ValueError(f"learn: a domain outside 0..{MAX_DOMAIN}")
        valid = (macs != 0) & (macs <= MAC_MASK) & ((macs & np.uint64(GROUP_BIT)) == 0)
        if family == 4:
            multicast = (lo >> np.uint64(28)) == np.uint64(14)
            valid &= (lo != 0) & (lo < _U32MAX) & ~multicast
        else:
            valid &= ((hi | lo) != 0) & ((hi >> np.uint64(56)) != np.uint64(0xFF))
        self._counts["invalid"] += int(n - np.count_nonzero(valid))
        # The last row of each neighbour, in row order (its stamp is its row).
        rows = np.flatnonzero(valid)
        key = np.empty(len(rows), dtype=_KEY_DTYPE)
        key["domain"], key["hi"], key["lo"] = domains[rows], hi[rows], lo[rows]
        _, first_from_end = np.unique(key[::-1], return_index=True)
        rows = np.sort(rows[len(rows) - 1 - first_from_end])
        stamps = self._seq + rows
        self._seq += n
        d, h, l, m = domains[rows], hi[rows], lo[rows], macs[rows]
        hashes = _hashes(self.seed, d, family, h, l)
        # Two new keys of one hash: keep the first (see Storage).
        _, first = np.unique(hashes, return_index=True)
        alone = np.zeros(len(rows), dtype=bool)
        alone[first] = True
        pos = np.searchsorted(self.keys, hashes)  # the sentinel: always a valid index
        held = self.records[pos]
        same_hash = self.keys[pos] == hashes
        found = (same_hash & (held["domain"] == d) & (held["family"] == family)
                 & (held["hi"] == h) & (held["lo"] == l))
        collision = (same_hash & ~found) | ~alone
        self._counts["hash_collisions"] += int(np.count_nonzero(collision))
        static = found & held["static"]
        self._counts["static_conflicts"] += int(np.count_nonzero(static & (held["mac"] != m)))
        # Known, learned: written in place.
        update = found & ~held["static"]
        at = pos[update]
        was_live = held["expires"][update] > now
        moved = held["mac"][update] != m[update]
        self._counts["changed"] += int(np.count_nonzero(moved))
        self._counts["refreshed"] += int(np.count_nonzero(~moved))
        self._note(hashes[update][moved | ~was_live])
        self.records["mac"][at] = m[update]
        self.records["learned"][at] = now
        self.records["expires"][at] = now + self.timeout
        self.records["stamp"][at] = stamps[update]
        # New: inserted in hash order.
        new = np.flatnonzero(~found & ~collision)
        if len(new):
            new = new[np.argsort(hashes[new], kind="stable")]
            add = np.zeros(len(new), dtype=RECORD_DTYPE)
            add["domain"], add["hi"], add["lo"], add["mac"] = d[new], h[new], l[new], m[new]
            add["family"] = family
            add["learned"] = now
            add["expires"] = now + self.timeout
            add["stamp"] = stamps[new]
            where = np.searchsorted(self.keys, hashes[new])
            self.keys = np.insert(self.keys, where, hashes[new])
            self.records = np.insert(_raw(self.records), where, _raw(add)).view(RECORD_DTYPE)
            self._dynamic += len(new)
            self._counts["learned"] += len(new)
            self._note(hashes[new])
        # Over capacity: the entries learned longest ago go (static ones' stamps are NEVER).
        over = self._dynamic - self.capacity
        if over > 0:
            stamps = self.records["stamp"][:-1]
            oldest = (np.array([np.argmin(stamps)]) if over == 1
                      else np.argpartition(stamps, over - 1)[:over])
            self._remove(oldest)
            self._counts["evicted"] += over

    def _remove(self, positions: np.ndarray) -> None:
        """Delete learned entries at ``positions`` (not the sentinel), reporting their tags."""
        if len(positions):
            self._note(self.keys[positions])
            self.keys = np.delete(self.keys, positions)
            self.records = np.delete(_raw(self.records), positions).view(RECORD_DTYPE)
            self._dynamic -= len(positions)

    def _note(self, hashes: np.ndarray) -> None:
        if len(hashes):
            self._changed.append(_tags_of(hashes))

    # -------------------------------------------------------- control side
    def resolve(self, domain: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                now: int) -> int:
        """One neighbour's MAC at ``now``, or 0 (tests, the CLI)."""
        family, hi, lo = _split(address)
        d = np.array([domain], dtype=np.int64)
        if family == 4:
            return int(self.resolve4(d, np.array([lo], dtype=np.uint64), now)[0])
        return int(self.resolve6(d, np.array([hi], dtype=np.uint64),
                                 np.array([lo], dtype=np.uint64), now)[0])

    def entries(self, now: int | None = None) -> list[NeighbourEntry]:
        """Every entry, static and learned (expired ones too, until ``expire``), by domain
        and address; ``age`` in seconds at ``now`` (default: the wall clock)."""
        now = time.time_ns() if now is None else now
        out = [
            NeighbourEntry(int(r["domain"]), str(_address(int(r["family"]), int(r["hi"]),
                                                          int(r["lo"]))),
                           int(r["mac"]), bool(r["static"]),
                           None if r["static"] else (now - int(r["learned"])) / SECOND)
            for r in self.records[:-1]
        ]
        out.sort(key=lambda e: (e.domain, ipaddress.ip_address(e.address).version,
                                ipaddress.ip_address(e.address)))
        return out

    def counters(self) -> dict[str, int]:
        """learned (new entries), changed (a learned MAC replaced), refreshed (the same
        MAC again), static_conflicts, invalid, hash_collisions (all three refused),
        evicted, expired; and the entries held now: static, dynamic."""
        return {**self._counts, "static": len(self) - self._dynamic, "dynamic": self._dynamic}

    def __len__(self) -> int:
        return len(self.keys) - 1


def _check_domain(domain: int) -> None:
    if not 0 <= domain <= MAX_DOMAIN:
        raise ValueError(f"domain {domain} outside 0..{MAX_DOMAIN}")


# --------------------------------------------------------- pending packets
class NeighbourKey(NamedTuple):
    """A neighbour packets wait for: IPv4 in ``lo`` with ``hi`` 0."""

    domain: int
    family: int
    hi: int
    lo: int

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return _address(self.family, self.hi, self.lo)


SLOT_DTYPE = np.dtype(
    [
        ("length", "i4"),
        ("wire_length", "i4"),
        ("port", "i4"),
        ("timestamp", "i8"),
        ("since", "i8"),  # ns, when held
        ("seq", "i8"),  # hold order across neighbours
    ],
    align=True,
)


@njit(cache=True)
def _copy_in(data, meta, rows, store, slots_meta, slots, now, seq):  # type: ignore[no-untyped-def]
    for k in range(rows.shape[0]):
        r = rows[k]
        s = slots[k]
        m = meta[r]
        start = m.start
        length = m.length
        store[s, :length] = data[r, start : start + length]
        x = slots_meta[s]
        x.length = length
        x.wire_length = m.wire_length
        x.port = m.port
        x.timestamp = m.timestamp
        x.since = now
        x.seq = seq + k


@njit(cache=True)
def _copy_out(store, slots_meta, slots, data, meta, headroom):  # type: ignore[no-untyped-def]
    room = data.shape[1]
    for k in range(slots.shape[0]):
        s = slots[k]
        x = slots_meta[s]
        length = x.length
        start = min(headroom, room - length)  # a packet grown into the headroom still fits
        data[k, start : start + length] = store[s, :length]
        m = meta[k]
        m.start = start
        m.length = length
        m.wire_length = x.wire_length
        m.port = x.port
        m.timestamp = x.timestamp


class _Waiting:
    """One neighbour's queue: slot numbers in arrival order, and the last request's time."""

    __slots__ = ("slots", "solicited")

    def __init__(self) -> None:
        self.slots: list[int] = []
        self.solicited: int | None = None


_QUEUE_COUNTERS = ("held", "overflow", "released", "timed_out", "solicited")


class PendingQueue:
    """Packets waiting for their next hop's MAC; see "Pending packets" above.

    ``per_neighbour`` and ``total`` bound the packets held; ``timeout`` and ``retry``
    are seconds; ``slot_size`` is the largest Batch slot whose packets it takes.
    """

    def __init__(self, *, per_neighbour: int = 16, total: int = 1024, timeout: float = 3.0,
                 retry: float = 1.0, slot_size: int = DEFAULT_SLOT) -> None:
        if per_neighbour <= 0 or total <= 0:
            raise ValueError("per_neighbour and total must be positive")
        if timeout <= 0 or retry <= 0:
            raise ValueError("timeout and retry must be positive")
        if not DEFAULT_HEADROOM + 64 < slot_size <= 32767:
            raise ValueError(f"slot size {slot_size} is not a Batch's")
        self.per_neighbour = per_neighbour
        self.total = total
        self.timeout = round(timeout * SECOND)
        self.retry = round(retry * SECOND)
        self.data = np.zeros((total, slot_size), dtype=np.uint8)
        self.slots = np.zeros(total, dtype=SLOT_DTYPE)
        self._free = np.arange(total - 1, -1, -1, dtype=np.int64)  # a stack: slot 0 first
        self._n_free = total
        self._waiting: OrderedDict[NeighbourKey, _Waiting] = OrderedDict()
        self._seq = 0
        self._counts = dict.fromkeys(_QUEUE_COUNTERS, 0)

    @property
    def slot_size(self) -> int:
        return int(self.data.shape[1])

    def hold(self, batch: Batch, rows: np.ndarray, domains: np.ndarray, family: int,
             hi: np.ndarray | None, lo: np.ndarray, now: int) -> np.ndarray:
        """Hold ``batch``'s ``rows``, each waiting on (domains[k], family, hi[k], lo[k])
        (IPv4: the address in ``lo``, ``hi`` zeros or None). Returns which were accepted:
        rows over ``per_neighbour`` or ``total`` are not, and the caller drops them."""
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family}")
        if batch.slot_size > self.slot_size:
            raise ValueError(f"a {batch.slot_size}-byte slot does not fit the queue's "
                             f"{self.slot_size}")
        rows = _i64(rows)
        n = len(rows)
        key = np.empty(n, dtype=_KEY_DTYPE)
        key["domain"] = _i64(domains)
        key["hi"] = 0 if hi is None else _u64(hi)
        key["lo"] = _u64(lo)
        unique, inverse = np.unique(key, return_inverse=True)
        keys = [NeighbourKey(int(u["domain"]), family, int(u["hi"]), int(u["lo"]))
                for u in unique]
        waiting = np.array([len(self._waiting[k].slots) if k in self._waiting else 0
                            for k in keys], dtype=np.int64)
        # A row's rank among the rows of its neighbour, in row order.
        order = np.argsort(inverse, kind="stable")
        grouped = inverse[order]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.searchsorted(grouped, grouped)
        fits = waiting[inverse] + rank < self.per_neighbour
        accepted = fits & (np.cumsum(fits) <= self._n_free)
        taken = int(np.count_nonzero(accepted))
        self._counts["held"] += taken
        self._counts["overflow"] += n - taken
        if taken == 0:
            return accepted
        slots = self._free[self._n_free - taken : self._n_free][::-1].copy()
        self._n_free -= taken
        _copy_in(batch.data, batch.meta, rows[accepted], self.data, self.slots, slots,
                 np.int64(now), np.int64(self._seq))
        self._seq += taken
        owner = inverse[accepted]
        order = np.argsort(owner, kind="stable")
        groups, starts = np.unique(owner[order], return_index=True)
        for g, part in zip(groups.tolist(), np.split(slots[order], starts[1:]), strict=True):
            w = self._waiting.get(keys[g])
            if w is None:
                w = self._waiting[keys[g]] = _Waiting()
            w.slots.extend(part.tolist())
        return accepted

    def solicit(self, now: int) -> list[NeighbourKey]:
        """The neighbours to send an ARP request or NS for now: those with packets still
        in time, not asked for in the last ``retry`` (asked at once the first time)."""
        due = []
        for key, w in self._waiting.items():
            if now - int(self.slots["since"][w.slots[-1]]) >= self.timeout:
                continue  # every packet timed out: nothing to ask for
            last = w.solicited
            if last is None or now - last >= self.retry or now < last:  # (a clock set back)
                w.solicited = now
                due.append(key)
        self._counts["solicited"] += len(due)
        return due

    def release4(self, domain: int, address: int | ipaddress.IPv4Address) -> Batch | None:
        """The packets waiting on an IPv4 neighbour, in arrival order, or None."""
        return self._release([NeighbourKey(domain, 4, 0, int(address))])

    def release6(self, domain: int, hi: int, lo: int) -> Batch | None:
        """The packets waiting on an IPv6 neighbour, in arrival order, or None."""
        return self._release([NeighbourKey(domain, 6, hi, lo)])

    def release_resolved(self, table: NeighbourTable, now: int) -> Batch | None:
        """Drop what timed out, then release every neighbour ``table`` resolves at
        ``now``: one Batch, in arrival order, or None."""
        self.expire(now)
        ready: list[NeighbourKey] = []
        for family in (4, 6):
            keys = [k for k in self._waiting if k.family == family]
            if not keys:
                continue
            domains = np.array([k.domain for k in keys], dtype=np.int64)
            lo = np.array([k.lo for k in keys], dtype=np.uint64)
            if family == 4:
                macs = table.resolve4(domains, lo, now)
            else:
                macs = table.resolve6(domains, np.array([k.hi for k in keys], dtype=np.uint64),
                                      lo, now)
            ready.extend(k for k, mac in zip(keys, macs.tolist(), strict=True) if mac)
        return self._release(ready)

    def expire(self, now: int) -> int:
        """Drop the packets that have waited ``timeout`` or longer; how many."""
        dropped = 0
        for key in list(self._waiting):
            w = self._waiting[key]
            slots = np.array(w.slots, dtype=np.int64)
            old = now - self.slots["since"][slots] >= self.timeout
            if old.any():
                self._free_slots(slots[old])
                dropped += int(np.count_nonzero(old))
                w.slots = slots[~old].tolist()
                if not w.slots:
                    del self._waiting[key]
        self._counts["timed_out"] += dropped
        return dropped

    def _release(self, keys: list[NeighbourKey]) -> Batch | None:
        parts = [self._waiting.pop(k).slots for k in keys if k in self._waiting]
        if not parts:
            return None
        slots = np.concatenate([np.array(p, dtype=np.int64) for p in parts])
        slots = slots[np.argsort(self.slots["seq"][slots], kind="stable")]
        batch = Batch(len(slots), slot_size=self.slot_size)
        batch.reset(len(slots))
        _copy_out(self.data, self.slots, slots, batch.data, batch.meta,
                  np.int64(DEFAULT_HEADROOM))
        self._free_slots(slots)
        self._counts["released"] += len(slots)
        return batch

    def _free_slots(self, slots: np.ndarray) -> None:
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)

    def counters(self) -> dict[str, int]:
        """held, overflow (refused: over either bound), released, timed_out, solicited
        (requests asked for); and now: waiting (packets), neighbours."""
        return {**self._counts, "waiting": len(self), "neighbours": len(self._waiting)}

    def __len__(self) -> int:
        return self.total - self._n_free
