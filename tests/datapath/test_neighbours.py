"""Neighbours: static and learned resolution per routing domain, the tags the table reports,
and the queue of packets waiting for a next hop.

``Reference`` is the table as a reader would write it: a dict of static entries and an
ordered dict of learned ones (oldest first). Hypothesis runs random streams of learning
(one at a time and in bursts, valid and not), time steps and expiry sweeps through both,
and compares every answer of ``resolve4``/``resolve6`` over a small key space where
domains share addresses and an IPv6 address shares its low bits with an IPv4 one. The
targeted tests after it name one behaviour each; the queue's tests build their packets
with Scapy and compare bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import IPv4Address, IPv6Address, ip_address

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from portico.batch import DEFAULT_HEADROOM, Batch
from portico.datapath.flowcache import SECOND, TagKind
from portico.datapath.neighbours import NeighbourTable, PendingQueue
from portico.datapath.stages.parse import parse

Address = IPv4Address | IPv6Address

MAC_A = 0x02_00_00_00_00_0A
MAC_B = 0x02_00_00_00_00_0B
MAC_C = 0x02_00_00_00_00_0C
GW = IPv4Address("192.0.2.1")
GW6 = IPv6Address("2001:db8::1")
HOST = IPv4Address("10.0.0.5")
HOST6 = IPv6Address("fe80::5")


def split(address: Address) -> tuple[int, int, int]:
    """(family, hi, lo) as the table and the queue take them."""
    value = int(address)
    if address.version == 4:
        return 4, 0, value
    return 6, value >> 64, value & (2**64 - 1)


def resolve(table: NeighbourTable, keys: list[tuple[int, Address]], now: int) -> list[int]:
    """The table's answers for ``keys``, through the batch calls (one per family)."""
    out = [0] * len(keys)
    for family in (4, 6):
        rows = [i for i, (_, a) in enumerate(keys) if a.version == family]
        if not rows:
            continue
        domains = np.array([keys[i][0] for i in rows], dtype=np.int64)
        parts = [split(keys[i][1]) for i in rows]
        lo = np.array([p[2] for p in parts], dtype=np.uint64)
        if family == 4:
            macs = table.resolve4(domains, lo.astype(np.uint32), now)
        else:
            macs = table.resolve6(domains, np.array([p[1] for p in parts], dtype=np.uint64),
                                  lo, now)
        assert macs.dtype == np.uint64
        for i, mac in zip(rows, macs.tolist(), strict=True):
            out[i] = mac
    return out


def tag_of(table: NeighbourTable, domain: int, address: Address) -> int:
    family, hi, lo = split(address)
    d = np.array([domain])
    if family == 4:
        return int(table.tags4(d, np.array([lo], dtype=np.uint32))[0])
    return int(table.tags6(d, np.array([hi], dtype=np.uint64), np.array([lo], dtype=np.uint64))[0])


def learn(table: NeighbourTable, domain: int, address: Address, mac: int, now: int) -> None:
    family, hi, lo = split(address)
    if family == 4:
        table.learn4(domain, lo, mac, now)
    else:
        table.learn6(domain, hi, lo, mac, now)


# ------------------------------------------------------------- the reference


class Reference:
    """The table's rules written out plainly."""

    def __init__(self, static: list[tuple[int, Address, int]], timeout: int,
                 capacity: int) -> None:
        self.static = {(d, a): mac for d, a, mac in static}
        self.learned: OrderedDict[tuple[int, Address], tuple[int, int]] = OrderedDict()
        self.timeout = timeout
        self.capacity = capacity

    @staticmethod
    def valid(address: Address, mac: int) -> bool:
        if mac == 0 or mac >= 1 << 48 or mac & (1 << 40):
            return False
        return not (address.is_unspecified or address.is_multicast
                    or address == IPv4Address("255.255.255.255"))

    def learn(self, rows: list[tuple[int, Address, int]], now: int) -> None:
        for d, a, mac in rows:
            if self.valid(a, mac) and (d, a) not in self.static:
                self.learned.pop((d, a), None)
                self.learned[(d, a)] = (mac, now)
        while len(self.learned) > self.capacity:
            self.learned.popitem(last=False)

    def resolve(self, domain: int, address: Address, now: int) -> int:
        if (domain, address) in self.static:
            return self.static[(domain, address)]
        mac, learned = self.learned.get((domain, address), (0, 0))
        return mac if now < learned + self.timeout else 0

    def expire(self, now: int) -> None:
        for key, (_, learned) in list(self.learned.items()):
            if now >= learned + self.timeout:
                del self.learned[key]


