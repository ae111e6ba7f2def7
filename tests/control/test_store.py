"""The store: one contract over both back-ends, SQLite in a temp dir and a real etcd.

The contract tests run against each back-end; etcd is Debian's etcd-server, started
here on free loopback ports (skipped when the `etcd` binary is missing: `make test`
installs it). Writers killed with SIGKILL mid-burst lose nothing they acknowledged and
leave no half-changes; two stores on one etcd see each other's commits within 2 s.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from portico.control.store import (
    Conflict,
    Snapshot,
    Store,
    StoreError,
    document_of,
    encode,
    objects_of,
    open_store,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"
BACKENDS = ["sqlite", "etcd"]


def etcd_url(address: str) -> str:
    return f"etcd://{address}/test-{uuid.uuid4().hex[:12]}/"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store's url on each back-end."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/state/store.db"  # the directory does not exist yet
    return etcd_url(request.getfixturevalue("etcd"))


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()


# The contract, on both back-ends.


def test_an_empty_store_is_at_revision_zero(store: Store) -> None:
    assert store.read() == Snapshot(0, {})
    assert store.commit({}) == 0
    assert store.commit({}, expect=0) == 0
    assert store.read().revision == 0


def test_commits_round_trip_and_count_revisions(store: Store, url: str) -> None:
    a = {"id": 1, "mtu": 9000, "name": "übergang ☃", "ratio": 0.25,
         "tags": [None, True, False, [1, "x"], {}], "nested": {"deep": {"er": [{"k": -7}]}}}
    assert store.commit({"ports/a": a, "ports/b": {"id": 2}, "tenants/t": {"id": 7}}) == 1
    assert store.read() == Snapshot(1, {"ports/a": a, "ports/b": {"id": 2}, "tenants/t": {"id": 7}})

    # Puts and deletes in one commit; deleting a missing key is not an error.
    assert store.commit({"ports/b": None, "tenants/t": {"id": 8}, "tenants/none": None}) == 2
    assert store.read() == Snapshot(2, {"ports/a": a, "tenants/t": {"id": 8}})

    # Another store on the same url (another process, another node) sees the same.
    other = open_store(url)
    try:
        assert other.read() == store.read()
        assert other.commit({"provider": {"router": {}}}) == 3
    finally:
        other.close()
    assert store.read() == Snapshot(3, {"ports/a": a, "tenants/t": {"id": 8},
                                        "provider": {"router": {}}})


def test_expect_refuses_a_stale_revision(store: Store, url: str) -> None:
    store.commit({"tenants/a": {"id": 1}})
    snapshot = store.read()
    assert store.commit({"tenants/a": {"id": 2}}, expect=snapshot.revision) == 2

    with pytest.raises(Conflict) as caught:
        store.commit({"tenants/a": {"id": 3}, "tenants/b": {"id": 4}}, expect=snapshot.revision)
    assert "expected revision 1" in str(caught.value) and "at 2" in str(caught.value)
    assert url in str(caught.value)
    assert (caught.value.expected, caught.value.current) == (1, 2)
    assert store.read() == Snapshot(2, {"tenants/a": {"id": 2}})

    # An empty change set writes nothing, but still checks expect.
    with pytest.raises(Conflict):
        store.commit({}, expect=1)
    assert store.commit({}, expect=2) == 2
    with pytest.raises(Conflict):
        store.commit({"tenants/a": None}, expect=0)
    assert store.read().revision == 2


@pytest.mark.parametrize("bad", [
    {"tenants/ok": {"id": 1}, "tenants/bad": {"addresses": {"10.0.0.1"}}},  # a set
    {"tenants/ok": {"id": 1}, "tenants/bad": {"ratio": float("nan")}},
    {"tenants/ok": {"id": 1}, "tenants/bad": ["not", "an", "object"]},
    {"tenants/ok": {"id": 1}, "": {"id": 2}},
    {"tenants/ok": {"id": 1}, "revision": {"id": 2}},  # reserved
])
def test_a_refused_commit_writes_nothing(store: Store, bad: dict[str, Any]) -> None:
    store.commit({"tenants/ok": {"id": 0}})
    with pytest.raises(ValueError, match=re.escape(store.url)):
        store.commit(bad)
    assert store.read() == Snapshot(1, {"tenants/ok": {"id": 0}})


def test_watch_returns_a_later_snapshot_or_none_in_time(store: Store) -> None:
    store.commit({"tenants/a": {"id": 1}})
    assert store.watch(0, 5.0) == Snapshot(1, {"tenants/a": {"id": 1}})  # already past

    started = time.monotonic()
    assert store.watch(1, 0.3) is None
    assert 0.29 <= time.monotonic() - started < 1.0

    assert store.watch(1, 0) is None


def test_wait_returns_the_revision_without_reading(store: Store) -> None:
    store.commit({"tenants/a": {"id": 1}})
    assert store.wait(0, 5.0) == 1  # already past
    started = time.monotonic()
    assert store.wait(1, 0.3) is None
    assert 0.29 <= time.monotonic() - started < 1.0
    assert store.wait(1, 0) is None

    def later() -> None:
        time.sleep(0.2)
        store.commit({"tenants/b": {"id": 2}})

    thread = threading.Thread(target=later)
    thread.start()
    try:
        assert store.wait(1, 10.0) == 2
    finally:
        thread.join()


def test_a_read_decodes_only_what_changed(store: Store, url: str) -> None:
    big = {"id": 1, "rules": [{"id": f"r{i}", "priority": i} for i in range(100)]}
    store.commit({"tenants/a": big, "tenants/b": {"id": 2}})
    first = store.read().objects
    store.commit({"tenants/b": {"id": 3}})
    second = store.read().objects
    assert second["tenants/a"] is first["tenants/a"]  # unchanged: the same object
    assert second["tenants/b"] == {"id": 3} and second["tenants/b"] is not first["tenants/b"]
    other = open_store(url)  # another writer: rewriting a as it was, changing b
    try:
        other.commit({"tenants/a": big, "tenants/b": {"id": 4}})
    finally:
        other.close()
    third = store.read().objects
    assert third["tenants/a"] is first["tenants/a"]  # the same text: not decoded again
    assert third["tenants/b"] == {"id": 4}


def test_a_commit_takes_an_encoded_value_as_it_is(store: Store) -> None:
    value = {"id": 1, "name": "a"}
    encoded = encode("tenants/a", value)
    assert encoded.text == '{"id":1,"name":"a"}'
    store.commit({"tenants/a": encoded})
    assert store.read() == Snapshot(1, {"tenants/a": value})
    with pytest.raises(ValueError, match=r"tenants\.a\.when: date"):
        encode("tenants/a", {"when": __import__("datetime").date(2024, 1, 1)})
    with pytest.raises(ValueError, match="ratio"):
        encode("tenants/a", {"ratio": float("nan")})


def test_watch_sees_another_process_commit(store: Store, url: str) -> None:
    store.commit({"tenants/a": {"id": 1}})
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from portico.control.store import open_store\n"
        "s = open_store(sys.argv[1]); time.sleep(0.3)\n"
        "print(s.commit({'tenants/b': {'id': 2}}, expect=1), flush=True)\n"
    ), url], stdout=subprocess.PIPE, text=True)
    try:
        snapshot = store.watch(1, 10.0)
        out, _ = child.communicate(timeout=10)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0 and out.strip() == "2"
    assert snapshot == Snapshot(2, {"tenants/a": {"id": 1}, "tenants/b": {"id": 2}})


def race(stores: list[Store], round_: int, expect: int) -> list[object]:
    """Each store commits at the same instant with the same expect; each one's outcome
    (the new revision, or the Conflict)."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[object] = [None] * len(stores)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = stores[i].commit({"tenants/x": {"writer": i, "round": round_},
                                            f"tenants/w{i}": {"round": round_}}, expect=expect)
        except Conflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return outcomes


