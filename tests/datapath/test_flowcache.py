"""The flow cache: held to a dict-based reference model, then scenario by scenario.

``RefCache`` is the table as a reader would write it: a dict from the flow's
fields (not from the packed key words) to a slot, the buckets as lists of
slots, and the placement rules of the module's theory of operation written out
plainly. Hypothesis drives random sequences of lookups, inserts, time steps,
generation bumps, tag invalidations, sweeps and flushes through both on a
two-bucket table and compares every returned entry index, every counter and
every occupied slot. The targeted tests after it name one behaviour each; the
IPv6 test builds its packets with Scapy and parses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from portico.batch import META_DTYPE, Batch
from portico.datapath.flowcache import (
    BYTES_PER_SLOT,
    KEY_WORDS,
    MAX_TAGS,
    NO_BINDING,
    NO_TAG,
    SECOND,
    WAYS,
    FlowCache,
    TagKind,
    capacity_for,
    tag,
)
from portico.datapath.stages.parse import parse

IDLE = 100

# ------------------------------------------------------------------ flows


def flow_meta(n: int) -> np.ndarray:
    """``n`` distinct flows spread over every key field: ports, tenants, VLANs, v4/v6, ICMP."""
    m = np.zeros(n, META_DTYPE)
    for i in range(n):
        m["port"][i] = i % 3
        m["tenant"][i] = (i // 3) % 2
        m["vlan_outer"][i] = 100 * (i % 2)
        m["tunnel_id"][i] = i % 5
        m["length"][i] = 60 + i
        m["sport"][i] = 1000 + i
        m["dport"][i] = 80
        if i % 4 == 3:
            m["ip_version"][i] = 6
            m["protocol"][i] = 58 if i % 8 == 7 else 6
            m["icmp_type"][i] = 128 if i % 8 == 7 else 0
            m["src6_hi"][i] = 0x20010DB800000000
            m["src6_lo"][i] = i
            m["dst6_hi"][i] = 0x20010DB800000000
            m["dst6_lo"][i] = 0xFFFF
        else:
            m["ip_version"][i] = 4
            m["protocol"][i] = 1 if i % 8 == 1 else 17
            m["icmp_type"][i] = 8 if i % 8 == 1 else 0
            m["src4"][i] = 0x0A000001 + i
            m["dst4"][i] = 0x0A0000FE
    return m


def field_key(m: np.ndarray, r: int) -> tuple[int, ...]:
    """A flow's identity from its fields, independent of how the module packs them."""
    x = m[r]
    v6 = x["ip_version"] == 6
    src = int(x["src6_hi"]) << 64 | int(x["src6_lo"]) if v6 else int(x["src4"])
    dst = int(x["dst6_hi"]) << 64 | int(x["dst6_lo"]) if v6 else int(x["dst4"])
    icmp = int(x["icmp_type"]) if x["protocol"] in (1, 58) else 0
    return (
        int(x["port"]),
        int(x["tenant"]),
        int(x["vlan_outer"]),
        int(x["tunnel_id"]),
        int(x["ip_version"]),
        int(x["protocol"]),
        src,
        dst,
        int(x["sport"]),
        int(x["dport"]),
        icmp,
    )


def rows_of(*rows: int) -> np.ndarray:
    return np.array(rows, dtype=np.intp)


def same_bucket(cache: FlowCache, count: int, *, tries: int = 4000) -> np.ndarray:
    """Metadata of ``count`` UDP flows that all hash to one bucket of ``cache``."""
    m = np.zeros(tries, META_DTYPE)
    m["ip_version"] = 4
    m["protocol"] = 17
    m["src4"] = 0x0A000001
    m["dst4"] = 0x0A000002
    m["sport"] = np.arange(tries)
    m["dport"] = 53
    m["length"] = 100
    _, hashes = cache.flow_keys(m, np.arange(tries))
    buckets = cache.bucket_of(hashes)
    common = np.bincount(buckets).argmax()
    chosen = np.flatnonzero(buckets == common)[:count]
    assert len(chosen) == count
    return np.ascontiguousarray(m[chosen])