DOMAINS = (0, 1, 7)
ADDRESSES: tuple[Address, ...] = (
    IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), GW, IPv4Address("0.0.0.0"),
    IPv4Address("224.0.0.5"), IPv6Address("::a00:1"),  # ::10.0.0.1: the same low 64 bits
    GW6, HOST6, IPv6Address("ff02::1"),
)
MACS = (MAC_A, MAC_B, MAC_C, 0x01_00_5E_00_00_01, 0, 1 << 48)
STATIC: list[tuple[int, Address, int]] = [(0, GW, MAC_C), (1, GW6, MAC_A)]
KEYS = [(d, a) for d in DOMAINS for a in ADDRESSES]
TIMEOUT = 10 * SECOND

rows = st.lists(st.tuples(st.sampled_from(DOMAINS), st.sampled_from(ADDRESSES),
                          st.sampled_from(MACS)), min_size=1, max_size=6)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("learn"), rows, st.booleans()),
        st.tuples(st.just("tick"), st.sampled_from((0, 1, 5, 10, 11))),
        st.tuples(st.just("expire")),
    ),
    min_size=1, max_size=25,
)


def learn_burst(table: NeighbourTable, family: int, rows: list[tuple[int, Address, int]],
                now: int) -> None:
    """``rows`` (all of one family) through learn4_many / learn6_many."""
    d = np.array([r[0] for r in rows])
    parts = [split(r[1]) for r in rows]
    lo = np.array([p[2] for p in parts], dtype=np.uint64)
    m = np.array([r[2] for r in rows], dtype=np.uint64)
    if family == 4:
        table.learn4_many(d, lo, m, now)
    else:
        table.learn6_many(d, np.array([p[1] for p in parts], dtype=np.uint64), lo, m, now)


@settings(max_examples=120, deadline=None)
@given(ops, st.sampled_from((2, 4, 100)))
def test_resolution_matches_the_reference(ops: list[tuple], capacity: int) -> None:
    table = NeighbourTable(STATIC, timeout=TIMEOUT / SECOND, capacity=capacity)
    ref = Reference(STATIC, TIMEOUT, capacity)
    tags = {key: tag_of(table, *key) for key in KEYS}
    now = 1_000 * SECOND
    for op in ops:
        if op[0] == "tick":
            now += op[1] * SECOND
            continue
        before = resolve(table, KEYS, now)
        learned_before = set(ref.learned)
        touched: set[tuple[int, Address]] = set()
        if op[0] == "learn":
            _, learning, burst = op
            touched = {(d, a) for d, a, _ in learning}
            if burst:  # one call per family, IPv4 first, each in row order
                for family in (4, 6):
                    part = [r for r in learning if r[1].version == family]
                    if part:
                        learn_burst(table, family, part, now)
                        ref.learn(part, now)
            else:
                for d, a, mac in learning:
                    learn(table, d, a, mac, now)
                    ref.learn([(d, a, mac)], now)
        else:
            table.expire(now)
            ref.expire(now)
        after = resolve(table, KEYS, now)
        assert after == [ref.resolve(d, a, now) for d, a in KEYS]
        changed = set(table.take_changed_tags().tolist())
        # Every answer that changed reports its tag; only learned or removed keys do.
        assert {tags[k] for k, b, a in zip(KEYS, before, after, strict=True) if b != a} <= changed
        removed = learned_before - set(ref.learned)
        assert changed <= {tags[k] for k in touched | removed}
    assert len(table) == len(ref.static) + len(ref.learned)


def test_same_address_in_two_domains_and_both_families() -> None:
    table = NeighbourTable([(0, GW, MAC_A), (1, GW, MAC_B), (1, GW6, MAC_C)], seed=1)
    now = 5 * SECOND
    assert resolve(table, [(0, GW), (1, GW), (2, GW), (1, GW6), (0, GW6)], now) == [
        MAC_A, MAC_B, 0, MAC_C, 0]
    learn(table, 2, GW, MAC_C, now)
    learn(table, 3, HOST6, MAC_A, now)
    assert resolve(table, [(0, GW), (2, GW), (3, HOST6), (2, HOST6)], now) == [
        MAC_A, MAC_C, MAC_A, 0]
    # An IPv6 address with the IPv4 address's bits is another neighbour.
    assert table.resolve(2, IPv6Address(int(GW)), now) == 0
    assert table.resolve(1, GW6, now) == MAC_C
    # Out of range or negative domains and over-wide IPv4 values resolve to nothing.
    macs = table.resolve4(np.array([-1, 1 << 40, 0]),
                          np.array([int(GW), int(GW), int(GW) | 1 << 32], dtype=np.int64), now)
    assert macs.tolist() == [0, 0, 0]
    assert len(table) == 5 and table.counters()["static"] == 3


