"""The allocator on a real etcd: two gateway nodes allocating at once never overlap.

Each "node" is a process of its own (``storm.py``) with its own allocator and
HTTP connection, sharing nothing but the etcd the test started. Both fill the
same pool until it is exhausted; between them they must have been given every
slot exactly once, with no port shared, and etcd must hold exactly what they
were told. The other tests check what one node sees of the other's work:
idempotent ADD, releases, GC and pool registration.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from portico.services.naas.allocator import (
    Allocator,
    OwnerConflict,
    PoolExhausted,
    PoolMismatch,
    open_allocator,
)
from portico.services.naas.pools import BlockLayout, parse_pool
from portico.services.naas.psid import PsidLayout

_prefixes = itertools.count()
BLOCKS = BlockLayout(16384)  # 5 addresses of 198.51.100.0/29 x 3 blocks: 15 slots


@pytest.fixture
def store(etcd: str) -> str:
    """A fresh key prefix on the module's etcd for each test."""
    return f"etcd://{etcd}/naas-test-{next(_prefixes)}/"


@pytest.fixture
def nodes(store: str) -> Iterator[Callable[..., Allocator]]:
    opened: list[Allocator] = []

    def node(*pools: str, layout: BlockLayout | PsidLayout = BLOCKS,
             seed: int | None = None) -> Allocator:
        allocator = open_allocator(store, [parse_pool(p, layout) for p in pools], seed=seed)
        opened.append(allocator)
        return allocator

    yield node
    for allocator in opened:
        allocator.close()


def test_two_nodes_allocating_concurrently_never_overlap(
        store: str, storms: Callable, disjoint: Callable) -> None:
    pool_text = "media=10.50.0.0/27"  # 29 addresses x 15 blocks of 4096 ports = 435 slots
    runs = [storms(store, pool_text, f"node{i}", 435) for i in range(2)]
    for storm in runs:
        storm.finish(timeout=180)
    told = [line for storm in runs for line in storm.held().values()]
    assert [storm.count("exhausted") for storm in runs] == [1, 1]
    assert all(storm.count("allocated") > 0 for storm in runs)  # both took part
    assert len(told) == 435
    assert len({(a["address"], a["block"]) for a in told}) == 435
    layout = BlockLayout(4096)
    assert disjoint((a["address"], layout.ranges(a["block"])) for a in told) == 435
    reader = open_allocator(store, [parse_pool(pool_text, layout)])
    try:
        stored = reader.allocations()
    finally:
        reader.close()
    assert {(a.owner.container_id, str(a.address), a.block, a.id) for a in stored} == {
        (a["container_id"], a["address"], a["block"], a["id"]) for a in told}


def test_an_add_repeated_on_another_node_gets_the_same_allocation(
        nodes: Callable) -> None:
    a, b = nodes("media=198.51.100.0/29"), nodes("media=198.51.100.0/29")
    first, created = a.allocate(pool="media", container_id="c1", namespace="voice",
                                name="relay")
    again, created_again = b.allocate(pool="media", container_id="c1")
    assert created and not created_again and again == first
    assert b.get("c1") == first


def test_a_release_on_one_node_frees_the_slot_for_the_other(
        nodes: Callable, disjoint: Callable) -> None:
    a, b = nodes("media=198.51.100.0/29", seed=1), nodes("media=198.51.100.0/29", seed=2)
    for i in range(15):
        (a if i % 2 else b).allocate(pool="media", container_id=f"c{i}")
    with pytest.raises(PoolExhausted, match="pool media is exhausted: all 15 slots"):
        a.allocate(pool="media", container_id="late")
    (released,) = b.release("c3")
    reused, _ = a.allocate(pool="media", container_id="late")  # a reads the slots again
    assert (reused.address, reused.block) == (released.address, released.block)
    assert disjoint((str(x.address), x.ranges) for x in b.allocations()) == 15


def test_sessions_and_gc_across_nodes(nodes: Callable) -> None:
    a, b = nodes("rtp=203.0.113.7/32", layout=PsidLayout(4)), nodes(
        "rtp=203.0.113.7/32", layout=PsidLayout(4))
    a.allocate(pool="rtp", container_id="relay", network="media")
    call, _ = b.allocate(pool="rtp", container_id="relay", session="call-1", network="media")
    a.allocate(pool="rtp", container_id="gone", network="media")
    assert call.ports()["psid"] != a.get("relay").block
    released = b.gc(pool="rtp", network="media", valid_containers={"relay"})
    assert [x.owner.container_id for x in released] == ["gone"]
    assert {x.key for x in a.release("relay")} == {"relay/eth0/pod",
                                                  "relay/eth0/session/call-1"}
    assert b.allocations() == []


def test_an_owner_holds_one_pool_across_nodes(nodes: Callable) -> None:
    a = nodes("media=198.51.100.0/29", "rtp=203.0.113.0/30")
    b = nodes("media=198.51.100.0/29", "rtp=203.0.113.0/30")
    a.allocate(pool="media", container_id="c1")
    with pytest.raises(OwnerConflict, match="in pool media, not rtp"):
        b.allocate(pool="rtp", container_id="c1")


def test_a_node_may_not_bring_another_spec_or_an_overlapping_pool(nodes: Callable) -> None:
    nodes("media=198.51.100.0/29")
    with pytest.raises(PoolMismatch, match="spec is fixed once stored"):
        nodes("media=198.51.100.0/29", layout=BlockLayout(1000))
    with pytest.raises(PoolMismatch, match="shares addresses with the stored pool media"):
        nodes("other=198.51.100.4/30")


def test_threads_of_one_node_fill_the_pool_exactly(nodes: Callable, disjoint: Callable) -> None:
    import threading

    node = nodes("media=198.51.100.0/28")  # 13 addresses x 3 blocks = 39 slots
    outcomes: list[str] = []

    def storm(t: int) -> None:
        for n in range(20):  # 4 x 20 = 80 asks for 39 slots
            try:
                node.allocate(pool="media", container_id=f"t{t}-{n}")
                outcomes.append("allocated")
            except PoolExhausted:
                outcomes.append("exhausted")
                return

    threads = [threading.Thread(target=storm, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert outcomes.count("allocated") == 39 and "exhausted" in outcomes
    assert disjoint((str(a.address), a.ranges) for a in node.allocations()) == 39
