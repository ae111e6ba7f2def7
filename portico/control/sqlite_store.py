"""control.sqlite_store: the embedded store, one SQLite file (``sqlite:PATH``).

Role. The default ``Store`` (see ``portico.control.store`` for the contract): a
single gateway keeps its desired state in one file, with no server to run.

Theory of operation.

*Layout.* Two tables: ``objects`` (``key`` primary key, ``value`` the document
as JSON text) and ``meta``, one row holding the store's revision. The file is in
WAL mode: a commit appends its pages to the write-ahead log, and a half-written
commit at the log's tail has no commit frame and is ignored on recovery, so there
are no half-changes.

*Durability: ``synchronous=NORMAL``, chosen.* ``COMMIT`` returns once the log's
pages are written to the operating system, which keeps them whatever becomes of
the process: an acknowledged commit survives kill -9 and any crash of the writer
(``tests/control/test_store.py`` kills writers mid-burst). It does not survive the
machine's death (power loss, a kernel panic) before the kernel writes the log out
(Linux does within ~30 s; a checkpoint, every 1,000 pages of log, fsyncs it): then
the last commits acknowledged before it may be missing, still never half of one.
``FULL`` would fsync the log on every commit, ~0.3 ms on this project's disk (a
third of what a write through the API may take to reach 1,000/s), for that one
case; a deployment that must survive losing the machine keeps its state in etcd,
whose commits a quorum of machines has fsynced.

*A commit* is one ``BEGIN IMMEDIATE`` transaction: take the write lock, read the
revision, check ``expect``, upsert and delete the keys, bump the revision,
``COMMIT``. Values are encoded before the transaction, so a bad value refuses
the whole commit before anything is written. One transaction per commit is what
bounds the write rate.

*Readers* run in a read transaction (WAL gives them a consistent view while a
writer goes on), so a snapshot's objects and revision are from one commit. Each
row's text is kept with its decoded object: a row whose text is the same as at
the last read is not decoded again, and the snapshot holds the same object.

*Threads and processes.* One connection per store, used under a lock, so a
``SqliteStore`` may be shared by threads (the API's and the daemon's). Other
processes may open the same file: SQLite's file locks serialize their commits
(``busy_timeout`` waits up to 10 s for the write lock). ``watch`` and ``wait``
poll the revision every 20 ms, so they see any commit, this process's or
another's, within ~20 ms. A commit wakes nobody: the one watcher in practice is
the daemon's, which made the store's own commits itself and skips them, and
waking it on each of them would cost every write a thread switch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from portico.control.store import Conflict, Snapshot, StoreError, Value, encode_changes

POLL_INTERVAL = 0.02  # s between revision checks while watching
BUSY_TIMEOUT_MS = 10_000  # how long a commit waits for another process's write lock
SYNCHRONOUS = "NORMAL"  # with WAL: survives the process's death, not the machine's (above)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0),
                                 revision INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0);
"""
_UPSERT = (
    "INSERT INTO objects (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:PATH`` store url names; ValueError for anything else."""
    path = url.removeprefix("sqlite:")
    if not url.startswith("sqlite:") or not path:
        raise ValueError(f"{url!r}: not a sqlite store url (sqlite:PATH)")
    return Path(path)


class SqliteStore:
    """The store in the SQLite file named by ``url`` (``sqlite:PATH``); the file and
    its directory are created when missing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)  # signalled by close, for waiters
        self._decoded: dict[str, tuple[str, dict]] = {}  # key -> (text, object), last read
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # shared by threads, under self._lock
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{url}: cannot open {self.path} ({exc})") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{url}: {self.path} cannot be put in WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            self._revision_of(db)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"{url}: {self.path} is not a usable store ({exc})") from None
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    def __repr__(self) -> str:
        return f"SqliteStore({self.url!r})"

    def read(self) -> Snapshot:
        with self._lock:
            db = self._open_db()
            try:
                db.execute("BEGIN")
                try:
                    revision = self._revision_of(db)
                    rows = db.execute("SELECT key, value FROM objects").fetchall()
                finally:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.url}: read failed ({exc})") from None
            before = self._decoded
        # Decoded outside the lock: a commit need not wait for a large row's decode. Two
        # readers racing leave either's cache, and both are right (a text and its object).
        objects: dict[str, dict] = {}
        decoded: dict[str, tuple[str, dict]] = {}
        for key, text in rows:
            last = before.get(key)
            if last is not None and last[0] == text:
                value = last[1]
            else:
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    raise StoreError(
                        f"{self.url}: the value of {key!r} is corrupt ({exc})") from None
            objects[key] = value
            decoded[key] = (text, value)
        self._decoded = decoded
        return Snapshot(revision, objects)

    def commit(self, changes: Mapping[str, Value | None], *,
               expect: int | None = None) -> int:
        encoded = encode_changes(self.url, changes)
        puts = [(k, v) for k, v in encoded.items() if v is not None]
        deletes = [(k,) for k, v in encoded.items() if v is None]
        with self._lock:
            db = self._open_db()
            try:
                if not encoded:
                    revision = self._revision_of(db)
                    if expect is not None and expect != revision:
                        raise Conflict(self.url, expect, revision)
                    return revision
                db.execute("BEGIN IMMEDIATE")
                try:
                    revision = self._revision_of(db)
                    if expect is not None and expect != revision:
                        raise Conflict(self.url, expect, revision)
                    if puts:
                        db.executemany(_UPSERT, puts)
                    if deletes:
                        db.executemany("DELETE FROM objects WHERE key = ?", deletes)
                    db.execute("UPDATE meta SET revision = ?", (revision + 1,))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"{self.url}: commit failed ({exc})") from None
            return revision + 1

    def watch(self, after: int, timeout: float) -> Snapshot | None:
        return self.read() if self.wait(after, timeout) is not None else None

    def wait(self, after: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                try:
                    revision = self._revision_of(self._open_db())
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.url}: watch failed ({exc})") from None
                if revision > after:
                    return revision
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._closed.wait(min(POLL_INTERVAL, remaining))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._closed.notify_all()

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.url}: the store is closed")
        return self._db

    def _revision_of(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT revision FROM meta WHERE id = 0").fetchone()
        if row is None or not isinstance(row[0], int):
            raise StoreError(f"{self.url}: {self.path} has no revision row (not a Portico store?)")
        return row[0]