def test_learned_entries_expire_unless_refreshed() -> None:
    table = NeighbourTable([(0, GW, MAC_A)], timeout=300, seed=1)
    t0 = 1_000 * SECOND
    learn(table, 5, HOST, MAC_B, t0)
    learn(table, 5, HOST6, MAC_B, t0)
    assert resolve(table, [(5, HOST), (5, HOST6)], t0 + 300 * SECOND - 1) == [MAC_B, MAC_B]
    assert resolve(table, [(5, HOST), (5, HOST6)], t0 + 300 * SECOND) == [0, 0]
    learn(table, 5, HOST, MAC_B, t0 + 200 * SECOND)  # a refresh moves the expiry
    assert resolve(table, [(5, HOST), (5, HOST6)], t0 + 400 * SECOND) == [MAC_B, 0]
    assert table.resolve(0, GW, t0 + 10**6 * SECOND) == MAC_A  # static: never
    table.take_changed_tags()
    # The sweep removes what expired and reports it: flows sent to it re-decide.
    assert table.expire(t0 + 400 * SECOND) == 1
    assert table.take_changed_tags().tolist() == [tag_of(table, 5, HOST6)]
    assert table.counters()["expired"] == 1 and len(table) == 2
    ages = {(e.domain, e.address): e.age for e in table.entries(t0 + 400 * SECOND)}
    assert ages == {(0, "192.0.2.1"): None, (5, "10.0.0.5"): 200.0}


def test_static_entries_are_never_overwritten() -> None:
    table = NeighbourTable([(0, GW, MAC_A), (4, GW6, MAC_A)], seed=1)
    learn(table, 0, GW, MAC_B, 1)
    learn(table, 4, GW6, MAC_B, 1)
    learn(table, 0, GW, MAC_A, 1)  # the static MAC itself: no conflict
    table.learn4_many(np.array([0, 0]), np.array([int(GW)] * 2), np.array([MAC_C, MAC_B]), 2)
    assert resolve(table, [(0, GW), (4, GW6)], 3) == [MAC_A, MAC_A]
    assert table.counters()["static_conflicts"] == 3
    assert table.counters()["learned"] == 0 and len(table) == 2
    assert table.take_changed_tags().size == 0
    assert [e.static for e in table.entries(0)] == [True, True]


def test_invalid_macs_and_addresses_are_refused() -> None:
    table = NeighbourTable(seed=1)
    for address, mac in ((HOST, 0), (HOST, 0x01_00_5E_00_00_01), (HOST, 0xFF_FF_FF_FF_FF_FF),
                         (HOST, 1 << 48), (IPv4Address("0.0.0.0"), MAC_A),
                         (IPv4Address("255.255.255.255"), MAC_A),
                         (IPv4Address("239.1.2.3"), MAC_A), (IPv6Address("::"), MAC_A),
                         (IPv6Address("ff02::1:ff00:5"), MAC_A)):
        learn(table, 1, address, mac, 1)
    assert len(table) == 0 and table.counters()["invalid"] == 9
    with pytest.raises(ValueError, match="domain"):
        table.learn4(65536, int(HOST), MAC_A, 1)
    with pytest.raises(ValueError, match="two MACs"):
        NeighbourTable([(0, GW, MAC_A), (0, GW, MAC_B)])
    with pytest.raises(ValueError, match="unicast"):
        NeighbourTable([(0, GW, 0x01_00_5E_00_00_01)])


