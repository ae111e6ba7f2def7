"""routing: a config's routers compiled into per-domain route tables, looked up per batch.

Role. Every router of the config is a *routing domain*: the provider router
(domain of tenant 0) and one per tenant router, numbered by tenant id (tenants
reuse addresses, so a lookup always names its domain). ``compile_routing``
turns the routers' interfaces, static routes and NAT addresses into one table
of route records (``ROUTE_DTYPE``) plus, per domain, an IPv4 and an IPv6
longest-prefix-match table (``portico.classify.lpm4``/``lpm6``) whose values
index that table. The route stage (``stages/route.py``) asks
``lookup(domains, ...)`` for a whole selection of rows at once and acts on
the records' ``kind``.

Theory of operation. A record says what a destination is, for its router:

===========  ==============================================================
kind         meaning
===========  ==============================================================
CONNECTED    on the subnet of one of the router's interfaces: the next hop
             is the destination itself, on that interface's segment
VIA          a static route: the next hop is ``via``, on the segment of the
             interface whose subnet holds it (the model checked it is on one)
LOCAL        one of the router's own addresses (the packet is for the router)
PROVIDER     tenant domains only: everything the tenant's own routes do not
             cover leaves towards the provider, through the tenant router's
             centralized part (firewall, then NAT)
TENANT       provider domain only: a tenant's public address (its SNAT pool
             and DNAT addresses), to be handed to that tenant's NAT
===========  ==============================================================

Default routes (/0) are not painted into the LPM tables: DIR-24-8 would
expand a /0 into all 2**24 ``tbl24`` entries (64 MiB made resident per
domain, for every tenant). Each domain keeps its default route apart, and a
lookup that finds nothing takes it; a tenant without a /0 of its own gets
PROVIDER as its default. So a domain's table holds only its specific
prefixes, and costs memory in proportion to them.

Each record's index is its identity: decisions that rest on a route carry the
dependency tag ``tag(TagKind.ROUTE, index)``. A config change compiles new
tables under a new generation (the flow cache's generation is bumped), so
indices need not be stable across compiles.

The egress MTU of a record is the smallest MTU among the ports its segment is
attached to (a segment may span ports). ``mtu`` 0 means no check (LOCAL,
PROVIDER and TENANT records lead to another stage that checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import numpy as np

from portico.classify.lpm4 import LPM4
from portico.classify.lpm6 import LPM6
from portico.classify.lpm_tables import NO_MATCH
from portico.control.model import PROVIDER_TENANT_ID, Config
from portico.datapath.topology import Topology

MAX_TENANT = 65535
NO_ROUTE = -1
NO_DOMAIN = -1


class RouteKind(IntEnum):
    CONNECTED = 1
    VIA = 2
    LOCAL = 3
    PROVIDER = 4
    TENANT = 5


ROUTE_DTYPE = np.dtype([
    ("kind", "u1"),
    ("version", "u1"),
    ("prefixlen", "u1"),
    ("segment", "i4"),  # egress segment (CONNECTED, VIA, LOCAL: the address's segment)
    ("tenant", "i4"),  # TENANT: the tenant whose public address this is
    ("mtu", "i4"),  # egress MTU (CONNECTED, VIA); 0: no check here
    ("domain", "i4"),  # the tenant id of the router the route belongs to
    ("nh_hi", "u8"),  # VIA: the next hop (IPv4 in nh_lo)
    ("nh_lo", "u8"),
    ("net_hi", "u8"),  # the prefix, for show commands and tests
    ("net_lo", "u8"),
], align=True)


@dataclass(frozen=True, eq=False)
class DomainTables:
    tenant: int
    lpm4: LPM4
    lpm6: LPM6
    default4: int  # route index, or NO_ROUTE
    default6: int


@dataclass(frozen=True, eq=False)
class Routing:
    """The route records and per-domain tables of one config generation."""

    routes: np.ndarray  # ROUTE_DTYPE
    domains: tuple[DomainTables, ...]
    domain_index: np.ndarray  # i4 [tenant id] -> index into ``domains``, or NO_DOMAIN

    def _groups(self, tenants: np.ndarray) -> list[tuple[DomainTables, np.ndarray]]:
        tenants = np.asarray(tenants, dtype=np.int64)
        valid = (tenants >= 0) & (tenants <= MAX_TENANT)
        index = np.full(len(tenants), NO_DOMAIN, dtype=np.int64)
        index[valid] = self.domain_index[tenants[valid]]
        groups = []
        for d in np.unique(index[index >= 0]):
            groups.append((self.domains[int(d)], np.flatnonzero(index == d)))
        return groups

    def lookup4(self, tenants: np.ndarray, addresses: np.ndarray) -> np.ndarray:
        """The route index for each (domain, IPv4 address); NO_ROUTE when none."""
        out = np.full(len(addresses), NO_ROUTE, dtype=np.int64)
        addresses = np.asarray(addresses, dtype=np.uint32)
        for domain, sel in self._groups(tenants):
            found = domain.lpm4.lookup(addresses[sel]).astype(np.int64)
            found[found == NO_MATCH] = domain.default4
            out[sel] = found
        return out

    def lookup6(self, tenants: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The route index for each (domain, IPv6 address); NO_ROUTE when none."""
        out = np.full(len(hi), NO_ROUTE, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.uint64)
        lo = np.asarray(lo, dtype=np.uint64)
        for domain, sel in self._groups(tenants):
            found = domain.lpm6.lookup(hi[sel], lo[sel]).astype(np.int64)
            found[found == NO_MATCH] = domain.default6
            out[sel] = found
        return out

    def lookup(self, tenants: np.ndarray, version: np.ndarray, dst4: np.ndarray,
               dst6_hi: np.ndarray, dst6_lo: np.ndarray) -> np.ndarray:
        """Both families at once: IPv4 rows by ``dst4``, IPv6 rows by the halves."""
        out = np.full(len(version), NO_ROUTE, dtype=np.int64)
        v4 = np.flatnonzero(version == 4)
        v6 = np.flatnonzero(version == 6)
        if len(v4):
            out[v4] = self.lookup4(tenants[v4], dst4[v4])
        if len(v6):
            out[v6] = self.lookup6(tenants[v6], dst6_hi[v6], dst6_lo[v6])
        return out

    def describe(self, index: int) -> str:
        """One route as text, for traces: ``10.0.0.0/24 connected (segment 2)``."""
        r = self.routes[index]
        kind = RouteKind(int(r["kind"])).name.lower()
        net = (IPv4Network((int(r["net_lo"]), int(r["prefixlen"]))) if r["version"] == 4 else
               IPv6Network((int(r["net_hi"]) << 64 | int(r["net_lo"]), int(r["prefixlen"]))))
        text = f"{net} {kind}"
        if r["kind"] == RouteKind.VIA:
            via = (IPv4Address(int(r["nh_lo"])) if r["version"] == 4 else
                   IPv6Address(int(r["nh_hi"]) << 64 | int(r["nh_lo"])))
            text += f" via {via}"
        if r["kind"] == RouteKind.TENANT:
            text += f" {int(r['tenant'])}"
        return text


