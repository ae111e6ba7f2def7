"""LPM4 (DIR-24-8) and LPM6 (16-8-...-8 trie) against a brute-force longest match.

The brute force scans every route for each address and keeps the longest that
holds it. Hypothesis draws prefix sets built around a few base addresses, so
prefixes nest and overlap (every length from /0 to /32 or /128 can occur,
with extra weight around the level boundaries: 24/25 for IPv4, 16/24/.../64
for IPv6), and streams of adds, replaces and removes with lookups between
them, near the bases so that they hit the routes.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portico.classify.lpm4 import LPM4, NO_MATCH, lookup4
from portico.classify.lpm6 import LPM6, lookup6

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def brute(routes: dict[tuple[int, int], int], address: int, width: int) -> int:
    best, value = -1, NO_MATCH
    for (network, length), held in routes.items():
        if length > best and (address >> (width - length)) == (network >> (width - length)):
            best, value = length, held
    return value


def look(table: LPM4 | LPM6, addresses: list[int]) -> list[int]:
    if isinstance(table, LPM4):
        return table.lookup(np.array(addresses, np.uint32)).tolist()
    hi = np.array([a >> 64 for a in addresses], np.uint64)
    lo = np.array([a & (2**64 - 1) for a in addresses], np.uint64)
    return table.lookup(hi, lo).tolist()


FAMILIES = {
    "ipv4": (LPM4, 32, [0, 1, 7, 8, 15, 16, 17, 22, 23, 24, 25, 26, 30, 31, 32]),
    "ipv6": (LPM6, 128, [0, 1, 15, 16, 17, 23, 24, 25, 32, 40, 47, 48, 56, 63, 64, 65, 72,
                         100, 119, 120, 121, 127, 128]),
}


@st.composite
def operations(draw: st.DrawFn, width: int, lengths: list[int]) -> tuple[list[int], list]:
    """A few base addresses and a stream of (op, base, length, value) around them."""
    bases = draw(st.lists(st.integers(0, 2**width - 1), min_size=1, max_size=4))
    length = st.one_of(st.sampled_from(lengths), st.integers(0, width))
    op = st.tuples(st.sampled_from(["add", "add", "remove", "look"]),
                   st.integers(0, len(bases) - 1), length, st.integers(0, 2**31 - 2))
    return bases, draw(st.lists(op, min_size=1, max_size=40))


def probes(bases: list[int], width: int) -> list[int]:
    """Addresses at and around each base: the base, neighbours across each bit."""
    out = []
    for base in bases:
        out += [base, base ^ 1, base ^ (1 << (width - 1))]
        out += [base ^ (1 << bit) for bit in range(0, width, 3)]
    return [a & (2**width - 1) for a in out]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_updates_interleaved_with_lookups_equal_brute_force(family: str) -> None:
    cls, width, lengths = FAMILIES[family]

    @SETTINGS
    @given(operations(width, lengths))
    def check(case: tuple[list[int], list]) -> None:
        bases, ops = case
        table = cls(groups=1)  # forces the node array to grow along the way
        routes: dict[tuple[int, int], int] = {}
        addresses = probes(bases, width)
        for op, which, length, value in ops:
            network = bases[which] >> (width - length) << (width - length) if length else 0
            if op == "add":
                table.add((network, length), value)
                routes[(network, length)] = value
            elif op == "remove" and (network, length) in routes:
                table.remove((network, length))
                del routes[(network, length)]
            assert look(table, addresses) == [brute(routes, a, width) for a in addresses]
        assert len(table) == len(routes)
        assert {(int(n.network_address), n.prefixlen): v for n, v in table.items()} == routes
        for (network, length), value in routes.items():
            assert table.get((network, length)) == value
        for key in list(routes):
            table.remove(key)
        assert table.groups_in_use == 0  # every group folded back and freed
        assert not table.root.any() and not table.root_depth.any()

    check()


@pytest.mark.parametrize("family", FAMILIES)
def test_bulk_add_equals_adding_one_by_one(family: str) -> None:
    cls, width, lengths = FAMILIES[family]

    @SETTINGS
    @given(operations(width, lengths))
    def check(case: tuple[list[int], list]) -> None:
        bases, ops = case
        routes = {}
        for _, which, length, value in ops:
            network = bases[which] >> (width - length) << (width - length) if length else 0
            routes[(network, length)] = value
        one, bulk = cls(), cls(groups=1)
        for (network, length), value in routes.items():
            one.add((network, length), value)
        networks = [n for n, _ in routes]
        lens = np.array([n for _, n in routes], np.int64)
        values = np.array(list(routes.values()), np.int64)
        if cls is LPM4:
            bulk.add_many(np.array(networks, np.uint32), lens, values)
        else:
            bulk.add_many(np.array([n >> 64 for n in networks], np.uint64),
                          np.array([n & (2**64 - 1) for n in networks], np.uint64), lens, values)
        addresses = probes(bases, width)
        want = [brute(routes, a, width) for a in addresses]
        assert look(one, addresses) == want
        assert look(bulk, addresses) == want
        assert len(bulk) == len(routes)
        assert np.array_equal(one.root, bulk.root)

    check()


# ---------------------------------------------------------------- specific cases
def test_default_route_and_host_route() -> None:
    lpm = LPM4()
    probe = np.array([0x0A000001, 0xC0A80101, 0xFFFFFFFF], np.uint32)
    assert lpm.lookup(probe).tolist() == [NO_MATCH] * 3
    lpm.add("0.0.0.0/0", 9)
    lpm.add("255.255.255.255/32", 4)
    lpm.add(ipaddress.IPv4Network("10.0.0.1/32"), 5)
    assert lpm.lookup(probe).tolist() == [5, 9, 4]
    lpm.remove("0.0.0.0/0")
    assert lpm.lookup(probe).tolist() == [5, NO_MATCH, 4]


def test_delete_restores_the_covering_prefix() -> None:
    lpm = LPM4()
    lpm.add("10.0.0.0/8", 1)
    lpm.add("10.1.0.0/16", 2)
    lpm.add("10.1.2.0/24", 3)
    lpm.add("10.1.2.128/25", 4)
    lpm.add("10.1.2.192/26", 5)
    probe = np.array([0x0A0102C1, 0x0A010281, 0x0A010201, 0x0A010301, 0x0A020000], np.uint32)
    assert lpm.lookup(probe).tolist() == [5, 4, 3, 2, 1]
    lpm.remove("10.1.2.128/25")  # the /26 inside it stays; the rest falls to the /24
    assert lpm.lookup(probe).tolist() == [5, 3, 3, 2, 1]
    lpm.remove("10.1.2.0/24")
    assert lpm.lookup(probe).tolist() == [5, 2, 2, 2, 1]
    lpm.remove("10.1.0.0/16")
    assert lpm.lookup(probe).tolist() == [5, 1, 1, 1, 1]
    lpm.add("10.1.0.0/16", 7)  # a shorter prefix added later leaves the /26 alone
    assert lpm.lookup(probe).tolist() == [5, 7, 7, 7, 1]


def test_replacing_a_value_keeps_longer_prefixes() -> None:
    lpm = LPM4()
    lpm.add("10.0.0.0/8", 1)
    lpm.add("10.0.0.0/25", 2)
    lpm.add("10.0.0.0/8", 3)
    assert len(lpm) == 2 and lpm.get("10.0.0.0/8") == 3
    assert lpm.lookup(np.array([0x0A000001, 0x0A0000F0, 0x0A100000], np.uint32)).tolist() \
        == [2, 3, 3]


def test_groups_are_freed_no_leak_after_cycles() -> None:
    lpm = LPM4(groups=4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        networks = (rng.integers(0, 2**32, 50, dtype=np.uint64) & 0xFFFFFFF0).tolist()
        for n in networks:
            lpm.add((n, 28), 1)
        lpm.add("0.0.0.0/1", 2)
        assert lpm.groups_in_use == len({n >> 8 for n in networks})
        for n in set(networks):
            lpm.remove((n, 28))
        lpm.remove("0.0.0.0/1")
        assert lpm.groups_in_use == 0
    assert lpm.nodes.size <= 64 * 256  # capacity settled, not grown every cycle
    assert not lpm.root.any() and not lpm.root_depth.any()


def test_ipv6_default_nested_and_host_routes() -> None:
    lpm = LPM6()
    lpm.add("::/0", 0)
    lpm.add("2001:db8::/32", 1)
    lpm.add("2001:db8:1::/48", 2)
    lpm.add("2001:db8:1:2::/64", 3)
    lpm.add("2001:db8:1:2::1/128", 4)
    lpm.add(ipaddress.IPv6Network("2001:db8:1:2::/65"), 5)
    addresses = [int(ipaddress.IPv6Address(a)) for a in
                 ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:8000::",
                  "2001:db8:1:3::", "2001:db8:2::", "2001:db9::")]
    assert look(lpm, addresses) == [4, 5, 3, 2, 1, 0]
    lpm.remove("2001:db8:1:2::/65")
    lpm.remove("2001:db8:1::/48")
    assert look(lpm, addresses) == [4, 3, 3, 1, 1, 0]
    for prefix in ("2001:db8:1:2::1/128", "2001:db8:1:2::/64", "2001:db8::/32", "::/0"):
        lpm.remove(prefix)
    assert lpm.groups_in_use == 0 and len(lpm) == 0


# ---------------------------------------------------------------- kernels for other kernels
def test_lookup4_and_lookup6_are_callable_from_another_kernel() -> None:
    from numba import njit

    @njit
    def first_hits4(tbl24, tbl8, addresses):  # type: ignore[no-untyped-def]
        total = 0
        for i in range(addresses.size):
            if lookup4(tbl24, tbl8, addresses[i]) != 0xFFFFFFFF:
                total += 1
        return total

    @njit
    def value6(root, nodes, hi, lo):  # type: ignore[no-untyped-def]
        return lookup6(root, nodes, hi, lo)

    lpm4 = LPM4()
    lpm4.add("10.0.0.0/8", 1)
    lpm4.add("10.0.0.0/30", 2)
    assert first_hits4(lpm4.tbl24, lpm4.tbl8,
                       np.array([0x0A000001, 0x0B000000, 0x0A0000FF], np.uint32)) == 2
    lpm6 = LPM6()
    lpm6.add("2001:db8::/127", 6)
    assert value6(lpm6.root, lpm6.nodes, np.uint64(0x20010DB800000000), np.uint64(1)) == 6
    assert value6(lpm6.root, lpm6.nodes, np.uint64(0x20010DB800000000), np.uint64(2)) \
        == NO_MATCH


def test_lookup_into_writes_without_allocating() -> None:
    lpm = LPM4()
    lpm.add("192.168.0.0/16", 8)
    addresses = np.array([0xC0A80001, 0x01020304], np.uint32)
    out = np.zeros(2, np.uint32)
    lpm.lookup_into(addresses, out)
    assert out.tolist() == [8, NO_MATCH]
    with pytest.raises(ValueError, match="out must be"):
        lpm.lookup_into(addresses, np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        lpm.lookup_into(addresses.astype(np.int64), out)
    lpm6 = LPM6()
    lpm6.add("::/1", 3)
    hi = np.array([1, 2**63], np.uint64)
    out6 = np.zeros(2, np.uint32)
    lpm6.lookup_into(hi, np.zeros(2, np.uint64), out6)
    assert out6.tolist() == [3, NO_MATCH]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(("prefix", "problem"), [
    ("10.0.0.1/8", "host bits"),
    ("10.0.0.0/33", "length 33 out of range"),
    ("10.0.0/8", "malformed"),
    ("10.0.0.0/x", "malformed"),
    ("not a prefix", "malformed"),
    ((0x0A000000, 40), "length 40 out of range"),
    ((2**32, 8), "out of range"),
    ((0x0A000001, 24), "host bits"),
    (("10.0.0.0", 8), "integers"),
    (ipaddress.IPv6Network("::/0"), "IPv6"),
    (3.5, "malformed"),
])
def test_bad_prefix_is_refused_and_nothing_changes(prefix: object, problem: str) -> None:
    lpm = LPM4()
    lpm.add("10.0.0.0/8", 1)
    before = lpm.root.copy()
    with pytest.raises(ValueError, match=problem):
        lpm.add(prefix, 2)
    assert np.array_equal(lpm.root, before) and len(lpm) == 1


@pytest.mark.parametrize("value", [-1, 2**31 - 1, 2**32, "1", True, 1.0])
def test_bad_value_is_refused_and_nothing_changes(value: object) -> None:
    lpm = LPM4()
    with pytest.raises(ValueError, match="value"):
        lpm.add("10.0.0.0/8", value)  # type: ignore[arg-type]
    assert len(lpm) == 0 and not lpm.root.any()
    lpm.add("10.0.0.0/8", 2**31 - 2)  # the largest value
    assert lpm.lookup(np.array([0x0A000000], np.uint32)).tolist() == [2**31 - 2]


def test_removing_an_absent_prefix_names_it() -> None:
    lpm = LPM4()
    lpm.add("10.0.0.0/8", 1)
    with pytest.raises(KeyError, match="10.1.0.0/16"):
        lpm.remove("10.1.0.0/16")
    assert "10.0.0.0/8" in lpm and "10.1.0.0/16" not in lpm and len(lpm) == 1
    lpm6 = LPM6()
    with pytest.raises(KeyError, match="2001:db8::/32"):
        lpm6.remove("2001:db8::/32")


def test_bad_bulk_input_changes_nothing() -> None:
    lpm = LPM4()
    lpm.add("10.0.0.0/8", 1)
    good = np.array([0x0B000000, 0x0C000000], np.uint32)
    for addresses, lengths, values, problem in [
        (good, np.array([8, 33]), np.array([1, 2]), "length"),
        (np.array([0x0B000000, 0x0C000001], np.uint32), np.array([8, 8]), np.array([1, 2]),
         "host bits"),
        (good, np.array([8, 8]), np.array([1, 2**31]), "value"),
        (good, np.array([8]), np.array([1, 2]), "same length"),
    ]:
        with pytest.raises(ValueError, match=problem):
            lpm.add_many(addresses, lengths, values)
        assert len(lpm) == 1 and lpm.groups_in_use == 0
    lpm6 = LPM6()
    with pytest.raises(ValueError, match="host bits"):
        lpm6.add_many(np.array([1], np.uint64), np.zeros(1, np.uint64), np.array([32]),
                      np.array([1]))
    with pytest.raises(ValueError, match="host bits"):
        lpm6.add("2001:db8::1/64", 1)
    with pytest.raises(ValueError, match="IPv4"):
        lpm6.add(ipaddress.IPv4Network("10.0.0.0/8"), 1)
    with pytest.raises(ValueError, match="out of range 0..128"):
        lpm6.add("::/129", 1)
    assert len(lpm6) == 0


def test_memory_is_reported() -> None:
    lpm = LPM4()
    empty = lpm.memory_bytes()
    assert empty >= 2**24 * 5  # tbl24 and its depth shadow
    lpm.add("10.0.0.0/25", 1)
    assert lpm.memory_bytes() > empty - 1
