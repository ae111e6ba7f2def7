"""An allocation storm in a process of its own, for the crash and many-writer tests.

Run as ``python storm.py --store URL --pool NAME=CIDR --block-size N --prefix P
--count N [--release-every K]``: it opens an allocator on the store and asks
for ``count`` allocations (containers ``P-0``, ``P-1``, ...), releasing the one
before every ``K``-th, as fast as it can. It prints one JSON line per answer,
flushed at once, only after the allocator returned: a line on stdout is an
acknowledgement, what a runtime would have been told::

    {"event": "ready"}
    {"event": "allocated", "container_id": ..., "address": ..., "block": ..., "id": ...}
    {"event": "released", "container_id": ..., "id": ...}
    {"event": "exhausted", "message": ...}

and stops at ``count`` or at the first exhaustion. Not a test module (pytest
collects ``test_*.py`` only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from portico.services.naas.allocator import PoolExhausted, open_allocator
from portico.services.naas.pools import BlockLayout, parse_pool


def say(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--release-every", type=int, default=0)
    args = parser.parse_args()
    pool = parse_pool(args.pool, BlockLayout(args.block_size))
    allocator = open_allocator(args.store, [pool])
    say("ready")
    try:
        for i in range(args.count):
            container = f"{args.prefix}-{i}"
            if args.release_every and i and i % args.release_every == 0:
                for gone in allocator.release(f"{args.prefix}-{i - 1}"):
                    say("released", container_id=gone.owner.container_id, id=gone.id)
            try:
                allocation, _ = allocator.allocate(pool=pool.name, container_id=container)
            except PoolExhausted as error:
                say("exhausted", message=str(error))
                break
            say("allocated", container_id=container, address=str(allocation.address),
                block=allocation.block, id=allocation.id)
            # A breath between two claims, as between two pods a runtime starts: SQLite does
            # not hand its write lock over fairly (a waiter sleeps in its busy handler while
            # the writer takes the lock again at once), so back-to-back claims from one
            # process could keep the other storm waiting for the whole test.
            time.sleep(0.002)
    finally:
        allocator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
