"""services.naas.sqlite_backend: allocations in one SQLite file (``sqlite:PATH``).

Role. The allocator's embedded back-end (``allocator.Backend``): one gateway,
no server to run, allocations that survive kill -9 and never overlap.

Theory of operation.

*Layout.* Two tables. ``pools`` holds each pool's spec (networks and layout,
JSON). ``allocations`` holds one row per allocation: its owner key (the
primary key), its id, pool, container, the slot as ``address`` and ``block``,
and the whole record as JSON. ``UNIQUE (address, block)`` is what makes
overlap impossible: whatever a caller believes, SQLite refuses a second row
for a slot, and a slot's ports are fixed because a pool's layout cannot change
while it holds allocations and no two pools share an address (both checked by
``register`` inside its transaction).

*A claim* is one ``BEGIN IMMEDIATE`` transaction, so claims from threads and
processes are serialized by SQLite's write lock: look the owner's key up (if
it holds an allocation, that is the answer); check the pool's stored spec is
still this one; pick the next free slot from this process's ``FreeSlots``;
insert; ``COMMIT``. ``PRAGMA data_version`` tells, inside the transaction,
whether another connection (another process) committed since this one last
looked; if so the pools' taken slots are read again before picking, so the
hint is exact and a claim costs one insert. Should it still be stale, the
UNIQUE constraint refuses the insert, the slot is marked and the next one
tried; and a pool that looks full is read again before ``PoolExhausted``.

*Durability.* WAL with ``synchronous=FULL``: ``COMMIT`` returns once the log is
fsynced, so an allocation the caller was given survives kill -9 and power
loss, and a claim cut short by a crash leaves nothing (a transaction without
its commit frame is ignored on recovery). One fsync per claim is what bounds
the rate.

*Threads.* One connection used under a lock; other processes may open the same
file (``busy_timeout`` waits up to 10 s for the write lock).
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import threading
from collections.abc import Sequence

from portico.control.sqlite_store import sqlite_path
from portico.services.naas.allocator import (
    Allocation,
    FreeSlots,
    Owner,
    OwnerConflict,
    PoolExhausted,
    PoolMismatch,
    StoreUnavailable,
    new_allocation,
)
from portico.services.naas.pools import Pool, first_overlap, pool_from_spec

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (name TEXT PRIMARY KEY, spec TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS allocations (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    pool TEXT NOT NULL,
    container_id TEXT NOT NULL,
    address TEXT NOT NULL,
    block INTEGER NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (address, block)
);
CREATE INDEX IF NOT EXISTS allocations_by_pool ON allocations (pool);
"""
_INSERT = ("INSERT INTO allocations (key, id, pool, container_id, address, block, record) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")


def spec_text(pool: Pool) -> str:
    return json.dumps(pool.spec(), sort_keys=True, separators=(",", ":"))