def test_changed_tags_new_neighbour_mac_change_not_refresh() -> None:
    table = NeighbourTable(timeout=60, seed=1)
    now = 10 * SECOND
    host, host6 = tag_of(table, 3, HOST), tag_of(table, 3, HOST6)
    learn(table, 3, HOST, MAC_A, now)
    learn(table, 3, HOST6, MAC_A, now)
    assert table.take_changed_tags().tolist() == sorted([host, host6])
    assert table.take_changed_tags().size == 0  # taken means cleared
    learn(table, 3, HOST, MAC_A, now + SECOND)  # a refresh: nothing to re-decide
    table.learn6_many(np.array([3]), np.array([split(HOST6)[1]], dtype=np.uint64),
                      np.array([split(HOST6)[2]], dtype=np.uint64), np.array([MAC_A]), now)
    assert table.take_changed_tags().size == 0
    learn(table, 3, HOST, MAC_B, now + 2 * SECOND)  # the MAC moved
    assert table.take_changed_tags().tolist() == [host]
    learn(table, 3, HOST6, MAC_A, now + 100 * SECOND)  # learned again after it expired
    assert table.take_changed_tags().tolist() == [host6]
    c = table.counters()
    assert (c["learned"], c["changed"], c["refreshed"]) == (2, 1, 3)


def test_tags_name_the_key_whether_known_or_not() -> None:
    table = NeighbourTable(seed=7)
    unknown = tag_of(table, 1, HOST)
    learn(table, 1, HOST, MAC_A, 1)
    assert tag_of(table, 1, HOST) == unknown == tag_of(table, 1, HOST)
    assert unknown >> 28 == TagKind.NEIGHBOUR
    others = {tag_of(table, d, a) for d, a in ((0, HOST), (2, HOST), (1, GW),
                                               (1, IPv6Address(int(HOST))), (1, HOST6))}
    assert unknown not in others and len(others) == 5
    # A batch: one tag per row, equal rows equal tags.
    t = table.tags4(np.array([1, 2, 1]), np.array([int(HOST)] * 3, dtype=np.uint32))
    assert t.dtype == np.uint32 and t[0] == t[2] == unknown and t[1] != unknown
    # The same key in another table (another seed) may get another tag: tags are per table.
    assert NeighbourTable(seed=7).tags4(np.array([1]), np.array([int(HOST)]))[0] == unknown


def test_capacity_evicts_the_entry_learned_longest_ago() -> None:
    table = NeighbourTable([(0, GW, MAC_A)], capacity=3, seed=1)
    hosts = [IPv4Address(f"10.0.0.{i}") for i in range(1, 6)]
    for i, h in enumerate(hosts[:3]):
        learn(table, 1, h, MAC_B, i)
    learn(table, 1, hosts[0], MAC_B, 3)  # refreshed: now the youngest
    table.take_changed_tags()
    learn(table, 1, hosts[3], MAC_C, 4)  # pushes out hosts[1]
    assert resolve(table, [(1, h) for h in hosts[:4]], 5) == [MAC_B, 0, MAC_B, MAC_C]
    assert table.take_changed_tags().tolist() == sorted(
        [tag_of(table, 1, hosts[1]), tag_of(table, 1, hosts[3])])
    # A burst larger than the room: the earliest rows of the burst go too.
    table.learn4_many(np.array([2, 2, 2, 2]), np.array([int(h) for h in hosts[:4]]),
                      np.full(4, MAC_A, dtype=np.uint64), 6)
    assert resolve(table, [(2, h) for h in hosts[:4]], 7) == [0, MAC_A, MAC_A, MAC_A]
    assert table.resolve(0, GW, 7) == MAC_A  # static entries are not counted and never go
    c = table.counters()
    assert resolve(table, [(1, h) for h in hosts[:4]], 7) == [0, 0, 0, 0]
    assert c["evicted"] == 5 and c["dynamic"] == 3 and len(table) == 4


def test_entries_and_counters_for_the_cli() -> None:
    table = NeighbourTable([(0, GW6, MAC_A), (0, GW, MAC_B)], seed=1)
    learn(table, 2, HOST, MAC_C, 5 * SECOND)
    listing = table.entries(7 * SECOND)
    assert [(e.domain, e.address, e.mac, e.static, e.age) for e in listing] == [
        (0, "192.0.2.1", MAC_B, True, None),
        (0, "2001:db8::1", MAC_A, True, None),
        (2, "10.0.0.5", MAC_C, False, 2.0),
    ]
    assert ip_address(listing[2].address) == HOST
    assert set(table.counters()) == {"learned", "changed", "refreshed", "static_conflicts",
                                     "invalid", "hash_collisions", "evicted", "expired",
                                     "static", "dynamic"}


# --------------------------------------------------------------- the queue


