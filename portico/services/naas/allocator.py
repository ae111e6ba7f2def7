"""services.naas.allocator: shared external addresses and port blocks for pods.

Role. Networking as a Service gives each pod an external address, which it
may share with other pods, and a block of that address's ports of its own
(issue 7; the motivating use is media relays, many pods behind few public
addresses, each needing a predictable block of ports). ``Allocator`` is that
service's core: the CNI plugin (``naas.cni``) reaches it through the daemon's
Unix socket (``naas.server``), the gateway will read its allocations to
rewrite addresses and ports between the outside and the pods.

Theory of operation.

*Who holds what.* An allocation is held by an *owner*: a pod's attachment
(container ID and interface, as CNI names it; the namespace and name ride
along for people), either for the pod's lifetime or for one session of it
(``session=ID``: a call, a stream). Its key is ``CONTAINER/INTERFACE/pod`` or
``CONTAINER/INTERFACE/session/ID``, so a container's (or an attachment's)
allocations are one key prefix, and ``release`` of a container or attachment
takes its sessions with it. Asking again for a key that holds an allocation
returns that allocation (an idempotent ADD), from any node; asking for it in
another pool is a conflict.

*Slots and overlap.* Each pool's slots (address, block) are numbered
(``pools.Pool``); an allocation claims one. Two allocations never overlap
because a slot is claimed by an atomic create in the store, which refuses a
slot that exists: a UNIQUE (address, block) constraint on SQLite, a
transaction comparing the slot key's ``create_revision`` with 0 on etcd. The
store is the truth; each process also keeps which slots it believes taken
(``FreeSlots``) so that it rarely asks for a taken one. That belief is only a
hint: a claim that loses is marked taken and the next slot tried, and a pool
that looks full is read again from the store before ``PoolExhausted`` is
raised, so slots other nodes released are found.

*Release.* An allocation carries a random ``id``; releasing removes its slot
and record together only if they still hold that id, so a release racing a
new claim of the same key (or the same slot) never removes the newcomer.
``gc`` releases the allocations of a pool (and CNI network) whose container or
attachment is not in the list of valid ones (CNI's GC).

*Errors.* ``InvalidRequest`` (a ValueError) names the bad field;
``PoolExhausted`` names the pool and its size; ``OwnerConflict`` when an owner
already holds an allocation in another pool; ``PoolMismatch`` when the store
holds the pool with another spec or another pool shares its addresses;
``StoreUnavailable`` when the store cannot be reached.

Example::

    pools = [parse_pool("media=198.51.100.0/29", BlockLayout(1024))]
    allocator = open_allocator("sqlite:/var/lib/portico/naas.db", pools)
    allocation, created = allocator.allocate(pool="media", container_id="c1",
                                             namespace="voice", name="relay-0")
    allocation.address, allocation.ranges      # 198.51.100.2, ((1024, 2047),)
    allocator.release("c1")
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from portico.services.naas.names import (
    check_container_id,
    check_interface,
    check_label,
    check_pool_name,
    check_session,
)
from portico.services.naas.pools import (
    Address,
    Layout,
    Pool,
    check_disjoint,
    layout_from_spec,
)

DEFAULT_INTERFACE = "eth0"


# ---------------------------------------------------------------- errors
class NaasError(Exception):
    """Anything the allocator refuses."""


class InvalidRequest(NaasError, ValueError):
    """Bad input; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PoolExhausted(NaasError):
    def __init__(self, pool: Pool) -> None:
        super().__init__(
            f"pool {pool.name} is exhausted: all {pool.slots} slots "
            f"({len(pool.addresses)} addresses x {pool.layout.blocks} blocks of "
            f"{pool.layout.ports_per_block} ports) are allocated")
        self.pool = pool.name
        self.slots = pool.slots


class OwnerConflict(NaasError):
    """The owner already holds an allocation, in another pool."""

    def __init__(self, existing: Allocation, pool: str) -> None:
        super().__init__(f"{existing.owner.describe()} already holds {existing.address} "
                         f"ports {existing.ports_text()} in pool {existing.pool}, not {pool}")
        self.existing = existing