def prefix_end(prefix: str) -> str:
    """The smallest string after every string starting with ``prefix`` (keys are ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"


class SqliteBackend:
    """Allocations in the SQLite file ``url`` names (``sqlite:PATH``), created if missing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._lock = threading.Lock()
        self._pools: dict[str, Pool] = {}
        self._free: dict[str, FreeSlots] = {}
        self._stale: set[str] = set()  # pools whose taken slots must be read again
        self._version = -1  # PRAGMA data_version when the hints were last exact
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"{url}: cannot open {self.path} ({exc})") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreUnavailable(f"{url}: {self.path} cannot be put in WAL mode ({mode})")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except sqlite3.Error as exc:
            db.close()
            raise StoreUnavailable(f"{url}: {self.path} is not a usable store ({exc})") from None
        self._db: sqlite3.Connection | None = db

    def __repr__(self) -> str:
        return f"SqliteBackend({self.url!r})"

    def register(self, pool: Pool) -> None:
        with self._lock:
            db = self._open()
            with self._transaction(db):
                stored = dict(db.execute("SELECT name, spec FROM pools").fetchall())
                mine = spec_text(pool)
                for name, text in stored.items():
                    if name == pool.name:
                        continue
                    try:
                        other = pool_from_spec(name, json.loads(text))
                    except ValueError as error:
                        raise PoolMismatch(f"{self.url}: stored pool {name} is unreadable "
                                           f"({error})") from None
                    overlap = first_overlap(pool, other)
                    if overlap:
                        raise PoolMismatch(
                            f"{self.url}: pool {pool.name} ({overlap[0]}) shares addresses "
                            f"with the stored pool {name} ({overlap[1]})")
                if pool.name not in stored:
                    db.execute("INSERT INTO pools (name, spec) VALUES (?, ?)", (pool.name, mine))
                elif stored[pool.name] != mine:
                    (held,) = db.execute("SELECT count(*) FROM allocations WHERE pool = ?",
                                         (pool.name,)).fetchone()
                    if held:
                        raise PoolMismatch(
                            f"{self.url}: pool {pool.name} is stored as "
                            f"{stored[pool.name]}, not {mine}, and holds {held} allocations "
                            "(a block's ports depend on the layout: release them first, or "
                            "name the new pool otherwise)")
                    db.execute("UPDATE pools SET spec = ? WHERE name = ?", (mine, pool.name))
                free = FreeSlots(pool)
                free.reset(self._taken(db, pool))
            self._pools[pool.name] = pool
            self._free[pool.name] = free
            self._stale.discard(pool.name)

    def claim(self, pool: Pool, owner: Owner) -> tuple[Allocation, bool]:
        with self._lock:
            db = self._open()
            free = self._free.get(pool.name)
            if free is None or self._pools[pool.name] != pool:
                raise PoolMismatch(f"{self.url}: pool {pool.name} is not registered here")
            with self._transaction(db):
                row = db.execute("SELECT record FROM allocations WHERE key = ?",
                                 (owner.key,)).fetchone()
                if row is not None:
                    existing = self._decode(row[0])
                    if existing.pool != pool.name:
                        raise OwnerConflict(existing, pool.name)
                    return existing, False
                self._refresh(db)
                stored = db.execute("SELECT spec FROM pools WHERE name = ?",
                                    (pool.name,)).fetchone()
                if stored is None or stored[0] != spec_text(pool):
                    raise PoolMismatch(f"{self.url}: pool {pool.name} was changed in the "
                                       f"store to {stored[0] if stored else 'nothing'}")
                if pool.name in self._stale:
                    free.reset(self._taken(db, pool))
                    self._stale.discard(pool.name)
                allocation = self._insert(db, pool, owner, free)
            free.mark(self._index(pool, allocation))
            return allocation, True

    def allocations(self, *, prefix: str = "", pool: str | None = None) -> list[Allocation]:
        query = "SELECT record FROM allocations WHERE key >= ? AND key < ?"
        values: tuple[str, ...] = (prefix, prefix_end(prefix))
        if pool is not None:
            query += " AND pool = ?"
            values += (pool,)
        with self._lock:
            try:
                rows = self._open().execute(query + " ORDER BY key", values).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.url}: read failed ({exc})") from None
        return [self._decode(text) for (text,) in rows]

    def remove(self, allocations: Sequence[Allocation]) -> list[Allocation]:
        removed = []
        with self._lock:
            db = self._open()
            with self._transaction(db):
                for allocation in allocations:
                    cursor = db.execute("DELETE FROM allocations WHERE key = ? AND id = ?",
                                        (allocation.key, allocation.id))
                    if cursor.rowcount:
                        removed.append(allocation)
            for allocation in removed:
                pool = self._pools.get(allocation.pool)
                if pool is not None:
                    self._free[pool.name].unmark(self._index(pool, allocation))
        return removed

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------ inside a transaction
    def _insert(self, db: sqlite3.Connection, pool: Pool, owner: Owner,
                free: FreeSlots) -> Allocation:
        reread = False
        while True:
            index = free.next_free()
            if index is None:
                if reread:
                    raise PoolExhausted(pool)
                free.reset(self._taken(db, pool))  # others may have released slots
                reread = True
                continue
            allocation = new_allocation(pool, owner, index)
            try:
                db.execute(_INSERT, (owner.key, allocation.id, pool.name, owner.container_id,
                                     str(allocation.address), allocation.block,
                                     json.dumps(allocation.to_record())))
            except sqlite3.IntegrityError as error:
                if "allocations.address" not in str(error):
                    raise
                free.mark(index)  # taken behind this process's back: the constraint held
                continue
            return allocation

    def _refresh(self, db: sqlite3.Connection) -> None:
        """Mark every pool stale if another connection committed since the last look."""
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if version != self._version:
            self._stale.update(self._pools)
            self._version = version

    def _taken(self, db: sqlite3.Connection, pool: Pool) -> list[int]:
        taken = []
        for address, block in db.execute("SELECT address, block FROM allocations "
                                          "WHERE pool = ?", (pool.name,)):
            index = pool.index(ipaddress.ip_address(address), block)
            if index is not None:
                taken.append(index)
        return taken

    def _transaction(self, db: sqlite3.Connection) -> _Transaction:
        return _Transaction(db, self.url)

    # ------------------------------------------------------------ helpers
    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable(f"{self.url}: the store is closed")
        return self._db

    def _decode(self, text: str) -> Allocation:
        try:
            return Allocation.from_record(json.loads(text))
        except ValueError as error:
            raise StoreUnavailable(f"{self.url}: corrupt allocation ({error})") from None

    @staticmethod
    def _index(pool: Pool, allocation: Allocation) -> int:
        index = pool.index(allocation.address, allocation.block)
        if index is None:
            raise PoolMismatch(f"pool {pool.name} holds no slot {allocation.address} "
                               f"block {allocation.block}")
        return index


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception; SQLite's errors
    become StoreUnavailable naming the url."""

    def __init__(self, db: sqlite3.Connection, url: str) -> None:
        self.db = db
        self.url = url

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.url}: cannot begin a transaction ({exc})") from None
        return self.db

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: object) -> None:
        try:
            if kind is None:
                self.db.execute("COMMIT")
                return
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise StoreUnavailable(f"{self.url}: commit failed ({exc})") from None
        if isinstance(error, sqlite3.Error):
            raise StoreUnavailable(f"{self.url}: {error}") from None