# -------------------------------------------------------- reference model
@dataclass
class RefEntry:
    key: tuple[int, ...]
    words: tuple[int, ...]
    action: int
    generation: int
    tags: tuple[int, ...]
    last_seen: int
    packets: int
    bytes: int


class RefCache:
    """The flow cache's rules, written plainly over a list of slots and a dict."""

    def __init__(self, cache: FlowCache) -> None:
        self.table = cache  # only for key words and the bucket of a row
        self.slots: list[RefEntry | None] = [None] * cache.capacity
        self.where: dict[tuple[int, ...], int] = {}
        self.generation = 1
        self.idle = cache.idle_timeout
        self.counters = dict.fromkeys(cache.counters, 0)

    def _words_base(self, meta: np.ndarray, r: int) -> tuple[tuple[int, ...], int]:
        keys, hashes = self.table.flow_keys(meta, rows_of(r))
        return tuple(int(w) for w in keys[0]), int(self.table.bucket_of(hashes)[0]) * WAYS

    def _stale(self, e: RefEntry, now: int) -> str | None:
        if e.generation != self.generation:
            return "invalidations"
        if now - e.last_seen >= self.idle:
            return "expirations"
        return None

    def _free(self, slot: int, why: str) -> None:
        entry = self.slots[slot]
        assert entry is not None
        del self.where[entry.key]
        self.slots[slot] = None
        self.counters[why] += 1

    def lookup(self, meta: np.ndarray, rows: list[int], now: int) -> list[int]:
        out = []
        for r in rows:
            slot = self.where.get(field_key(meta, r))
            if slot is not None:
                entry = self.slots[slot]
                assert entry is not None
                why = self._stale(entry, now)
                if why is None:
                    entry.last_seen = now
                    entry.packets += 1
                    entry.bytes += int(meta["length"][r])
                    self.counters["hits"] += 1
                    out.append(slot)
                    continue
                self._free(slot, why)
            self.counters["misses"] += 1
            out.append(-1)
        return out

    def insert(
        self,
        meta: np.ndarray,
        rows: list[int],
        actions: list[int],
        tags: list[tuple[int, ...]],
        now: int,
    ) -> list[int]:
        out = []
        for r, action, entry_tags in zip(rows, actions, tags, strict=True):
            key = field_key(meta, r)
            words, base = self._words_base(meta, r)
            slot = self.where.get(key)
            if slot is not None:
                old = self.slots[slot]
                assert old is not None
                why = self._stale(old, now)
                if why is not None:
                    self._free(slot, why)
            else:
                slot = self._place(base, now)
                if slot is None:
                    self.counters["insert_failures"] += 1
                    out.append(-1)
                    continue
            entry = self.slots[slot]
            if entry is None:
                entry = RefEntry(key, words, 0, 0, (), 0, 0, 0)
                self.slots[slot] = entry
                self.where[key] = slot
                self.counters["insertions"] += 1
            entry.action = action
            entry.generation = self.generation
            entry.tags = entry_tags + (NO_TAG,) * (MAX_TAGS - len(entry_tags))
            entry.last_seen = now
            entry.packets += 1
            entry.bytes += int(meta["length"][r])
            out.append(slot)
        return out

    def _place(self, base: int, now: int) -> int | None:
        bucket = range(base, base + WAYS)
        for slot in bucket:
            if self.slots[slot] is None:
                return slot
        for slot in bucket:
            entry = self.slots[slot]
            assert entry is not None
            why = self._stale(entry, now)
            if why is not None:
                self._free(slot, why)
                return slot
        evictable = [s for s in bucket if self.slots[s].last_seen < now]  # type: ignore[union-attr]
        if not evictable:
            return None
        victim = min(evictable, key=lambda s: (self.slots[s].last_seen, s))  # type: ignore[union-attr]
        self._free(victim, "evictions")
        return victim

    def expire(self, now: int) -> int:
        dropped = 0
        for slot, entry in enumerate(self.slots):
            if entry is not None and (why := self._stale(entry, now)) is not None:
                self._free(slot, why)
                dropped += 1
        return dropped

    def invalidate_tags(self, tags: list[int]) -> int:
        wanted = set(tags) - {NO_TAG}
        doomed = [s for s, e in enumerate(self.slots) if e is not None and wanted & set(e.tags)]
        for slot in doomed:
            self._free(slot, "invalidations")
        return len(doomed)

    def bump_generation(self) -> None:
        self.generation += 1

    def flush(self) -> None:
        self.slots = [None] * len(self.slots)
        self.where.clear()