class PoolMismatch(NaasError):
    """The store holds the pool with another spec, or a pool sharing its addresses."""


class StoreUnavailable(NaasError):
    """The store cannot be reached or refused a request."""


# ---------------------------------------------------------------- owners, allocations
@dataclass(frozen=True, kw_only=True)
class Owner:
    """Who holds an allocation: a pod's attachment, for its lifetime or one session."""

    container_id: str
    interface: str = DEFAULT_INTERFACE
    session: str | None = None  # None: held for the pod's lifetime
    namespace: str = ""
    name: str = ""
    network: str = ""  # the CNI network (config name) that asked, for its GC

    def __post_init__(self) -> None:
        try:
            check_container_id(self.container_id)
            check_interface(self.interface)
            if self.session is not None:
                check_session(self.session)
            check_label(self.namespace, "namespace")
            check_label(self.name, "name")
            check_label(self.network, "network")
        except ValueError as error:
            raise InvalidRequest(str(error).split(":")[0], str(error)) from None

    @property
    def key(self) -> str:
        return attachment_prefix(self.container_id, self.interface) + (
            "pod" if self.session is None else f"session/{self.session}")

    def describe(self) -> str:
        pod = f" (pod {self.namespace}/{self.name})" if self.name else ""
        what = f"session {self.session} of " if self.session is not None else ""
        return f"{what}container {self.container_id} interface {self.interface}{pod}"


def container_prefix(container_id: str) -> str:
    return f"{container_id}/"