def test_one_of_two_racing_commits_with_the_same_expect_wins(store: Store, url: str) -> None:
    other = open_store(url)
    try:
        for round_ in range(10):
            expect = store.read().revision
            outcomes = race([store, other], round_, expect)
            winners = [i for i, o in enumerate(outcomes) if o == expect + 1]
            losers = [i for i, o in enumerate(outcomes) if isinstance(o, Conflict)]
            assert len(winners) == 1 and len(losers) == 1, outcomes
            snapshot = store.read()
            assert snapshot.revision == expect + 1
            assert snapshot.objects["tenants/x"] == {"writer": winners[0], "round": round_}
            assert snapshot.objects[f"tenants/w{winners[0]}"] == {"round": round_}
            if round_ == 0:
                assert f"tenants/w{losers[0]}" not in snapshot.objects
    finally:
        other.close()


def test_concurrent_writers_lose_no_commit(store: Store, url: str) -> None:
    """Four writers on two stores, no expect: every commit gets its own revision."""
    other = open_store(url)
    per_writer = 25
    got: list[int] = []
    lock = threading.Lock()

    def write(i: int, s: Store) -> None:
        for n in range(per_writer):
            revision = s.commit({f"tenants/w{i}": {"n": n}})
            with lock:
                got.append(revision)

    try:
        threads = [threading.Thread(target=write, args=(i, (store, other)[i % 2]))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(got) == list(range(1, 4 * per_writer + 1))
        assert store.read() == Snapshot(4 * per_writer, {
            f"tenants/w{i}": {"n": per_writer - 1} for i in range(4)})
    finally:
        other.close()


# A writer killed with SIGKILL mid-burst.

BURST_WRITER = """
import sys
from portico.control.store import open_store
store = open_store(sys.argv[1])
n = store.read().objects.get("burst/a", {}).get("n", 0)
pad = "x" * 3000
while True:
    n += 1
    change = {f"burst/{k}": {"n": n, "k": k, "pad": pad} for k in "abc"}
    change["burst/odd"] = {"n": n} if n % 2 else None
    store.commit(change)
    print(f"ack {n}", flush=True)
"""


def burst_then_kill(url: str, acks_before_kill: int) -> list[int]:
    """Run BURST_WRITER, SIGKILL it after ``acks_before_kill`` acks (and a random
    instant more), and return every ack it printed."""
    child = subprocess.Popen([sys.executable, "-c", BURST_WRITER, url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    acks: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(acks) < acks_before_kill:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, child.stderr.read() if child.stderr else ""
            acks.append(int(line.split()[1]))
        time.sleep(random.uniform(0, 0.005))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    reader.join(10)
    while (line := lines.get_nowait()) is not None:  # acks printed before it died
        acks.append(int(line.split()[1]))
    assert child.returncode == -signal.SIGKILL
    return acks


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_during_a_burst_loses_no_acknowledged_change(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (f"sqlite:{tmp_path}/store.db" if backend == "sqlite"
           else etcd_url(request.getfixturevalue("etcd")))
    rng = random.Random(5)
    for _round in range(3):
        acks = burst_then_kill(url, rng.randrange(30, 120))
        assert acks == list(range(acks[0], acks[-1] + 1))  # acknowledged in order

        store = open_store(url)  # the restart
        try:
            snapshot = store.read()
        finally:
            store.close()
        burst = {k: v for k, v in snapshot.objects.items() if k.startswith("burst/")}
        n = burst["burst/a"]["n"]
        # Every acknowledged commit is there; at most one more got in unacknowledged.
        assert acks[-1] <= n <= acks[-1] + 1
        assert snapshot.revision == n
        # No half-changes: the commit's four keys are all of one commit.
        expected = {f"burst/{k}": {"n": n, "k": k, "pad": "x" * 3000} for k in "abc"}
        if n % 2:
            expected["burst/odd"] = {"n": n}
        assert burst == expected
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "store.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# Documents and objects.


def test_objects_of_and_document_of_are_inverses_on_the_example() -> None:
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    objects = objects_of(document)
    assert sorted(objects) == ["ports/access", "ports/uplink", "provider", "tenants/a",
                               "tenants/b"]
    assert objects["ports/access"] == {"id": 1, "mtu": 1500}
    assert objects["tenants/b"] == document["tenants"]["b"]
    assert document_of(objects) == document
    assert objects_of(document_of(objects)) == objects
    json.dumps(objects, allow_nan=False)  # plain JSON, storable as is


def test_missing_sections_and_bad_documents() -> None:
    assert objects_of({}) == {}
    assert document_of({}) == {"ports": {}, "tenants": {}}
    assert objects_of({"ports": None, "tenants": {}}) == {}
    assert document_of({"tenants/a": {"id": 1}}) == {"ports": {}, "tenants": {"a": {"id": 1}}}

    with pytest.raises(ValueError, match="unknown top-level keys: routers, zones"):
        objects_of({"ports": {}, "zones": {}, "routers": []})
    with pytest.raises(ValueError, match=r"tenants\.a\.when: date"):
        objects_of({"tenants": {"a": {"when": __import__("datetime").date(2024, 1, 1)}}})
    with pytest.raises(ValueError, match=r"ports\.p: expected an object"):
        objects_of({"ports": {"p": 3}})
    with pytest.raises(ValueError, match="tenants: expected a mapping"):
        objects_of({"tenants": ["a"]})
    with pytest.raises(ValueError, match="'switches/x': not a config object key"):
        document_of({"switches/x": {}})


def test_open_store_refuses_bad_urls() -> None:
    for bad in ["", "sqlite:", "postgres://db/x", "etcd://", "etcd://host:notaport",
                "/var/lib/portico.db"]:
        with pytest.raises(ValueError, match=re.escape(f"'{bad}'")):
            open_store(bad)


# SQLite only.


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match=re.escape(f"sqlite:{path}: {path} is not a usable store")):
        open_store(f"sqlite:{path}")


def test_sqlite_is_wal_and_synchronous_normal(tmp_path: Path) -> None:
    # NORMAL with WAL: an acknowledged commit survives kill -9 (the burst test above), not
    # power loss; the choice is argued in sqlite_store's docstring.
    store = open_store(f"sqlite:{tmp_path}/s.db")
    try:
        store.commit({"tenants/a": {"id": 1}})
        db = store._db  # type: ignore[attr-defined]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.read()


# etcd only.


def test_etcd_two_daemons_see_each_other_within_two_seconds(etcd: str) -> None:
    """Two stores on one etcd, each in a daemon-like watch loop in its own thread:
    each sees the other's commit within 2 s."""
    url = etcd_url(etcd)
    nodes = [open_store(url), open_store(url)]
    seen: list[dict[str, float]] = [{}, {}]  # node -> key -> when seen
    stop = threading.Event()

    def daemon(i: int) -> None:
        snapshot = nodes[i].read()
        while not stop.is_set():
            snapshot = nodes[i].watch(snapshot.revision, 0.2) or snapshot
            for key in snapshot.objects:
                seen[i].setdefault(key, time.monotonic())

    threads = [threading.Thread(target=daemon, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.1)
        committed = {}
        for i in range(2):
            nodes[i].commit({f"tenants/from{i}": {"id": i}})
            committed[f"tenants/from{i}"] = time.monotonic()
            time.sleep(0.05)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not all(
            f"tenants/from{1 - i}" in seen[i] for i in range(2)
        ):
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for node in nodes:
            node.close()
    for i in range(2):
        key = f"tenants/from{1 - i}"
        assert key in seen[i], f"node {i} never saw {key}"
        assert seen[i][key] - committed[key] < 2.0


def test_etcd_refuses_an_oversized_commit_whole(etcd: str) -> None:
    store = open_store(etcd_url(etcd))
    try:
        store.commit({"tenants/a": {"id": 1}})
        with pytest.raises(StoreError, match="request is too large"):
            store.commit({"tenants/a": {"id": 2}, "tenants/big": {"blob": "x" * 2_000_000}})
        assert store.read() == Snapshot(1, {"tenants/a": {"id": 1}})
    finally:
        store.close()


def test_etcd_unreachable_is_a_store_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"etcd://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(StoreError, match=re.escape(f"{url}: cannot connect")):
        open_store(url)


# The write rate (reported, not asserted: the API adds its own cost).


@pytest.mark.parametrize("backend", BACKENDS)
def test_commit_rate(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                     capsys: pytest.CaptureFixture[str]) -> None:
    url = (f"sqlite:{tmp_path}/rate.db" if backend == "sqlite"
           else etcd_url(request.getfixturevalue("etcd")))
    store = open_store(url)
    commits = 300
    try:
        started = time.perf_counter()
        for n in range(commits):
            store.commit({f"tenants/t{n % 10}": {"id": n % 10, "n": n}})
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    with capsys.disabled():
        print(f"\n{backend}: {commits / elapsed:,.0f} single-key commits/s "
              f"({elapsed / commits * 1e3:.2f} ms each)")
