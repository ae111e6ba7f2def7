"""services.naas.pools: pools of shared external addresses, and how their ports are cut.

Role. A pool is what an operator configures (``portico naas serve --pool
media=198.51.100.0/29``): a name, one or more networks of external addresses,
and a layout that cuts each address's ports into blocks. A pod is given one
*slot*: an address and one block of its ports. Several pods share an address;
no two share a block of it.

Theory of operation.

*Addresses.* A network of four addresses or more (IPv4 /30 and larger, IPv6
/126 and larger) gives its first host address to the gateway (what the pods'
default route points at, which is what ``ptp`` and ``bridge`` need) and its
other host addresses to the pods; the network and broadcast addresses are never
handed out. A /31 or /32 (/127, /128) gives all its addresses and has no
gateway: a single public address is a pool of its own.

*Layouts.* ``BlockLayout(size)`` cuts ports ``first_port..65535`` (1024 by
default, so the system ports stay out) into consecutive blocks of ``size``
ports; what is left at the top is not used. ``PsidLayout(k, a)`` (``psid``)
cuts them into the ``2^k`` port sets of RFC 7597. Either way an address holds
``layout.blocks`` blocks, numbered from 0.

*Slots.* Slot ``i`` of a pool is address ``i // blocks``, block ``i % blocks``:
counting slots in order fills one address before the next, so a pool of few
public addresses is used one address at a time.

*Fixed once stored.* The stores record each pool's spec (networks and layout)
and refuse, while it holds allocations, to open it with another one: a block
number only means ports under the layout it was given under, so a changed
layout could hand out ports that overlap an old allocation's. For the same
reason no two pools may share an address (``check_disjoint``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from portico.services.naas.names import check_pool_name
from portico.services.naas.psid import DEFAULT_OFFSET, PsidLayout

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_FIRST_PORT = 1024
MAX_ADDRESSES = 1 << 16  # per pool: the allocator keeps the addresses in memory


@dataclass(frozen=True)
class BlockLayout:
    """An address's ports ``first_port..65535`` cut into consecutive blocks of ``size``."""

    size: int
    first_port: int = DEFAULT_FIRST_PORT
    kind: ClassVar[str] = "block"

    def __post_init__(self) -> None:
        if (isinstance(self.first_port, bool) or not isinstance(self.first_port, int)
                or not 1 <= self.first_port <= 0xFFFF):
            raise ValueError(f"first_port: {self.first_port!r} is not a port (1-65535)")
        room = 0x10000 - self.first_port
        if (isinstance(self.size, bool) or not isinstance(self.size, int)
                or not 1 <= self.size <= room):
            raise ValueError(f"block_size: {self.size!r} is not a block size "
                             f"(1-{room} ports from port {self.first_port})")

    @property
    def blocks(self) -> int:
        return (0x10000 - self.first_port) // self.size

    @property
    def ports_per_block(self) -> int:
        return self.size

    def ranges(self, block: int) -> tuple[tuple[int, int], ...]:
        if not 0 <= block < self.blocks:
            raise ValueError(f"block: {block!r} is not a block of this layout "
                             f"(0-{self.blocks - 1})")
        first = self.first_port + block * self.size
        return ((first, first + self.size - 1),)

    def block_of(self, port: int) -> int | None:
        block = (port - self.first_port) // self.size
        return block if port >= self.first_port and block < self.blocks else None

    def describe(self, block: int) -> dict[str, Any]:
        first, last = self.ranges(block)[0]
        return {"kind": self.kind, "block": block, "first": first, "last": last}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "block_size": self.size, "first_port": self.first_port}


Layout = BlockLayout | PsidLayout


def layout_from_spec(spec: Mapping[str, Any]) -> Layout:
    """The layout a ``spec()`` describes. Raises ValueError naming the bad field."""
    kind = spec.get("kind")
    if kind == BlockLayout.kind:
        return BlockLayout(spec.get("block_size"),  # type: ignore[arg-type]
                           spec.get("first_port", DEFAULT_FIRST_PORT))
    if kind == PsidLayout.kind:
        return PsidLayout(spec.get("psid_length"),  # type: ignore[arg-type]
                          spec.get("psid_offset", DEFAULT_OFFSET))
    raise ValueError(f"layout.kind: {kind!r} is not a layout (block, psid)")