def attachment_prefix(container_id: str, interface: str) -> str:
    return f"{container_id}/{interface}/"


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """An address and a block of its ports, held by an owner."""

    id: str  # random; a release removes the allocation only if it still has this id
    pool: str
    owner: Owner
    address: Address
    prefix_length: int  # of the address's network, as the pod's interface gets it
    gateway: Address | None
    block: int
    layout: Layout
    created: float  # Unix time

    @property
    def key(self) -> str:
        return self.owner.key

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The ports, as runs (first, last), both included."""
        return self.layout.ranges(self.block)

    def ports_text(self) -> str:
        runs = self.ranges
        if len(runs) == 1:
            return f"{runs[0][0]}-{runs[0][1]}"
        return (f"PSID {self.block} ({len(runs)} runs of {runs[0][1] - runs[0][0] + 1}, "
                f"{runs[0][0]}-{runs[0][1]} ... {runs[-1][0]}-{runs[-1][1]})")

    def ports(self) -> dict[str, Any]:
        """The port block as the API and the CNI result give it."""
        return {**self.layout.describe(self.block), "count": self.layout.ports_per_block,
                "ranges": [list(run) for run in self.ranges]}

    def to_record(self) -> dict[str, Any]:
        """The allocation as the stores keep it (plain JSON; ``from_record`` reads it)."""
        owner = self.owner
        return {"id": self.id, "pool": self.pool, "container_id": owner.container_id,
                "interface": owner.interface, "session": owner.session,
                "namespace": owner.namespace, "name": owner.name, "network": owner.network,
                "address": str(self.address), "prefix_length": self.prefix_length,
                "gateway": None if self.gateway is None else str(self.gateway),
                "block": self.block, "layout": self.layout.spec(), "created": self.created}

    def to_json(self) -> dict[str, Any]:
        """The allocation as the API answers it: the record, its key and its ports."""
        return {**self.to_record(), "key": self.key, "ports": self.ports()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Allocation:
        try:
            gateway = record.get("gateway")
            return cls(
                id=record["id"], pool=record["pool"],
                owner=Owner(container_id=record["container_id"],
                            interface=record["interface"], session=record.get("session"),
                            namespace=record.get("namespace", ""),
                            name=record.get("name", ""), network=record.get("network", "")),
                address=ipaddress.ip_address(record["address"]),
                prefix_length=int(record["prefix_length"]),
                gateway=None if gateway is None else ipaddress.ip_address(gateway),
                block=int(record["block"]), layout=layout_from_spec(record["layout"]),
                created=float(record["created"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not an allocation record ({error!r}): {record!r:.300}") from None


def new_allocation(pool: Pool, owner: Owner, index: int) -> Allocation:
    """The allocation of slot ``index`` of ``pool`` to ``owner`` (not yet stored)."""
    address, block = pool.slot(index)
    return Allocation(id=secrets.token_hex(8), pool=pool.name, owner=owner, address=address,
                      prefix_length=pool.network_of(address).prefixlen,
                      gateway=pool.gateway_of(address), block=block, layout=pool.layout,
                      created=round(time.time(), 3))


# ---------------------------------------------------------------- this process's hint
class FreeSlots:
    """Which slots of one pool this process believes taken: a hint, the store decides.

    ``next_free`` goes round the slots from where the last search stopped (next
    fit), skipping the taken ones, so a search costs one step per taken slot it
    passes, and a pool filled in order costs one step per allocation.
    """

    def __init__(self, pool: Pool, start: int = 0) -> None:
        self.pool = pool
        self.taken: set[int] = set()
        self.cursor = start % pool.slots

    def reset(self, taken: Iterable[int]) -> None:
        self.taken = set(taken)

    def mark(self, index: int) -> None:
        self.taken.add(index)

    def unmark(self, index: int) -> None:
        self.taken.discard(index)

    def next_free(self, busy: Collection[int] = ()) -> int | None:
        """A slot neither taken nor ``busy`` (being claimed by another thread), or None."""
        slots = self.pool.slots
        if len(self.taken) + len(busy) >= slots:
            return None
        index = self.cursor
        for _ in range(slots):
            if index not in self.taken and index not in busy:
                self.cursor = (index + 1) % slots
                return index
            index = (index + 1) % slots
        return None


# ---------------------------------------------------------------- back-ends
class Backend(Protocol):
    """Where allocations live; ``sqlite_backend`` and ``etcd_backend``."""

    url: str

    def register(self, pool: Pool) -> None:
        """Store the pool's spec, or check the stored one: PoolMismatch when it differs
        (and the pool holds allocations) or another stored pool shares its addresses."""
        ...

    def claim(self, pool: Pool, owner: Owner) -> tuple[Allocation, bool]:
        """The owner's allocation: the one it holds (False), or a free slot claimed
        atomically with the owner's key (True). PoolExhausted, OwnerConflict."""
        ...

    def allocations(self, *, prefix: str = "", pool: str | None = None) -> list[Allocation]:
        """The allocations whose key starts with ``prefix``, of one pool or all."""
        ...

    def remove(self, allocations: Sequence[Allocation]) -> list[Allocation]:
        """Remove each allocation still held under its id; the ones removed."""
        ...

    def close(self) -> None:
        ...


def open_backend(url: str, *, seed: int | None = None) -> Backend:
    """``sqlite:PATH`` or ``etcd://HOST:PORT[/PREFIX]``; ValueError for anything else."""
    if url.startswith("sqlite:"):
        from portico.services.naas.sqlite_backend import SqliteBackend

        return SqliteBackend(url)
    if url.startswith("etcd://"):
        from portico.services.naas.etcd_backend import EtcdBackend

        return EtcdBackend(url, seed=seed)
    raise ValueError(f"{url!r}: not a store url (sqlite:PATH or etcd://HOST:PORT[/PREFIX])")


