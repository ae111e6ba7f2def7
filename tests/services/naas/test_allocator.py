"""The allocator on SQLite: release and reuse, exhaustion, sessions, GC, pools, concurrency.

Every test that allocates more than one thing checks, by ports, that nothing
overlaps (``disjoint``); the concurrency tests do it with threads sharing an
allocator, threads with an allocator each (separate connections), and
processes on one file.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from portico.services.naas.allocator import (
    Allocation,
    Allocator,
    InvalidRequest,
    OwnerConflict,
    PoolExhausted,
    PoolMismatch,
    open_allocator,
)
from portico.services.naas.pools import BlockLayout, Pool, parse_pool
from portico.services.naas.psid import PsidLayout

MEDIA = "media=198.51.100.0/29"  # gateway .1, addresses .2-.6


def runs_of(allocations: list[Allocation]) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    return [(str(a.address), a.ranges) for a in allocations]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'naas.db'}"


def small(url: str, block_size: int = 16384) -> Allocator:
    """5 addresses x 3 blocks (1024-17407, 17408-33791, 33792-50175): 15 slots."""
    return open_allocator(url, [parse_pool(MEDIA, BlockLayout(block_size))])


def test_pods_share_an_address_with_blocks_of_their_own(url: str, disjoint: Callable) -> None:
    allocator = small(url)
    first, created = allocator.allocate(pool="media", container_id="c1", namespace="voice",
                                        name="relay-0")
    second, _ = allocator.allocate(pool="media", container_id="c2")
    assert created
    assert first.address == second.address == ipaddress.ip_address("198.51.100.2")
    assert (first.ranges, second.ranges) == (((1024, 17407),), ((17408, 33791),))
    assert first.prefix_length == 29 and str(first.gateway) == "198.51.100.1"
    assert first.owner.namespace == "voice" and first.owner.name == "relay-0"
    assert first.ports() == {"kind": "block", "block": 0, "first": 1024, "last": 17407,
                             "count": 16384, "ranges": [[1024, 17407]]}
    disjoint(runs_of([first, second]))


def test_adding_again_returns_the_same_allocation(url: str) -> None:
    allocator = small(url)
    first, created = allocator.allocate(pool="media", container_id="c1")
    again, created_again = allocator.allocate(pool="media", container_id="c1", name="other")
    assert created and not created_again and again == first
    assert allocator.get("c1") == first
    other_interface, created = allocator.allocate(pool="media", container_id="c1",
                                                  interface="net1")
    assert created and other_interface.block != first.block


def test_release_frees_the_slot_and_it_is_used_again(url: str, disjoint: Callable) -> None:
    allocator = small(url)
    held = [allocator.allocate(pool="media", container_id=f"c{i}")[0] for i in range(15)]
    disjoint(runs_of(held))
    with pytest.raises(PoolExhausted):
        allocator.allocate(pool="media", container_id="late")
    (released,) = allocator.release("c7")
    assert released == held[7] and allocator.get("c7") is None
    assert allocator.release("c7") == []  # a second DEL is no error
    reused, _ = allocator.allocate(pool="media", container_id="late")
    assert (reused.address, reused.block) == (held[7].address, held[7].block)
    assert reused.id != held[7].id
    disjoint(runs_of(allocator.allocations()))


def test_exhaustion_names_the_pool_and_its_size(url: str) -> None:
    allocator = small(url)
    for i in range(15):
        allocator.allocate(pool="media", container_id=f"c{i}")
    with pytest.raises(PoolExhausted) as caught:
        allocator.allocate(pool="media", container_id="one-more")
    assert str(caught.value) == ("pool media is exhausted: all 15 slots (5 addresses x 3 "
                                 "blocks of 16384 ports) are allocated")
    assert caught.value.pool == "media" and caught.value.slots == 15
    # The owner of an allocation still gets it back from a full pool.
    assert allocator.allocate(pool="media", container_id="c3")[1] is False


def test_sessions_are_held_apart_and_go_with_their_pod(url: str, disjoint: Callable) -> None:
    allocator = small(url)
    pod, _ = allocator.allocate(pool="media", container_id="relay")
    calls = [allocator.allocate(pool="media", container_id="relay", session=f"call-{i}@pbx")[0]
             for i in range(3)]
    assert [c.owner.session for c in calls] == ["call-0@pbx", "call-1@pbx", "call-2@pbx"]
    assert allocator.get("relay", session="call-1@pbx") == calls[1]
    disjoint(runs_of([pod, *calls]))
    assert allocator.release("relay", session="call-1@pbx") == [calls[1]]
    assert {a.key for a in allocator.allocations(container_id="relay")} == {
        "relay/eth0/pod", "relay/eth0/session/call-0@pbx", "relay/eth0/session/call-2@pbx"}
    released = allocator.release("relay", interface="eth0")  # CNI DEL of the pod
    assert {a.key for a in released} == {"relay/eth0/pod", "relay/eth0/session/call-0@pbx",
                                         "relay/eth0/session/call-2@pbx"}
    assert allocator.allocations() == []


def test_gc_releases_what_is_not_valid_in_its_pool_and_network(url: str) -> None:
    allocator = open_allocator(url, [parse_pool(MEDIA, BlockLayout(16384)),
                                     parse_pool("rtp=203.0.113.0/30", BlockLayout(16384))])
    for container in ("keep", "stale", "other-net"):
        allocator.allocate(pool="media", container_id=container, network="media-net"
                           if container != "other-net" else "second-net")
    allocator.allocate(pool="media", container_id="keep", interface="net1",
                       network="media-net")
    allocator.allocate(pool="rtp", container_id="elsewhere", network="media-net")
    released = allocator.gc(pool="media", network="media-net",
                            valid_attachments={("keep", "eth0")})
    assert {a.key for a in released} == {"stale/eth0/pod", "keep/net1/pod"}
    assert {a.key for a in allocator.allocations()} == {
        "keep/eth0/pod", "other-net/eth0/pod", "elsewhere/eth0/pod"}
    other = allocator.get("other-net")
    assert allocator.gc(pool="media", valid_containers={"keep"}) == [other]


def test_psid_pools_hand_out_rfc_7597_port_sets(url: str, disjoint: Callable) -> None:
    allocator = open_allocator(url, [parse_pool("rtp=203.0.113.7/32", PsidLayout(4))])
    held = [allocator.allocate(pool="rtp", container_id=f"c{i}")[0] for i in range(16)]
    assert {str(a.address) for a in held} == {"203.0.113.7"}  # one public address
    assert sorted(a.block for a in held) == list(range(16))
    assert held[0].gateway is None and held[0].prefix_length == 32
    assert held[3].ranges[0] == (1024 + 3 * 64, 1024 + 3 * 64 + 63)  # m = 6: runs of 64
    assert len(held[3].ranges) == 63
    assert held[3].ports()["psid"] == 3 and held[3].ports()["count"] == 63 * 64
    assert disjoint(runs_of(held)) == 16
    with pytest.raises(PoolExhausted):
        allocator.allocate(pool="rtp", container_id="c16")


def test_bad_requests_name_the_field(url: str) -> None:
    allocator = small(url)
    cases = [({"container_id": "-starts-badly"}, "container_id"),
             ({"container_id": "a/b"}, "container_id"),
             ({"container_id": "c", "interface": "eth0:1"}, "interface"),
             ({"container_id": "c", "interface": "a-very-long-name"}, "interface"),
             ({"container_id": "c", "session": "has space"}, "session"),
             ({"container_id": "c", "pool": "nope"}, "pool"),
             ({"container_id": "c", "pool": "Bad Name"}, "pool")]
    for request, field in cases:
        with pytest.raises(InvalidRequest, match=f"^{field}: ") as caught:
            allocator.allocate(**{"pool": "media", **request})
        assert caught.value.field == field


def test_an_owner_holds_one_pool(url: str) -> None:
    allocator = open_allocator(url, [parse_pool(MEDIA, BlockLayout(16384)),
                                     parse_pool("rtp=203.0.113.0/30", BlockLayout(16384))])
    allocator.allocate(pool="media", container_id="c1")
    with pytest.raises(OwnerConflict, match="in pool media, not rtp"):
        allocator.allocate(pool="rtp", container_id="c1")


def test_a_stored_pool_keeps_its_layout_while_it_holds_allocations(url: str) -> None:
    allocator = small(url)
    allocator.allocate(pool="media", container_id="c1")
    allocator.close()
    with pytest.raises(PoolMismatch, match="holds 1 allocations"):
        small(url, block_size=1000)
    with pytest.raises(PoolMismatch, match="shares addresses with the stored pool media"):
        open_allocator(url, [parse_pool("other=198.51.100.4/30", BlockLayout(100))])
    reopened = small(url)
    reopened.release("c1")
    reopened.close()
    changed = small(url, block_size=1000)  # empty now: the layout may change
    assert changed.allocate(pool="media", container_id="c2")[0].ranges == ((1024, 2023),)


def test_pools_of_one_allocator_may_not_share_addresses(url: str) -> None:
    with pytest.raises(ValueError, match="share addresses"):
        open_allocator(url, [parse_pool(MEDIA, BlockLayout(1024)),
                             parse_pool("b=198.51.100.6/32", BlockLayout(1024))])


def test_pool_specs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^--pool: 'media' is not NAME=CIDR"):
        parse_pool("media", BlockLayout(1024))
    with pytest.raises(ValueError, match="has host bits set"):
        parse_pool("media=198.51.100.1/29", BlockLayout(1024))
    with pytest.raises(ValueError, match="^block_size: "):
        BlockLayout(70000)
    pool = parse_pool("media=198.51.100.0/30,203.0.113.9/32", BlockLayout(32256))
    assert [str(a) for a in pool.addresses] == ["198.51.100.2", "203.0.113.9"]
    assert pool.slots == 4 and pool.slot(3) == (ipaddress.ip_address("203.0.113.9"), 1)


def test_the_unique_constraint_refuses_an_overlapping_row(url: str) -> None:
    allocator = small(url)
    allocator.allocate(pool="media", container_id="c1")
    db = sqlite3.connect(url.removeprefix("sqlite:"))
    with pytest.raises(sqlite3.IntegrityError, match="allocations.address, allocations.block"):
        db.execute("INSERT INTO allocations (key, id, pool, container_id, address, block, "
                   "record) VALUES ('bug/eth0/pod', 'x', 'media', 'bug', '198.51.100.2', 0, "
                   "'{}')")
    db.close()


def test_a_stale_hint_is_caught_by_the_constraint(url: str, disjoint: Callable) -> None:
    # Two allocators on one file: each one's hint misses the other's claims.
    a, b = small(url), small(url)
    for i in range(7):
        a.allocate(pool="media", container_id=f"a{i}")
        b.allocate(pool="media", container_id=f"b{i}")
    b.allocate(pool="media", container_id="b7")
    assert len(a.allocations()) == 15
    disjoint(runs_of(a.allocations()))
    with pytest.raises(PoolExhausted):
        a.allocate(pool="media", container_id="a7")
    b.release("b3")
    assert a.allocate(pool="media", container_id="a7")[1]  # found by reading again


def concurrently(count: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return errors


@pytest.mark.parametrize("shared", [True, False], ids=["one allocator", "one each"])
def test_threads_never_overlap(url: str, shared: bool, disjoint: Callable) -> None:
    pool = parse_pool("media=10.20.0.0/28", BlockLayout(8192))  # 13 x 7 = 91 slots
    first = open_allocator(url, [pool])
    allocators = [first] * 6 if shared else [first, *(open_allocator(url, [pool])
                                                      for _ in range(5))]
    exhausted = []

    def storm(i: int) -> None:
        for n in range(30):  # 6 x 30 = 180 asks for 91 slots
            try:
                allocators[i].allocate(pool="media", container_id=f"t{i}-{n}")
            except PoolExhausted:
                exhausted.append(i)
                return

    assert concurrently(6, storm) == []
    held = first.allocations()
    assert len(held) == pool.slots and exhausted  # 180 asks for 91 slots: someone ran out
    assert all(sum(a.owner.container_id.startswith(f"t{i}-") for a in held) == 30
               for i in range(6) if i not in exhausted)
    assert disjoint(runs_of(held)) == 91


def test_processes_on_one_file_never_overlap(url: str, storms: Callable,
                                             disjoint: Callable) -> None:
    pool_text = "media=10.30.0.0/28"  # 13 addresses x 15 blocks of 4096 = 195 slots
    runs = [storms(url, pool_text, f"p{i}", 195) for i in range(3)]
    for storm in runs:
        storm.finish(timeout=120)
    acknowledged = [line for storm in runs for line in storm.held().values()]
    assert all(storm.count("exhausted") == 1 for storm in runs)
    assert len(acknowledged) == 195
    assert len({(a["address"], a["block"]) for a in acknowledged}) == 195
    layout = BlockLayout(4096)
    disjoint((a["address"], layout.ranges(a["block"])) for a in acknowledged)
    stored = small_view(url, parse_pool(pool_text, layout)).allocations()
    assert {(a.owner.container_id, str(a.address), a.block) for a in stored} == {
        (a["container_id"], a["address"], a["block"]) for a in acknowledged}


def small_view(url: str, pool: Pool) -> Allocator:
    return open_allocator(url, [pool])
