"""kill -9 during an allocation storm on SQLite: nothing acknowledged is lost, nothing overlaps.

Two ``storm.py`` processes allocate (and release every fourth) on one SQLite
file as fast as they can; once each has been told of enough allocations,
both are killed with SIGKILL, wherever they are: inside a transaction, between
the commit and the acknowledgement, in the middle of a write. Then a new
allocator opens the file, as a restarted daemon does, and the test checks:

* every allocation a storm acknowledged is there, on the same address and
  block, except the one whose release may have been under way when it died
  (a storm releases container i-1 just before asking for container i);
* every release a storm acknowledged is gone;
* whatever is there that nobody acknowledged is at most one allocation a
  process (the one committed between the commit and the kill);
* no allocation stopped half-way: the file passes SQLite's integrity check;
* no two allocations share a port (checked by ports, ``disjoint``).

Three rounds on the same file (later rounds start on a file recovered from a
crash), then an integrity check, and the restarted allocator fills the pool
to the last slot with still no overlap.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from portico.services.naas.allocator import PoolExhausted, open_allocator
from portico.services.naas.pools import BlockLayout, parse_pool

POOL = "storm=10.40.0.0/25"  # 125 addresses x 15 blocks of 4096 ports = 1875 slots
LAYOUT = BlockLayout(4096)
RELEASE_EVERY = 4
ROUNDS = 3
STORMS = 2


def test_kill_9_during_an_allocation_storm_loses_and_overlaps_nothing(
        tmp_path: Path, storms: Callable, disjoint: Callable, until: Callable) -> None:
    url = f"sqlite:{tmp_path / 'naas.db'}"
    pool = parse_pool(POOL, LAYOUT)
    told: dict[str, dict] = {}  # container -> its acknowledged allocation, not released
    released: set[str] = set()
    maybe_released: set[str] = set()
    chance = random.Random(7)
    for round_ in range(ROUNDS):
        runs = [storms(url, POOL, f"r{round_}w{i}", 10_000, block_size=LAYOUT.size,
                       release_every=RELEASE_EVERY) for i in range(STORMS)]
        # SQLite's write lock is not fair (a busy writer may starve the other for a while):
        # wait for both to be under way and for enough acknowledgements in all.
        until(lambda: all(s.count("allocated") >= 5 for s in runs)  # noqa: B023
              and sum(s.count("allocated") for s in runs) >= 80, 60,  # noqa: B023
              "both storms under way, 80 allocations acknowledged")
        time.sleep(chance.uniform(0, 0.05))  # land the kill anywhere in the next steps
        for storm in runs:
            storm.kill()
        for storm in runs:
            told.update(storm.held())
            released |= storm.released()
            last = [line for line in storm.lines if line["event"] == "allocated"][-1]
            if (int(last["container_id"].rsplit("-", 1)[1]) + 1) % RELEASE_EVERY == 0:
                maybe_released.add(last["container_id"])  # its release was next in line

        allocator = open_allocator(url, [pool])  # the restart
        stored = {a.owner.container_id: a for a in allocator.allocations()}
        for container, line in told.items():
            if container in maybe_released and container not in stored:
                continue
            assert container in stored, f"acknowledged {container} lost in round {round_}"
            allocation = stored[container]
            assert (str(allocation.address), allocation.block, allocation.id) == (
                line["address"], line["block"], line["id"])
        assert not released & stored.keys(), "an acknowledged release came back"
        unacknowledged = stored.keys() - told.keys()
        assert len(unacknowledged) <= STORMS * (round_ + 1), unacknowledged
        disjoint((str(a.address), a.ranges) for a in stored.values())
        allocator.close()

    db = sqlite3.connect(url.removeprefix("sqlite:"))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    allocator = open_allocator(url, [pool])
    for i in range(pool.slots + 1):
        try:
            allocator.allocate(pool="storm", container_id=f"fill-{i}")
        except PoolExhausted:
            break
    held = allocator.allocations()
    assert len(held) == pool.slots == 1875
    assert disjoint((str(a.address), a.ranges) for a in held) == 1875
    allocator.close()