# ---------------------------------------------------------------- the allocator
class Allocator:
    """Pools of shared addresses over one back-end. Safe to share between threads."""

    def __init__(self, backend: Backend, pools: Sequence[Pool]) -> None:
        if not pools:
            raise ValueError("an allocator needs at least one pool")
        check_disjoint(pools)
        self.backend = backend
        self.pools = {pool.name: pool for pool in pools}
        for pool in pools:
            backend.register(pool)

    @property
    def url(self) -> str:
        return self.backend.url

    def pool(self, name: str | None) -> Pool:
        """The pool named ``name``; the first configured one for None."""
        if name is None:
            return next(iter(self.pools.values()))
        try:
            check_pool_name(name)
        except ValueError as error:
            raise InvalidRequest("pool", str(error)) from None
        pool = self.pools.get(name)
        if pool is None:
            raise InvalidRequest("pool", f"pool: no pool {name!r} (pools: "
                                         f"{', '.join(self.pools)})")
        return pool

    def allocate(self, *, pool: str | None = None, container_id: str,
                 interface: str = DEFAULT_INTERFACE, session: str | None = None,
                 namespace: str = "", name: str = "", network: str = ""
                 ) -> tuple[Allocation, bool]:
        """The owner's allocation and whether it is new (False: it held one already)."""
        owner = Owner(container_id=container_id, interface=interface, session=session,
                      namespace=namespace, name=name, network=network)
        return self.backend.claim(self.pool(pool), owner)

    def get(self, container_id: str, interface: str = DEFAULT_INTERFACE,
            session: str | None = None) -> Allocation | None:
        key = Owner(container_id=container_id, interface=interface, session=session).key
        found = [a for a in self.backend.allocations(prefix=key) if a.key == key]
        return found[0] if found else None

    def allocations(self, *, pool: str | None = None, container_id: str | None = None,
                    interface: str | None = None) -> list[Allocation]:
        """Every allocation, or those of one pool, container or attachment."""
        if pool is not None:
            self.pool(pool)
        return self.backend.allocations(prefix=self._prefix(container_id, interface),
                                        pool=pool)

    def release(self, container_id: str, *, interface: str | None = None,
                session: str | None = None) -> list[Allocation]:
        """Release a container's allocations (all, one attachment's with its sessions, or
        one session's); the ones released. Releasing nothing is no error (CNI DEL)."""
        if session is not None:
            key = Owner(container_id=container_id, interface=interface or DEFAULT_INTERFACE,
                        session=session).key
            held = [a for a in self.backend.allocations(prefix=key) if a.key == key]
        else:
            held = self.backend.allocations(prefix=self._prefix(container_id, interface))
        return self.backend.remove(held) if held else []

    def gc(self, *, pool: str | None, network: str | None = None,
           valid_containers: Collection[str] = (),
           valid_attachments: Collection[tuple[str, str]] = ()) -> list[Allocation]:
        """Release the allocations of ``pool`` (the first one for None; and of CNI
        ``network``, when given) whose container is not in ``valid_containers`` and whose
        (container, interface) is not in ``valid_attachments``; the ones released."""
        name = self.pool(pool).name
        stale = [a for a in self.backend.allocations(pool=name)
                 if (network is None or a.owner.network == network)
                 and a.owner.container_id not in valid_containers
                 and (a.owner.container_id, a.owner.interface) not in valid_attachments]
        return self.backend.remove(stale) if stale else []

    def usage(self) -> dict[str, dict[str, Any]]:
        """Each pool: its shape, and how many slots are allocated."""
        used: dict[str, int] = {name: 0 for name in self.pools}
        for allocation in self.backend.allocations():
            if allocation.pool in used:
                used[allocation.pool] += 1
        return {name: {**pool.describe(), "allocated": used[name],
                       "free": pool.slots - used[name]}
                for name, pool in self.pools.items()}

    def close(self) -> None:
        self.backend.close()

    def _prefix(self, container_id: str | None, interface: str | None) -> str:
        if container_id is None:
            if interface is not None:
                raise InvalidRequest("container_id", "container_id: needed with interface")
            return ""
        try:
            check_container_id(container_id)
            if interface is not None:
                check_interface(interface)
        except ValueError as error:
            raise InvalidRequest(str(error).split(":")[0], str(error)) from None
        if interface is None:
            return container_prefix(container_id)
        return attachment_prefix(container_id, interface)


def open_allocator(url: str, pools: Sequence[Pool], *, seed: int | None = None) -> Allocator:
    """An allocator over the store at ``url`` with ``pools`` registered in it."""
    backend = open_backend(url, seed=seed)
    try:
        return Allocator(backend, pools)
    except BaseException:
        backend.close()
        raise