@dataclass(frozen=True)
class Pool:
    """Named networks of shared addresses and the layout of their ports."""

    name: str
    networks: tuple[Network, ...]
    layout: Layout
    addresses: tuple[Address, ...] = field(init=False, compare=False, repr=False)
    _index: dict[Address, int] = field(init=False, compare=False, repr=False)
    _network_of: dict[Address, Network] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_pool_name(self.name)
        if not self.networks:
            raise ValueError(f"pool {self.name}: no networks")
        for i, a in enumerate(self.networks):
            for b in self.networks[i + 1:]:
                if a.version == b.version and a.overlaps(b):
                    raise ValueError(f"pool {self.name}: networks {a} and {b} overlap")
        if sum(n.num_addresses for n in self.networks) > 4 * MAX_ADDRESSES:
            raise ValueError(f"pool {self.name}: more than {MAX_ADDRESSES} addresses")
        addresses: list[Address] = []
        network_of: dict[Address, Network] = {}
        for network in self.networks:
            hosts: list[Address] = list(network.hosts())  # type: ignore[arg-type]
            given = hosts[1:] if network.num_addresses >= 4 else hosts
            addresses += given
            network_of.update((address, network) for address in given)
        if not addresses:
            raise ValueError(f"pool {self.name}: its networks hold no address for pods")
        if len(addresses) > MAX_ADDRESSES:
            raise ValueError(f"pool {self.name}: {len(addresses)} addresses, more than "
                             f"{MAX_ADDRESSES}")
        object.__setattr__(self, "addresses", tuple(addresses))
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(addresses)})
        object.__setattr__(self, "_network_of", network_of)

    @property
    def slots(self) -> int:
        return len(self.addresses) * self.layout.blocks

    def slot(self, index: int) -> tuple[Address, int]:
        """Slot ``index``: (address, block)."""
        blocks = self.layout.blocks
        return self.addresses[index // blocks], index % blocks

    def index(self, address: Address, block: int) -> int | None:
        """The slot of (address, block), or None when the pool holds no such slot."""
        i = self._index.get(address)
        if i is None or not 0 <= block < self.layout.blocks:
            return None
        return i * self.layout.blocks + block

    def network_of(self, address: Address) -> Network:
        return self._network_of[address]

    def gateway_of(self, address: Address) -> Address | None:
        """The gateway of the address's network: its first host; None for /31, /32."""
        network = self._network_of[address]
        return network.network_address + 1 if network.num_addresses >= 4 else None

    def spec(self) -> dict[str, Any]:
        """What the stores keep, and compare when the pool is opened again."""
        return {"networks": [str(n) for n in self.networks], "layout": self.layout.spec()}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.spec(), "addresses": len(self.addresses),
                "blocks_per_address": self.layout.blocks,
                "ports_per_block": self.layout.ports_per_block, "slots": self.slots}


def pool_from_spec(name: str, spec: Mapping[str, Any]) -> Pool:
    networks = spec.get("networks")
    layout = spec.get("layout")
    if not isinstance(networks, list) or not isinstance(layout, Mapping):
        raise ValueError(f"pool {name}: a stored spec holds networks and layout, not {spec!r}")
    return Pool(name, tuple(ipaddress.ip_network(n) for n in networks), layout_from_spec(layout))


def parse_pool(text: str, layout: Layout) -> Pool:
    """``NAME=CIDR[,CIDR...]`` (the ``--pool`` option) with ``layout``.
    Raises ValueError saying what is wrong with the text."""
    name, equals, cidrs = text.partition("=")
    if not equals or not cidrs:
        raise ValueError(f"--pool: {text!r} is not NAME=CIDR[,CIDR...]")
    check_pool_name(name, "--pool")
    networks = []
    for cidr in cidrs.split(","):
        try:
            networks.append(ipaddress.ip_network(cidr.strip()))
        except ValueError as error:
            raise ValueError(f"--pool {name}: {cidr!r} is not a network ({error})") from None
    return Pool(name, tuple(networks), layout)


def check_disjoint(pools: Iterable[Pool]) -> None:
    """Raise ValueError naming two pools that share an address, or a repeated name."""
    seen: dict[str, Pool] = {}
    for pool in pools:
        if pool.name in seen:
            raise ValueError(f"pool {pool.name}: configured twice")
        for other in seen.values():
            overlap = first_overlap(pool, other)
            if overlap:
                raise ValueError(f"pools {other.name} and {pool.name} share addresses "
                                 f"({overlap[1]} and {overlap[0]})")
        seen[pool.name] = pool


def first_overlap(a: Pool, b: Pool) -> tuple[Network, Network] | None:
    for x in a.networks:
        for y in b.networks:
            if x.version == y.version and x.overlaps(y):
                return x, y
    return None
