"""control.etcd_store: the shared store, in etcd v3 (``etcd://HOST:PORT[/PREFIX]``).

Role. The ``Store`` (contract in ``portico.control.store``) for several gateway
nodes that share one desired state: each node's daemon watches the same keys,
and any node's API may commit.

Theory of operation.

*Protocol.* etcd v3 through its HTTP/JSON gateway (``/v3/kv/range``,
``/v3/kv/txn``, ``/v3/watch``; keys and values base64), with httpx: no etcd
client library, nothing generated from protobufs.

*Layout.* Under the url's prefix (default ``/portico/``) each object is one key
(``/portico/tenants/a`` holds tenant a's JSON) and ``/portico/revision`` holds
the store's revision as decimal text (absent: revision 0). etcd has a revision
of its own (global, bumped by every write to any key); the store's revision
counts only Portico's commits under this prefix, so it is the same number on
either back-end. A store's commits from threads of one process queue on a lock
(racing each other would only cost retries); across processes and nodes the
transaction's compare decides. Prefixes of two stores must not nest.

*A commit* is one etcd transaction::

    if value(/portico/revision) == r          (for r = 0: the key does not exist)
    then put/delete every changed key, put /portico/revision = r + 1
    else range /portico/revision               (the current value, for the retry)

With ``expect`` the guess ``r`` is ``expect`` and a failed compare is a
``Conflict``. Without it the guess is the last revision this store saw; a failed
compare returns the current revision, and the commit retries with it, so a
commit normally costs one round trip, and after losing a race two. etcd answers
only once the transaction is in the raft log on a quorum, fsynced: durable when
it returns. etcd's defaults bound one transaction: ``--max-txn-ops`` (128
operations, so at most 127 keys per commit) and ``--max-request-bytes``
(1.5 MiB); beyond them etcd refuses the commit whole (StoreError) and writes
nothing.

*A read* is one range over the prefix, in pages of ``PAGE`` keys all pinned to
the etcd revision of the first page's header, so objects and the revision key
come from one point in etcd's history: a snapshot never holds part of a commit.
A key whose value is the one it had at the last read is not decoded again (the
snapshot holds the same object), so a read after a one-tenant change decodes that
tenant only.

*A watch* reads; if the store is not yet past ``after``, it opens a ``/v3/watch``
stream on the revision key starting just after the read's etcd revision (so no
commit can slip between the read and the watch) and blocks on it until an event
arrives or the time runs out; an event means a commit, and the snapshot is read
again. ``wait`` is the same with the revision key alone read, never the objects.
Each call opens its own stream and closes it on return.

*Errors.* An unreachable etcd, a timeout or a refused request is a
``StoreError`` naming the url. A commit whose answer is lost (a timeout after
sending) may or may not have applied: read to find out.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from portico.control.store import Conflict, Snapshot, StoreError, Value, encode_changes

DEFAULT_PREFIX = "/portico/"
DEFAULT_PORT = 2379
PAGE = 1000  # keys per range request while reading
CONNECT_TIMEOUT = 2.0  # s
REQUEST_TIMEOUT = 10.0  # s, for one range or txn
RACE_TIMEOUT = 10.0  # s a commit without expect keeps retrying lost races
READ_ATTEMPTS = 3  # a paged read restarts when its pinned revision is compacted away


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] != 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"  # all keys


class EtcdStore:
    """The store in the etcd named by ``url`` (``etcd://HOST:PORT[/PREFIX]``).
    Connects at once: StoreError when etcd does not answer."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = -1
        if (
            parts.scheme != "etcd"
            or not parts.hostname
            or port < 0
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(f"{url!r}: not an etcd store url (etcd://HOST:PORT[/PREFIX])")
        prefix = parts.path if parts.path not in ("", "/") else DEFAULT_PREFIX
        if not prefix.endswith("/"):
            prefix += "/"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.url = url
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._revision_key = self._prefix + b"revision"
        self._closed = False
        self._commit_lock = threading.Lock()  # this process's commits queue, not race
        self._decoded: dict[str, tuple[str, dict]] = {}  # name -> (base64 value, object)
        self._http = httpx.Client(
            base_url=f"http://{host}:{port}",
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        try:
            self._last_revision = self._current_revision()  # the first guess of a commit
        except BaseException:
            self._http.close()
            raise

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r})"

    # The contract.

    def read(self) -> Snapshot:
        return self._read()[0]

    def commit(self, changes: Mapping[str, Value | None], *,
               expect: int | None = None) -> int:
        encoded = encode_changes(self.url, changes)
        if not encoded:
            current = self._current_revision()
            if expect is not None and expect != current:
                raise Conflict(self.url, expect, current)
            return current
        ops: list[dict[str, Any]] = []
        for key, text in encoded.items():
            etcd_key = _b64(self._prefix + key.encode())
            if text is None:
                ops.append({"request_delete_range": {"key": etcd_key}})
            else:
                ops.append({"request_put": {"key": etcd_key, "value": _b64(text.encode())}})
        with self._commit_lock:
            return self._commit(ops, expect)

    def _commit(self, ops: list[dict[str, Any]], expect: int | None) -> int:
        revision_key = _b64(self._revision_key)
        guess = expect if expect is not None else self._last_revision
        give_up = time.monotonic() + RACE_TIMEOUT
        while True:
            if guess == 0:
                compare = {"key": revision_key, "target": "VERSION", "result": "EQUAL",
                           "version": "0"}
            else:
                compare = {"key": revision_key, "target": "VALUE", "result": "EQUAL",
                           "value": _b64(str(guess).encode())}
            bump = {"request_put": {"key": revision_key, "value": _b64(str(guess + 1).encode())}}
            answer = self._call("/v3/kv/txn", {
                "compare": [compare],
                "success": [*ops, bump],
                "failure": [{"request_range": {"key": revision_key}}],
            })
            if answer.get("succeeded"):
                self._last_revision = guess + 1
                return guess + 1
            try:
                kvs = answer["responses"][0]["response_range"].get("kvs", [])
            except (KeyError, IndexError, TypeError):
                raise StoreError(f"{self.url}: unexpected txn answer {answer!r}") from None
            current = self._revision_value(kvs[0]) if kvs else 0
            self._last_revision = current
            if expect is not None:
                raise Conflict(self.url, expect, current)
            if time.monotonic() > give_up:
                raise StoreError(f"{self.url}: commit lost every race for {RACE_TIMEOUT} s")
            guess = current

    def watch(self, after: int, timeout: float) -> Snapshot | None:
        deadline = time.monotonic() + timeout
        while True:
            snapshot, etcd_revision = self._read()
            if snapshot.revision > after:
                return snapshot
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wait_for_commit(etcd_revision + 1, remaining):
                return None

    def wait(self, after: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            revision, etcd_revision = self._current_revision_at()
            if revision > after:
                return revision
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wait_for_commit(etcd_revision + 1, remaining):
                return None

    def close(self) -> None:
        self._closed = True
        self._http.close()

    # etcd.

    def _read(self) -> tuple[Snapshot, int]:
        """The snapshot and the etcd revision it was read at."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._read_pinned()
            except StoreError as exc:
                if "compacted" not in str(exc) or attempt == READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _read_pinned(self) -> tuple[Snapshot, int]:
        start, end = self._prefix, _prefix_end(self._prefix)
        pinned = 0
        revision = 0
        objects: dict[str, dict] = {}
        before = self._decoded
        decoded: dict[str, tuple[str, dict]] = {}
        while True:
            request: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end),
                                       "limit": str(PAGE)}
            if pinned:
                request["revision"] = str(pinned)
            answer = self._call("/v3/kv/range", request)
            if not pinned:
                pinned = self._header_revision(answer)
            kvs = answer.get("kvs", [])
            for kv in kvs:
                key = _unb64(kv["key"])
                if key == self._revision_key:
                    revision = self._revision_value(kv)
                    continue
                name = key[len(self._prefix):].decode("utf-8", "replace")
                text = kv.get("value", "")
                last = before.get(name)
                if last is not None and last[0] == text:
                    objects[name] = last[1]
                else:
                    try:
                        objects[name] = json.loads(_unb64(text))
                    except ValueError as exc:
                        raise StoreError(
                            f"{self.url}: the value of {name!r} is corrupt ({exc})"
                        ) from None
                decoded[name] = (text, objects[name])
            if not answer.get("more") or not kvs:
                self._decoded = decoded  # racing readers leave either's: both are right
                return Snapshot(revision, objects), pinned
            start = _unb64(kvs[-1]["key"]) + b"\0"

    def _current_revision(self) -> int:
        return self._current_revision_at()[0]

    def _current_revision_at(self) -> tuple[int, int]:
        """The store's revision and the etcd revision it was read at."""
        answer = self._call("/v3/kv/range", {"key": _b64(self._revision_key)})
        kvs = answer.get("kvs", [])
        return (self._revision_value(kvs[0]) if kvs else 0), self._header_revision(answer)

    def _wait_for_commit(self, start_revision: int, timeout: float) -> bool:
        """Block until the revision key changes at or after etcd revision
        ``start_revision`` (True) or ``timeout`` passes (False)."""
        request = {"create_request": {"key": _b64(self._revision_key),
                                      "start_revision": str(start_revision)}}
        try:
            with self._http.stream(
                "POST", "/v3/watch", json=request,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise StoreError(f"{self.url}: etcd refused a watch: {_message(response)}")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise StoreError(f"{self.url}: watch failed: {message['error']}")
                    result = message.get("result", {})
                    # Events are commits; a cancelled or compacted watch: read again.
                    if result.get("events") or result.get("canceled") or (
                        result.get("compact_revision")
                    ):
                        return True
            return True  # the stream ended: read again
        except httpx.TimeoutException:
            if self._closed:
                raise StoreError(f"{self.url}: the store is closed") from None
            return False
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            raise self._error(exc) from None

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except (httpx.HTTPError, RuntimeError) as exc:
            raise self._error(exc) from None
        if response.status_code != 200:
            raise StoreError(f"{self.url}: etcd refused {path}: {_message(response)}")
        try:
            answer = response.json()
        except ValueError:
            raise StoreError(f"{self.url}: {path} answered {response.text[:200]!r}") from None
        if not isinstance(answer, dict):
            raise StoreError(f"{self.url}: {path} answered {answer!r}")
        return answer

    def _error(self, exc: Exception) -> StoreError:
        if self._closed:
            return StoreError(f"{self.url}: the store is closed")
        if isinstance(exc, httpx.ConnectError):
            return StoreError(f"{self.url}: cannot connect ({exc})")
        if isinstance(exc, httpx.TimeoutException):
            return StoreError(f"{self.url}: no answer in time ({type(exc).__name__})")
        return StoreError(f"{self.url}: {type(exc).__name__}: {exc}")

    def _header_revision(self, answer: dict[str, Any]) -> int:
        try:
            return int(answer["header"]["revision"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"{self.url}: answer without a revision: {answer!r}") from None

    def _revision_value(self, kv: dict[str, Any]) -> int:
        try:
            return int(_unb64(kv.get("value", "")))
        except ValueError:
            raise StoreError(
                f"{self.url}: {self._revision_key.decode()} is not a revision "
                f"({kv.get('value')!r})"
            ) from None


def _message(response: httpx.Response) -> str:
    try:
        answer = response.json()
        text = answer.get("message") or answer.get("error") or response.text
    except (ValueError, AttributeError):
        text = response.text
    return f"{str(text)[:300]} (HTTP {response.status_code})"