def assert_same(cache: FlowCache, ref: RefCache) -> None:
    assert cache.counters == ref.counters
    assert cache.generation == ref.generation
    occupied = [s for s, e in enumerate(ref.slots) if e is not None]
    assert cache.occupied().tolist() == occupied
    keys = cache.keys()
    tags = cache.tags()
    for slot in occupied:
        e = ref.slots[slot]
        assert e is not None
        x = cache.entries[slot]
        assert tuple(int(w) for w in keys[slot]) == e.words
        assert (int(x["action"]), int(x["generation"])) == (e.action, e.generation)
        assert tuple(int(t) for t in tags[slot]) == e.tags
        assert (int(x["last_seen"]), int(x["packets"]), int(x["bytes"])) == (
            e.last_seen,
            e.packets,
            e.bytes,
        )


# ------------------------------------------------------------- stateful
POOL = flow_meta(24)  # 24 flows over a 2-bucket, 16-slot table: evictions galore
TAG_POOL = st.sampled_from([tag(TagKind.RULE, 1), tag(TagKind.RULE, 2), tag(TagKind.ROUTE, 1)])
ROWS = st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=6)


class CacheMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32))
    def start(self, seed: int) -> None:
        self.cache = FlowCache(16, idle_timeout=IDLE, seed=seed)
        self.ref = RefCache(self.cache)
        self.now = 1000

    @rule(rows=ROWS)
    def lookup(self, rows: list[int]) -> None:
        got = self.cache.lookup(POOL, rows_of(*rows), self.now)
        assert got.tolist() == self.ref.lookup(POOL, rows, self.now)

    @rule(data=st.data(), rows=ROWS)
    def insert(self, data: st.DataObject, rows: list[int]) -> None:
        actions = data.draw(st.lists(st.integers(0, 9), min_size=len(rows), max_size=len(rows)))
        ntags = data.draw(st.integers(0, MAX_TAGS))
        tags = [tuple(data.draw(st.lists(TAG_POOL, min_size=ntags, max_size=ntags))) for _ in rows]
        array = np.array(tags, dtype=np.uint32).reshape(len(rows), ntags)
        got = self.cache.insert(POOL, rows_of(*rows), np.array(actions), array, self.now)
        assert got.tolist() == self.ref.insert(POOL, rows, actions, tags, self.now)

    @rule(data=st.data(), rows=ROWS)
    def datapath(self, data: st.DataObject, rows: list[int]) -> None:
        """What the pipeline does: a new batch; look it up, insert its misses at the same time."""
        self.now += 1
        got = self.cache.lookup(POOL, rows_of(*rows), self.now)
        missed = [r for r, e in zip(rows, got.tolist(), strict=True) if e < 0]
        assert got.tolist() == self.ref.lookup(POOL, rows, self.now)
        if missed:
            self.insert(data, missed)

    @rule(dt=st.integers(1, IDLE // 4))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(change=st.sampled_from(["pause", "bump", "tags", "expire", "flush"]), data=st.data())
    def change(self, change: str, data: st.DataObject) -> None:
        if change == "pause":
            self.now += data.draw(st.integers(0, IDLE * 3 // 2))
        elif change == "bump":
            self.cache.bump_generation()
            self.ref.bump_generation()
        elif change == "tags":
            tags = data.draw(st.lists(TAG_POOL, max_size=2))
            assert self.cache.invalidate_tags(tags) == self.ref.invalidate_tags(tags)
        elif change == "expire":
            assert self.cache.expire(self.now) == self.ref.expire(self.now)
        elif data.draw(st.booleans()):  # flush, rarely
            self.cache.flush()
            self.ref.flush()

    @invariant()
    def same_table(self) -> None:
        if hasattr(self, "cache"):
            assert_same(self.cache, self.ref)


CacheMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCacheAgainstReference = CacheMachine.TestCase


# ------------------------------------------------------------- targeted
def test_lru_eviction_picks_the_oldest_in_the_bucket() -> None:
    cache = FlowCache(64, idle_timeout=1000, seed=7)
    m = same_bucket(cache, WAYS + 1)
    slots = [int(cache.insert(m, rows_of(i), [i], None, now=10 + i)[0]) for i in range(WAYS)]
    # Refresh all but flow 3, which becomes the least recently used.
    assert (cache.lookup(m, rows_of(*(i for i in range(WAYS) if i != 3)), now=50) >= 0).all()
    new = int(cache.insert(m, rows_of(WAYS), [99], None, now=60)[0])
    assert new == slots[3]
    assert cache.counters["evictions"] == 1
    assert cache.lookup(m, rows_of(3), now=61)[0] == -1
    assert cache.lookup(m, rows_of(WAYS), now=61)[0] == new
    assert cache.entries["action"][new] == 99


def test_a_full_bucket_of_entries_seen_now_is_an_insert_failure() -> None:
    cache = FlowCache(64, idle_timeout=1000, seed=7)
    m = same_bucket(cache, WAYS + 1)
    got = cache.insert(m, np.arange(WAYS + 1), np.arange(WAYS + 1), None, now=5)
    assert (got[:WAYS] >= 0).all() and got[WAYS] == -1
    assert cache.counters["insert_failures"] == 1 and cache.counters["evictions"] == 0
    # Entries a lookup returned at `now` are safe from an insert at the same `now` too.
    assert (cache.lookup(m, np.arange(WAYS), now=6) >= 0).all()
    assert cache.insert(m, rows_of(WAYS), [0], None, now=6)[0] == -1
    assert cache.insert(m, rows_of(WAYS), [0], None, now=7)[0] >= 0  # later: LRU goes


def test_idle_timeout() -> None:
    cache = FlowCache(16, idle_timeout=10 * SECOND, seed=1)
    m = flow_meta(2)
    e = cache.insert(m, rows_of(0), [4], None, now=SECOND)[0]
    assert cache.lookup(m, rows_of(0), now=11 * SECOND - 1)[0] == e  # refreshed at 11 s - 1
    assert cache.lookup(m, rows_of(0), now=21 * SECOND - 2)[0] == e
    assert cache.lookup(m, rows_of(0), now=31 * SECOND - 2)[0] == -1  # idle exactly 10 s
    assert cache.counters["expirations"] == 1 and len(cache) == 0
    # The sweep: one idle entry, one live.
    cache.insert(m, rows_of(0), [1], None, now=100 * SECOND)
    cache.insert(m, rows_of(1), [1], None, now=105 * SECOND)
    assert cache.expire(112 * SECOND) == 1
    assert cache.lookup(m, rows_of(0, 1), now=112 * SECOND).tolist()[0] == -1
    assert cache.counters["expirations"] == 2


def test_an_older_generation_is_a_miss_and_freed() -> None:
    cache = FlowCache(16, seed=1)
    m = flow_meta(3)
    cache.insert(m, rows_of(0, 1), [1, 2], None, now=1)
    assert cache.bump_generation() == 2
    cache.insert(m, rows_of(2), [3], None, now=2)  # made under generation 2
    assert cache.lookup(m, rows_of(0, 2), now=3).tolist()[0] == -1
    assert cache.lookup(m, rows_of(2), now=3)[0] >= 0
    assert cache.counters["invalidations"] == 1
    assert len(cache) == 2  # entry 1 is stale but only dropped when met ...
    assert cache.expire(4) == 1  # ... or swept
    assert cache.counters["invalidations"] == 2
    e = cache.insert(m, rows_of(0), [7], None, now=5)[0]
    assert cache.lookup(m, rows_of(0), now=6)[0] == e
    assert cache.entries["generation"][e] == 2


def test_generation_wrap_flushes() -> None:
    cache = FlowCache(16, seed=1)
    m = flow_meta(1)
    cache.insert(m, rows_of(0), [1], None, now=1)
    cache._ctl[0] = 0xFFFFFFFF
    assert cache.bump_generation() == 1
    assert len(cache) == 0


def test_invalidate_tags_drops_exactly_the_tagged() -> None:
    cache = FlowCache(64, seed=3)
    m = flow_meta(4)
    r1, r2, r3 = tag(TagKind.RULE, 1), tag(TagKind.ROUTE, 1), tag(TagKind.NAT, 9)
    tags = np.array([[r1, NO_TAG], [r2, NO_TAG], [r2, r1], [r3, r3]], dtype=np.uint32)
    cache.insert(m, np.arange(4), np.arange(4), tags, now=1)
    assert r1 != r2  # same ident, different kind
    assert cache.invalidate_tags([r1]) == 2
    got = cache.lookup(m, np.arange(4), now=2)
    assert got[0] == got[2] == -1 and got[1] >= 0 and got[3] >= 0
    assert cache.invalidate_tags([]) == 0
    assert cache.invalidate_tags([NO_TAG]) == 0  # unused tag slots are never matched
    assert cache.invalidate_tags([r2, r3, tag(TagKind.RULE, 5)]) == 2
    assert len(cache) == 0
    assert cache.counters["invalidations"] == 4


def test_counters() -> None:
    cache = FlowCache(16, idle_timeout=100, seed=5)
    m = flow_meta(3)
    assert cache.counters == dict.fromkeys(
        [
            "hits",
            "misses",
            "insertions",
            "evictions",
            "expirations",
            "invalidations",
            "insert_failures",
        ],
        0,
    )
    cache.lookup(m, rows_of(0, 1), now=1)
    cache.insert(m, rows_of(0, 1), [0, 0], None, now=1)
    cache.lookup(m, rows_of(0, 1, 2, 0), now=2)
    c = cache.counters
    assert (c["hits"], c["misses"], c["insertions"]) == (3, 3, 2)


def test_same_flow_twice_in_a_batch_is_one_entry() -> None:
    cache = FlowCache(16, seed=1)
    m = flow_meta(2)
    got = cache.insert(m, rows_of(0, 1, 0, 0), [5, 6, 5, 7], None, now=1)
    assert got[0] == got[2] == got[3] != got[1]
    e = got[0]
    assert cache.counters["insertions"] == 2
    assert cache.entries["packets"][e] == 3
    assert cache.entries["bytes"][e] == 3 * m["length"][0]
    assert cache.entries["action"][e] == 7  # the last row's decision
    assert cache.entries["tcp_state"][e] == 0 and cache.entries["nat_binding"][e] == NO_BINDING


def test_ipv6_keys_from_parsed_packets() -> None:
    a, b = "2001:db8::1", "2001:db8:ffff::2"
    fwd = Ether() / IPv6(src=a, dst=b) / UDP(sport=5000, dport=53)
    rev = Ether() / IPv6(src=b, dst=a) / UDP(sport=53, dport=5000)
    v4 = Ether() / IP(src="0.0.0.1", dst="0.0.0.2") / UDP(sport=5000, dport=53)
    batch = Batch.from_packets([bytes(fwd), bytes(rev), bytes(v4)], port=2)
    parse(batch)
    cache = FlowCache(64, seed=1)
    keys, _ = cache.flow_keys(batch.meta, np.arange(3))
    assert keys.shape == (3, KEY_WORDS)
    assert (int(keys[0, 3]) << 64 | int(keys[0, 4])) == 0x20010DB8000000000000000000000001
    assert (int(keys[0, 5]) << 64 | int(keys[0, 6])) == 0x20010DB8FFFF00000000000000000002
    e = cache.insert(batch.meta, rows_of(0), [1], None, now=1)[0]
    got = cache.lookup(batch.meta, np.arange(3), now=2)
    assert got.tolist() == [e, -1, -1]  # the reply and an IPv4 look-alike are other flows


@pytest.mark.parametrize(
    "field, value",
    [
        ("port", 1),
        ("eth_dst", 0x020000000001),
        ("tenant", 1),
        ("vlan_outer", 7),
        ("tunnel_id", 42),
        ("protocol", 6),
        ("sport", 1001),
        ("dport", 81),
        ("src4", 0x0A000009),
        ("dst4", 0x0A000009),
        ("ip_version", 6),
        ("port", -1),
        ("tenant", -1),
    ],
)
def test_keys_differing_in_one_field_are_distinct(field: str, value: int) -> None:
    m = np.zeros(2, META_DTYPE)
    m["ip_version"] = 4
    m["protocol"] = 17
    m["src4"], m["dst4"] = 0x0A000001, 0x0A000002
    m["sport"], m["dport"] = 1000, 80
    m[field][1] = value
    cache = FlowCache(16, seed=2)
    keys, _ = cache.flow_keys(m, np.arange(2))
    assert not (keys[0] == keys[1]).all()
    cache.insert(m, rows_of(0), [1], None, now=1)
    assert cache.lookup(m, rows_of(1), now=2)[0] == -1


def test_direction_matters() -> None:
    m = np.zeros(2, META_DTYPE)
    m["ip_version"] = 4
    m["protocol"] = 6
    m["src4"], m["dst4"], m["sport"], m["dport"] = (1, 2), (2, 1), (1000, 80), (80, 1000)
    cache = FlowCache(16, seed=2)
    cache.insert(m, rows_of(0), [1], None, now=1)
    assert cache.lookup(m, rows_of(0, 1), now=2).tolist()[1] == -1


def test_icmp_type_counts_for_icmp_only() -> None:
    m = np.zeros(4, META_DTYPE)
    m["ip_version"] = 4
    m["protocol"] = [1, 1, 17, 17]
    m["icmp_type"] = [8, 0, 8, 0]  # echo request vs reply; stray values on UDP
    m["sport"] = m["dport"] = 77
    cache = FlowCache(16, seed=2)
    keys, _ = cache.flow_keys(m, np.arange(4))
    assert not (keys[0] == keys[1]).all()
    assert (keys[2] == keys[3]).all()


def test_construction_and_memory() -> None:
    with pytest.raises(ValueError, match="power of two"):
        FlowCache(100)
    with pytest.raises(ValueError, match="power of two"):
        FlowCache(4)
    with pytest.raises(ValueError, match="idle_timeout"):
        FlowCache(16, idle_timeout=0)
    with pytest.raises(ValueError, match="at most"):
        FlowCache(16).insert(flow_meta(1), rows_of(0), [0], np.zeros((1, 5)), now=1)
    assert BYTES_PER_SLOT == 132
    cap = capacity_for(1_000_000)
    assert cap == 1 << 21
    assert cap * BYTES_PER_SLOT <= 1 << 30  # the figure: 1M flows in 1 GiB
    cache = FlowCache(1 << 12)
    assert cache.entries.ctypes.data % 64 == 0 and cache.sig.ctypes.data % 64 == 0
    assert cache.nbytes < (1 << 12) * BYTES_PER_SLOT + 1024


def test_flush() -> None:
    cache = FlowCache(16, seed=1)
    m = flow_meta(3)
    cache.insert(m, np.arange(3), [0, 0, 0], None, now=1)
    cache.flush()
    assert len(cache) == 0
    assert (cache.lookup(m, np.arange(3), now=2) == -1).all()
    assert cache.counters["insertions"] == 3  # counters survive a flush


def test_tag_namespaces() -> None:
    assert tag(TagKind.RULE, 5) == 1 << 28 | 5
    with pytest.raises(ValueError):
        tag(0, 1)
    with pytest.raises(ValueError):
        tag(TagKind.NAT, 1 << 28)