def frames(n: int, dst: str = "10.9.0.1", sizes: tuple[int, ...] = (0, 40, 700, 1400)) -> list[
        bytes]:
    """Distinct frames (Scapy-built), each a TCP or UDP packet of its own size."""
    out = []
    for i in range(n):
        l4 = TCP(sport=1000 + i, dport=80, flags="A") if i % 2 else UDP(sport=1000 + i, dport=53)
        out.append(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                         / IP(src="10.1.0.2", dst=dst, ttl=64 - i % 3) / l4
                         / (bytes([i % 251]) * sizes[i % len(sizes)])))
    return out


def received(packets: list[bytes], port: int = 2, t0: int = 0) -> Batch:
    batch = Batch.from_packets(packets, port=port)
    batch.meta["timestamp"][: batch.count] = t0 + np.arange(batch.count) * 1000
    batch.meta["wire_length"][: batch.count] += 4  # as if a capture left off an FCS
    return batch


def hold4(queue: PendingQueue, batch: Batch, rows: list[int], domain: int,
          address: IPv4Address, now: int) -> list[bool]:
    n = len(rows)
    return queue.hold(batch, np.array(rows), np.full(n, domain), 4, None,
                      np.full(n, int(address), dtype=np.uint64), now).tolist()


def test_release_gives_the_packets_back_in_arrival_order() -> None:
    packets = frames(6)
    batch = received(packets, port=3, t0=7 * SECOND)
    queue = PendingQueue()
    assert hold4(queue, batch, [4, 1, 2], 5, GW, 0) == [True] * 3
    assert hold4(queue, batch, [0], 6, GW, 0) == [True]  # another domain: another neighbour
    assert hold4(queue, batch, [3, 5], 5, GW, 1) == [True] * 2
    assert len(queue) == 6 and queue.counters()["neighbours"] == 2
    out = queue.release4(5, GW)
    assert out is not None and out.count == 5 and out.slot_size == batch.slot_size
    assert out.packets() == [packets[r] for r in (4, 1, 2, 3, 5)]
    meta = out.meta[: out.count]
    assert (meta["start"] == DEFAULT_HEADROOM).all()
    assert meta["port"].tolist() == [3] * 5
    assert meta["timestamp"].tolist() == [7 * SECOND + 1000 * r for r in (4, 1, 2, 3, 5)]
    assert meta["wire_length"].tolist() == [len(packets[r]) + 4 for r in (4, 1, 2, 3, 5)]
    assert Ether(out.packet(0))[IP].dst == "10.9.0.1"
    assert queue.release4(5, GW) is None and len(queue) == 1
    assert queue.release4(6, GW).packets() == [packets[0]]  # type: ignore[union-attr]
    assert queue.counters()["released"] == 6 and len(queue) == 0


def test_released_packets_parse_as_when_received() -> None:
    """Re-injection: the datapath runs a released Batch from the start, and sees the same."""
    packets = frames(4) + [bytes(Ether() / IPv6(src="2001:db8:1::2", dst="2001:db8:9::1")
                                 / UDP(sport=7, dport=9) / (b"x" * 30))]
    batch = received(packets)
    queue = PendingQueue()
    queue.hold(batch, np.array([4]), np.array([1]), 6, np.array([split(GW6)[1]]),
               np.array([split(GW6)[2]]), 0)
    hold4(queue, batch, [0, 1, 2, 3], 1, GW, 0)
    table = NeighbourTable([(1, GW, MAC_A), (1, GW6, MAC_B)], seed=1)
    out = queue.release_resolved(table, 1)
    order = [4, 0, 1, 2, 3]  # arrival order, across neighbours
    assert out is not None and out.packets() == [packets[r] for r in order]
    parse(batch)
    parse(out)
    columns = ("drop", "ip_version", "protocol", "dst4", "dst6_lo", "sport", "dport", "l4",
               "payload", "ttl", "flow_hash", "port", "timestamp", "wire_length")
    for column in columns:
        np.testing.assert_array_equal(out.meta[column][:5], batch.meta[column][order], column)


def test_a_packet_grown_into_the_headroom_is_released_whole() -> None:
    big = frames(1, sizes=(1900,))[0]
    batch = Batch.from_packets([big])
    batch.meta["start"][0] -= 100  # e.g. a pushed encapsulation
    batch.meta["length"][0] += 100
    whole = batch.packet(0)
    assert len(whole) > batch.max_packet
    queue = PendingQueue()
    hold4(queue, batch, [0], 0, GW, 0)
    out = queue.release4(0, GW)
    assert out is not None and out.packet(0) == whole


