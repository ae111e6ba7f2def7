"""services.naas.etcd_backend: allocations shared by gateway nodes in etcd (``etcd://HOST:PORT``).

Role. The allocator's cluster back-end (``allocator.Backend``): several
gateway nodes allocate from the same pools at the same time, and no two of
them ever hand out overlapping ports.

Theory of operation.

*Protocol.* etcd v3 through its HTTP/JSON gateway (``/v3/kv/range``,
``/v3/kv/txn``; keys and values base64), with httpx, the way
``portico.control.etcd_store`` talks to it; ``EtcdClient`` below is the few
calls this needs.

*Layout,* under the url's prefix (default ``/portico/naas/``)::

    pools/NAME                 the pool's spec (networks, layout), JSON
    pools-epoch                bumped by every registration: they queue on it
    slots/ADDRESS/BLOCK        one key per claimed slot; its value: the allocation's id
    allocations/OWNER-KEY      the allocation record, JSON (OWNER-KEY: CONTAINER/IF/pod...)

*A claim* is one transaction::

    if create_revision(allocations/KEY) == 0          the owner holds nothing yet
    and create_revision(slots/ADDRESS/BLOCK) == 0     nobody holds the slot
    and mod_revision(pools/NAME) == R                  the pool is the one registered
    then put slots/ADDRESS/BLOCK = id, put allocations/KEY = record
    else range allocations/KEY, range slots/ADDRESS/BLOCK, range pools/NAME

etcd applies transactions one at a time, so of two nodes claiming one slot
exactly one succeeds: that is the no-overlap guarantee, whatever the nodes
believe. The loser learns from the failure branch why it lost: the owner
already holds an allocation (idempotent ADD: that one is the answer), or the
slot is taken (marked in this node's ``FreeSlots`` hint, next slot), or the
pool was changed (an error). Each node starts its search at a random slot, so
nodes filling a pool together rarely race for the same slot; when a pool looks
full, the slot keys are read again (other nodes may have released some) before
``PoolExhausted``. etcd answers once the transaction is in the raft log on a
quorum, fsynced: an allocation a node was given survives the crash of any node.

*A release* is one transaction per allocation: if ``value(slots/ADDRESS/BLOCK)
== id``, delete the slot key and the record. The slot and the record are
created and deleted together, so a matching id means both are this
allocation's.

*Registration* reads ``pools/`` and ``pools-epoch`` together, refuses a stored
pool with another spec or one sharing an address, and creates the pool's key
in a transaction comparing ``pools-epoch``'s ``mod_revision`` with what it read
(and bumping it), so two nodes registering overlapping pools at once cannot
both succeed. Unlike the SQLite back-end, a stored pool's spec is never
replaced: a claim under the old spec could land between the check that the
pool is empty and the change.

*Errors.* An unreachable etcd, a timeout or a refused request is a
``StoreUnavailable`` naming the url. A claim whose answer is lost may have
applied: asking again for the same owner returns it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx

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

DEFAULT_PREFIX = "/portico/naas/"
DEFAULT_PORT = 2379
PAGE = 1000  # keys per range request
CONNECT_TIMEOUT = 2.0  # s
REQUEST_TIMEOUT = 10.0  # s, one range or txn
REGISTER_ATTEMPTS = 20  # registrations racing other nodes' registrations
BUSY_WAITS = 1000  # 1 ms waits for this process's own claims of a pool's last slots


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] != 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


class EtcdClient:
    """The etcd v3 JSON gateway calls the allocator needs: range and txn."""

    def __init__(self, url: str, default_prefix: str = DEFAULT_PREFIX) -> None:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = -1
        if (parts.scheme != "etcd" or not parts.hostname or port < 0 or parts.query
                or parts.fragment or parts.username is not None):
            raise ValueError(f"{url!r}: not an etcd store url (etcd://HOST:PORT[/PREFIX])")
        prefix = parts.path if parts.path not in ("", "/") else default_prefix
        self.url = url
        self.prefix = (prefix if prefix.endswith("/") else prefix + "/").encode()
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self._closed = False
        self._http = httpx.Client(base_url=f"http://{host}:{port}",
                                  timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT))

    def key(self, name: str) -> bytes:
        return self.prefix + name.encode()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except (httpx.HTTPError, RuntimeError) as exc:
            if self._closed:
                raise StoreUnavailable(f"{self.url}: the store is closed") from None
            raise StoreUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise StoreUnavailable(f"{self.url}: etcd refused {path}: "
                                   f"{response.text[:300]} (HTTP {response.status_code})")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise StoreUnavailable(f"{self.url}: {path} answered {response.text[:200]!r}")
        return answer

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]]) -> dict[str, Any]:
        return self.call("/v3/kv/txn", {"compare": compare, "success": success,
                                        "failure": failure})

    def scan(self, start: bytes, end: bytes, *, keys_only: bool = False
             ) -> list[dict[str, Any]]:
        """Every kv in [start, end), in pages pinned to the first page's revision."""
        kvs: list[dict[str, Any]] = []
        pinned = 0
        while True:
            request: dict[str, Any] = {"key": b64(start), "range_end": b64(end),
                                       "limit": str(PAGE), "keys_only": keys_only}
            if pinned:
                request["revision"] = str(pinned)
            answer = self.call("/v3/kv/range", request)
            pinned = pinned or header_revision(answer, self.url)
            page = answer.get("kvs", [])
            kvs += page
            if not answer.get("more") or not page:
                return kvs
            start = unb64(page[-1]["key"]) + b"\0"

    def close(self) -> None:
        self._closed = True
        self._http.close()