def _split(value: int) -> tuple[int, int]:
    return value >> 64, value & (1 << 64) - 1


def compile_routing(config: Config, topology: Topology) -> Routing:
    """The routing domains of ``config`` (validated), over ``topology``'s segments."""
    mtu_of_port = {port.id: port.mtu for port in config.ports.values()}
    segment_mtu = []
    for segment in topology.segments:
        ports = [topology.attachments[a].port for a in segment.attachments]
        mtus = [mtu_of_port[p] for p in ports if p is not None]
        segment_mtu.append(min(mtus) if mtus else 0)

    records: list[tuple] = []
    domains: list[DomainTables] = []

    def add(kind: RouteKind, network: IPv4Network | IPv6Network, *, domain: int,
            segment: int = -1, tenant: int = -1, via: int = 0) -> int:
        nh_hi, nh_lo = _split(via) if network.version == 6 else (0, via)
        net_hi, net_lo = (_split(int(network.network_address)) if network.version == 6
                          else (0, int(network.network_address)))
        mtu = segment_mtu[segment] if kind in (RouteKind.CONNECTED, RouteKind.VIA) else 0
        records.append((int(kind), network.version, network.prefixlen, segment, tenant, mtu,
                        domain, nh_hi, nh_lo, net_hi, net_lo))
        return len(records) - 1

    segments_by_tenant: dict[int, list[int]] = {}
    for segment in topology.segments:
        segments_by_tenant.setdefault(segment.tenant_id, []).append(segment.id)

    def build(tenant: int, routes: tuple, extra: list[tuple[IPv4Network, int]]) -> None:
        lpm4, lpm6 = LPM4(), LPM6()
        default = {4: NO_ROUTE, 6: NO_ROUTE}
        connected: list[tuple[IPv4Network | IPv6Network, int]] = []
        for sid in segments_by_tenant.get(tenant, []):
            for address in topology.segments[sid].addresses:
                connected.append((address.network, sid))
                index = add(RouteKind.CONNECTED, address.network, domain=tenant, segment=sid)
                table = lpm4 if address.version == 4 else lpm6
                table.add(str(address.network), index)
                host = ip_network(f"{address.ip}/{address.max_prefixlen}")
                table.add(str(host), add(RouteKind.LOCAL, host, domain=tenant, segment=sid))
        for route in routes:
            sid = next(s for net, s in connected if route.via in net)
            index = add(RouteKind.VIA, route.prefix, domain=tenant, segment=sid,
                        via=int(route.via))
            if route.prefix.prefixlen == 0:
                default[route.prefix.version] = index
            else:
                (lpm4 if route.prefix.version == 4 else lpm6).add(str(route.prefix), index)
        for network, owner in extra:
            lpm4.add(str(network), add(RouteKind.TENANT, network, domain=tenant, tenant=owner))
        if tenant != PROVIDER_TENANT_ID:
            for version, everything in ((4, IPv4Network("0.0.0.0/0")), (6, IPv6Network("::/0"))):
                if default[version] == NO_ROUTE:
                    default[version] = add(RouteKind.PROVIDER, everything, domain=tenant)
        domains.append(DomainTables(tenant, lpm4, lpm6, default[4], default[6]))

    public: list[tuple[IPv4Network, int]] = []
    for tenant in config.tenants.values():
        for _, network in tenant.router.nat.claims():
            if (network, tenant.id) not in public:
                public.append((network, tenant.id))
    build(PROVIDER_TENANT_ID, config.provider.router.routes, public)
    for tenant in config.tenants.values():
        build(tenant.id, tenant.router.routes, [])

    domain_index = np.full(MAX_TENANT + 1, NO_DOMAIN, dtype=np.int32)
    for d, tables in enumerate(domains):
        domain_index[tables.tenant] = d
    routes = np.array(records, dtype=ROUTE_DTYPE) if records else np.zeros(0, ROUTE_DTYPE)
    routes.flags.writeable = False
    return Routing(routes, tuple(domains), domain_index)