def test_bounds_per_neighbour_and_in_total() -> None:
    packets = frames(12)
    batch = received(packets)
    queue = PendingQueue(per_neighbour=3, total=5)
    # Rows interleave two neighbours; each takes 3, the third neighbour's row finds it full.
    rows = np.arange(8)
    domains = np.array([1, 2, 1, 2, 1, 1, 2, 3])
    accepted = queue.hold(batch, rows, domains, 4, None, np.full(8, int(GW)), 0)
    assert accepted.tolist() == [True, True, True, True, True, False, False, False]
    c = queue.counters()
    assert (c["held"], c["overflow"], c["waiting"], c["neighbours"]) == (5, 3, 5, 2)
    assert queue.release4(1, GW).packets() == [packets[i] for i in (0, 2, 4)]  # type: ignore[union-attr]
    # Freed slots are used again; neighbour 2 had 2 and takes one more, then is full.
    accepted = queue.hold(batch, np.array([8, 9, 10]), np.array([2, 2, 3]), 4, None,
                          np.full(3, int(GW)), 1)
    assert accepted.tolist() == [True, False, True]
    assert queue.release4(2, GW).packets() == [packets[i] for i in (1, 3, 8)]  # type: ignore[union-attr]
    assert queue.release4(3, GW).packets() == [packets[10]]  # type: ignore[union-attr]
    assert queue.counters()["overflow"] == 4 and len(queue) == 0
    empty = queue.hold(batch, np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4,
                       None, np.array([], dtype=np.uint64), 2)
    assert empty.tolist() == []


def test_solicit_asks_once_per_retry_until_the_packets_time_out() -> None:
    batch = received(frames(4))
    queue = PendingQueue(timeout=3, retry=1)
    t = 100 * SECOND
    hold4(queue, batch, [0], 1, GW, t)
    queue.hold(batch, np.array([2]), np.array([1]), 6, np.array([split(GW6)[1]]),
               np.array([split(GW6)[2]]), t)
    assert queue.solicit(t) == [(1, 4, 0, int(GW)), (1, 6, *split(GW6)[1:])]
    hold4(queue, batch, [1], 2, HOST, t + SECOND // 2)
    assert queue.solicit(t + SECOND // 2) == [(2, 4, 0, int(HOST))]  # its first: at once
    assert queue.solicit(t + SECOND // 2 + 1) == []
    hold4(queue, batch, [3], 1, GW, t + SECOND // 2)  # more packets do not ask again
    assert queue.solicit(t + SECOND - 1) == []
    due = queue.solicit(t + SECOND)
    assert [(k.domain, k.address) for k in due] == [(1, GW), (1, GW6)]
    assert len(queue.solicit(t + 2 * SECOND)) == 3
    # GW6's one packet has waited 3 s: nothing left to ask it for. GW's newest has not.
    assert queue.solicit(t + 3 * SECOND) == [(1, 4, 0, int(GW)), (2, 4, 0, int(HOST))]
    assert queue.solicit(t + 3 * SECOND + SECOND // 2) == []
    assert queue.counters()["solicited"] == 10


def test_expire_drops_what_waited_too_long() -> None:
    packets = frames(4)
    batch = received(packets)
    queue = PendingQueue(timeout=3, retry=1)
    hold4(queue, batch, [0, 1], 1, GW, 0)
    hold4(queue, batch, [2], 1, GW, 2 * SECOND)
    hold4(queue, batch, [3], 2, GW, 0)
    assert queue.expire(3 * SECOND - 1) == 0
    assert queue.expire(3 * SECOND) == 3
    assert len(queue) == 1 and queue.counters()["neighbours"] == 1
    assert queue.release4(2, GW) is None
    # release_resolved drops the timed out first, then releases what the table resolves.
    table = NeighbourTable(seed=1)
    assert queue.release_resolved(table, 4 * SECOND) is None  # not resolved yet
    table.learn4(1, int(GW), MAC_A, 4 * SECOND)
    out = queue.release_resolved(table, 4 * SECOND)
    assert out is not None and out.packets() == [packets[2]]
    hold4(queue, batch, [0], 1, GW, 10 * SECOND)
    assert queue.release_resolved(table, 13 * SECOND) is None
    c = queue.counters()
    assert (c["timed_out"], c["released"], c["waiting"]) == (4, 1, 0)
