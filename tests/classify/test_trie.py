"""The merged prefix trie: all matches on the path, reference counts, no dangling nodes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portico.classify.trie import PrefixTrie


def net(text: str) -> tuple[int, int]:
    n = ipaddress.ip_network(text)
    return int(n.network_address), n.prefixlen


def addr(text: str) -> int:
    return int(ipaddress.ip_address(text))


def test_every_prefix_on_the_path_matches() -> None:
    trie = PrefixTrie(32)
    trie.add(*net("10.0.0.0/8"), "A")
    trie.add(*net("10.1.0.0/16"), "B")
    trie.add(*net("10.2.0.0/16"), "C")
    assert trie.holders_of(addr("10.1.2.3")) == {"A", "B"}
    assert trie.holders_of(addr("10.2.0.1")) == {"A", "C"}
    assert trie.holders_of(addr("10.3.0.1")) == {"A"}
    assert trie.holders_of(addr("11.0.0.1")) == set()
    trie.check()


def test_shared_prefix_stays_for_the_other_holder() -> None:
    trie = PrefixTrie(32)
    trie.add(*net("192.0.2.0/24"), "A")
    trie.add(*net("192.0.2.0/24"), "B")
    assert trie.remove(*net("192.0.2.0/24"), "A")[0] is True
    assert trie.holders_of(addr("192.0.2.9")) == {"B"}
    trie.check()


def test_reference_counts() -> None:
    trie = PrefixTrie(32)
    trie.add(*net("192.0.2.0/24"), "A", 2)
    gone, _, still_there = trie.remove(*net("192.0.2.0/24"), "A")
    assert not gone and still_there  # one reason left
    assert trie.holders_of(addr("192.0.2.1")) == {"A"}
    gone, node, still_there = trie.remove(*net("192.0.2.0/24"), "A")
    assert gone and not still_there and node.length == 24
    assert trie.root is None and trie.node_count == 0
    with pytest.raises(KeyError):
        trie.remove(*net("192.0.2.0/24"), "A")


def test_removing_everything_leaves_no_node() -> None:
    trie = PrefixTrie(32)
    prefixes = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.128.0.0/9", "0.0.0.0/0",
                "10.1.2.3/32", "172.16.0.0/12"]
    for p in prefixes:
        trie.add(*net(p), "X")
    trie.check()
    for p in reversed(prefixes):
        trie.remove(*net(p), "X")
        trie.check()
    assert trie.root is None and trie.node_count == 0


def test_branch_nodes_appear_and_go() -> None:
    trie = PrefixTrie(32)
    trie.add(*net("10.1.0.0/16"), "A")
    trie.add(*net("10.2.0.0/16"), "B")  # needs a branch point at 10.0.0.0/14
    assert trie.node_count == 3
    trie.remove(*net("10.1.0.0/16"), "A")
    assert trie.node_count == 1  # the branch point went with it
    trie.check()


def test_ipv6_and_bad_prefixes() -> None:
    trie = PrefixTrie(128)
    trie.add(*net("2001:db8::/32"), "A")
    trie.add(*net("2001:db8:1::/48"), "B")
    assert trie.holders_of(addr("2001:db8:1::5")) == {"A", "B"}
    with pytest.raises(ValueError, match="host bits"):
        trie.add(addr("2001:db8::1"), 32, "A")
    with pytest.raises(ValueError, match="length"):
        trie.add(0, 129, "A")


PREFIX = st.integers(0, 32).flatmap(
    lambda length: st.integers(0, (1 << length) - 1).map(
        lambda n: ((n << (32 - length)) if length else 0, length)))
# Short prefixes near 10.0.0.0 so that they nest and collide often.
CLOSE = st.tuples(st.integers(0, 255), st.integers(4, 20)).map(
    lambda t: (((10 << 24) | (t[0] << 16)) & (((1 << t[1]) - 1) << (32 - t[1])), t[1]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(PREFIX, CLOSE), st.sampled_from("ABC")),
                max_size=60),
       st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=20))
def test_random_updates_match_brute_force(ops, probes) -> None:
    trie = PrefixTrie(32)
    held: dict[tuple[int, int, str], int] = {}
    for adding, (network, length), holder in ops:
        key = (network, length, holder)
        if adding:
            trie.add(network, length, holder)
            held[key] = held.get(key, 0) + 1
        elif held.get(key):
            trie.remove(network, length, holder)
            held[key] -= 1
        trie.check()
    probes += [network for network, _, _ in held]
    for address in probes:
        expect = {h for (n, length, h), count in held.items()
                  if count and address >> (32 - length) == n >> (32 - length)}
        assert trie.holders_of(address) == expect
    for (network, length, holder), count in held.items():
        if count:
            trie.remove(network, length, holder, count)
    assert trie.root is None and trie.node_count == 0