def header_revision(answer: dict[str, Any], url: str) -> int:
    try:
        return int(answer["header"]["revision"])
    except (KeyError, TypeError, ValueError):
        raise StoreUnavailable(f"{url}: answer without a revision: {answer!r:.300}") from None


def range_op(key: bytes, end: bytes | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key)}
    if end is not None:
        request["range_end"] = b64(end)
    return {"request_range": request}


def kvs_of(answer: dict[str, Any], position: int, url: str) -> list[dict[str, Any]]:
    """The kvs of the ``position``-th range in a txn's answer."""
    try:
        kvs = answer["responses"][position]["response_range"].get("kvs", [])
    except (KeyError, IndexError, TypeError, AttributeError):
        raise StoreUnavailable(f"{url}: unexpected txn answer {answer!r:.300}") from None
    return list(kvs)


def absent(key: bytes) -> dict[str, Any]:
    """The compare "``key`` does not exist" (its create_revision is 0)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


class EtcdBackend:
    """Allocations in the etcd ``url`` names (``etcd://HOST:PORT[/PREFIX]``).
    ``seed`` makes the random search start reproducible (tests)."""

    def __init__(self, url: str, *, seed: int | None = None) -> None:
        self.client = EtcdClient(url)
        self.url = url
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # guards the hints below
        self._pools: dict[str, Pool] = {}
        self._pool_revision: dict[str, int] = {}  # mod_revision of pools/NAME as registered
        self._free: dict[str, FreeSlots] = {}
        self._busy: dict[str, set[int]] = {}  # slots this process's threads are claiming
        try:
            self.client.call("/v3/kv/range", {"key": b64(self.client.key("pools-epoch"))})
        except BaseException:
            self.client.close()
            raise

    def __repr__(self) -> str:
        return f"EtcdBackend({self.url!r})"

    # ------------------------------------------------------------ pools
    def register(self, pool: Pool) -> None:
        client = self.client
        pool_key, epoch_key = client.key(f"pools/{pool.name}"), client.key("pools-epoch")
        pools_prefix = client.key("pools/")
        mine = json.dumps(pool.spec(), sort_keys=True, separators=(",", ":"))
        for _ in range(REGISTER_ATTEMPTS):
            read = client.txn([], [range_op(pools_prefix, prefix_end(pools_prefix)),
                                   range_op(epoch_key)], [])
            stored = {unb64(kv["key"])[len(pools_prefix):].decode(): kv
                      for kv in kvs_of(read, 0, self.url)}
            epoch = kvs_of(read, 1, self.url)
            for name, kv in stored.items():
                if name == pool.name:
                    continue
                try:
                    other = pool_from_spec(name, json.loads(unb64(kv["value"])))
                except ValueError as error:
                    raise PoolMismatch(f"{self.url}: stored pool {name} is unreadable "
                                       f"({error})") from None
                overlap = first_overlap(pool, other)
                if overlap:
                    raise PoolMismatch(f"{self.url}: pool {pool.name} ({overlap[0]}) shares "
                                       f"addresses with the stored pool {name} ({overlap[1]})")
            if pool.name in stored:
                kv = stored[pool.name]
                text = unb64(kv["value"]).decode()
                if json.loads(text) != pool.spec():
                    raise PoolMismatch(
                        f"{self.url}: pool {pool.name} is stored as {text}, not {mine}; on "
                        "etcd a pool's spec is fixed once stored (name the new pool otherwise)")
                revision = int(kv["mod_revision"])
                break
            epoch_revision = int(epoch[0]["mod_revision"]) if epoch else 0
            answer = client.txn(
                [{"key": b64(epoch_key), "target": "MOD", "result": "EQUAL",
                  "mod_revision": str(epoch_revision)}, absent(pool_key)],
                [{"request_put": {"key": b64(pool_key), "value": b64(mine)}},
                 {"request_put": {"key": b64(epoch_key), "value": b64(pool.name)}}], [])
            if answer.get("succeeded"):
                revision = header_revision(answer, self.url)
                break
        else:
            raise StoreUnavailable(f"{self.url}: pool {pool.name}: registration lost "
                                   f"{REGISTER_ATTEMPTS} races in a row")
        free = FreeSlots(pool, start=self._random.randrange(pool.slots))
        free.reset(self._read_taken(pool))
        with self._lock:
            self._pools[pool.name] = pool
            self._pool_revision[pool.name] = revision
            self._free[pool.name] = free
            self._busy[pool.name] = set()

    # ------------------------------------------------------------ claims
    def claim(self, pool: Pool, owner: Owner) -> tuple[Allocation, bool]:
        with self._lock:
            free = self._free.get(pool.name)
            if free is None or self._pools[pool.name] != pool:
                raise PoolMismatch(f"{self.url}: pool {pool.name} is not registered here")
            busy = self._busy[pool.name]
            revision = self._pool_revision[pool.name]
        client = self.client
        owner_key = client.key(f"allocations/{owner.key}")
        pool_key = client.key(f"pools/{pool.name}")
        reread = False
        waits = 0
        # Each lost race marks one more slot taken, and a re-read happens once: bounded.
        for _ in range(pool.slots + 2 + BUSY_WAITS):
            with self._lock:
                index = free.next_free(busy)
                if index is not None:
                    busy.add(index)
                others_claiming = bool(busy)
            if index is None and others_claiming and waits < BUSY_WAITS:
                # The last free slots are being claimed by this process's other threads:
                # their claims may yet fail (an ADD repeated), so wait for them to settle.
                waits += 1
                time.sleep(0.001)
                continue
            if index is None:
                if not reread:
                    taken = self._read_taken(pool)
                    with self._lock:
                        free.reset(taken)
                    reread = True
                    continue
                existing = self._get(owner_key)
                if existing is not None:
                    return self._existing(existing, pool), False
                raise PoolExhausted(pool)
            allocation = new_allocation(pool, owner, index)
            slot_key = self._slot_key(allocation)
            try:
                answer = client.txn(
                    [absent(owner_key), absent(slot_key),
                     {"key": b64(pool_key), "target": "MOD", "result": "EQUAL",
                      "mod_revision": str(revision)}],
                    [{"request_put": {"key": b64(slot_key), "value": b64(allocation.id)}},
                     {"request_put": {"key": b64(owner_key),
                                      "value": b64(json.dumps(allocation.to_record()))}}],
                    [range_op(owner_key), range_op(slot_key), range_op(pool_key)])
            finally:
                with self._lock:
                    busy.discard(index)
            if answer.get("succeeded"):
                with self._lock:
                    free.mark(index)
                return allocation, True
            held = kvs_of(answer, 0, self.url)
            if held:
                return self._existing(self._decode(held[0]), pool), False
            pool_now = kvs_of(answer, 2, self.url)
            if not pool_now or int(pool_now[0]["mod_revision"]) != revision:
                raise PoolMismatch(f"{self.url}: pool {pool.name} was changed in the store")
            with self._lock:
                free.mark(index)  # another node holds it: the compare said so
        raise StoreUnavailable(f"{self.url}: pool {pool.name}: no claim settled in "
                               f"{pool.slots + 2 + BUSY_WAITS} tries")

    def _existing(self, existing: Allocation, pool: Pool) -> Allocation:
        if existing.pool != pool.name:
            raise OwnerConflict(existing, pool.name)
        return existing

    # ------------------------------------------------------------ reads, releases
    def allocations(self, *, prefix: str = "", pool: str | None = None) -> list[Allocation]:
        start = self.client.key(f"allocations/{prefix}")
        found = [self._decode(kv) for kv in self.client.scan(start, prefix_end(start))]
        return [a for a in found if pool is None or a.pool == pool]

    def remove(self, allocations: Sequence[Allocation]) -> list[Allocation]:
        removed = []
        for allocation in allocations:
            slot_key = self._slot_key(allocation)
            answer = self.client.txn(
                [{"key": b64(slot_key), "target": "VALUE", "result": "EQUAL",
                  "value": b64(allocation.id)}],
                [{"request_delete_range": {"key": b64(slot_key)}},
                 {"request_delete_range": {
                     "key": b64(self.client.key(f"allocations/{allocation.key}"))}}], [])
            if answer.get("succeeded"):
                removed.append(allocation)
                with self._lock:
                    pool = self._pools.get(allocation.pool)
                    index = None if pool is None else pool.index(allocation.address,
                                                                 allocation.block)
                    if index is not None:
                        self._free[allocation.pool].unmark(index)
        return removed

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ helpers
    def _slot_key(self, allocation: Allocation) -> bytes:
        return self.client.key(f"slots/{allocation.address}/{allocation.block}")

    def _read_taken(self, pool: Pool) -> list[int]:
        start = self.client.key("slots/")
        taken = []
        for kv in self.client.scan(start, prefix_end(start), keys_only=True):
            address, _, block = unb64(kv["key"])[len(start):].decode().rpartition("/")
            try:
                index = pool.index(ipaddress.ip_address(address), int(block))
            except ValueError:
                continue  # not a slot key of ours
            if index is not None:
                taken.append(index)
        return taken

    def _get(self, key: bytes) -> Allocation | None:
        kvs = self.client.call("/v3/kv/range", {"key": b64(key)}).get("kvs", [])
        return self._decode(kvs[0]) if kvs else None

    def _decode(self, kv: dict[str, Any]) -> Allocation:
        try:
            return Allocation.from_record(json.loads(unb64(kv.get("value", ""))))
        except ValueError as error:
            raise StoreUnavailable(f"{self.url}: corrupt allocation at "
                                   f"{unb64(kv.get('key', '')).decode(errors='replace')} "
                                   f"({error})") from None
