"""gateway: a config made into a running datapath — every table, every stage, one call a batch.

Role. ``Gateway(config)`` compiles the config (``portico.control.model``) into
the topology (segments, attachments), the routing domains, the NAT table and
the tenants' firewall rules; makes the learned state (MAC table, neighbour
table, connection table, the queue of packets waiting for a neighbour); wires
the stages into the pipeline; and puts the flow cache in front::

    ingress -> switch -> output                                  (bridged)
                      -> route -> output                         (routed inside a domain)
                               -> firewall-out -> nat-out -> provider-route -> output
                                                                            -> nat-in ...
                               -> nat-in -> firewall-in -> deliver -> output

``process(batch, now)`` runs one batch and returns the packets the gateway
sends of its own accord because of it: ARP requests / neighbour solicitations
for unresolved next hops, and packets that were waiting for a neighbour this
batch resolved (processed again from the start, so every decision is made
with the neighbour known). The batch itself leaves rewritten in place: a row
with ``out_port >= 0`` goes out of that port, a row with ``drop != 0`` was
dropped for the named reason, and a row with neither was held (it comes back
in a later return value, or is dropped by the queue's timeout, counted).

Between batches the state the stages learned reaches the cache: the MAC
table's and the neighbour table's changed tags invalidate exactly the flows
decided on the old state. Cache hits keep their flows' NAT bindings and
connections alive (``_touch``): a flow the cache forwards never loses either.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import copy, deepcopy
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import numpy as np

from portico.batch import Batch
from portico.classify.rules import Direction, Rule, RuleChange
from portico.control.model import PROVIDER_TENANT_ID, Config
from portico.datapath import replies
from portico.datapath.conntable import ConnTrack
from portico.datapath.conntrack import State
from portico.datapath.datapath import Datapath
from portico.datapath.flowcache import SECOND, FlowCache, capacity_for
from portico.datapath.mactable import MacTable
from portico.datapath.nat import NatTable, StaticMapping
from portico.datapath.neighbours import NeighbourKey, NeighbourTable, PendingQueue
from portico.datapath.pipeline import Decisions, Pipeline
from portico.datapath.routing import RouteKind, compile_routing
from portico.datapath.stages.firewall import (
    Answers,
    ConnTrackPass,
    Firewall,
    Firewalls,
    TenantRules,
)
from portico.datapath.stages.ingress import Ingress
from portico.datapath.stages.nat import Nat
from portico.datapath.stages.output import Output
from portico.datapath.stages.route import Route, RouteDrop
from portico.datapath.stages.switch import L2Switch
from portico.datapath.topology import compile_topology

KEEP_ALIVE = SECOND  # how often flows the cache forwards refresh their NAT/conntrack state
SWEEP = SECOND  # how often learned neighbours are checked for expiry


class Gateway:
    """A config's datapath: tables, learned state, stages, cache (see the module's docstring)."""

    nat: NatTable
    datapath: Datapath
    _statics: list[StaticMapping]

    def __init__(self, config: Config, *, cache: bool = True, flows: int = 1 << 16,
                 idle_timeout: float = 60.0, generation: int = 1, seed: int | None = None,
                 slot_size: int | None = None, connections: int | None = None,
                 bindings: int | None = None) -> None:
        """``flows`` sizes the flow cache; ``connections`` and ``bindings`` (the
        connection table and the NAT's binding table) default to as many, at least 65,536."""
        self._seed = seed
        self.pending = PendingQueue(**({} if slot_size is None else {"slot_size": slot_size}))
        self.conns = ConnTrack(seed=seed, capacity=connections or max(flows, 1 << 16))
        self._bindings = bindings or max(flows, 1 << 16)
        # A cached decision that rests on a connection holds while it is open: established,
        # or a datagram flow's (NEW until its first reply).
        self.cache = (FlowCache(capacity_for(flows), idle_timeout=round(idle_timeout * SECOND),
                                seed=seed, connections=self.conns.conns,
                                open_states=(State.ESTABLISHED, State.NEW)) if cache else None)
        self._compile(config, generation, previous=None)
        self.counters = {"held": 0, "hold-refused": 0, "solicitations": 0, "released": 0}
        self._kept_alive = -(1 << 62)
        self._swept = -(1 << 62)
        self._now = 0

    def _compile(self, config: Config, generation: int, previous: Gateway | None) -> None:
        """Everything the config decides: tables, stages, the pipeline. ``previous``: the
        gateway being reconfigured, whose learned state carries over."""
        seed = self._seed
        self.config = config
        self.topology = t = compile_topology(config, generation=generation)
        self.routing = compile_routing(config, t)
        self.macs = MacTable(t, seed=seed)
        static = [(PROVIDER_TENANT_ID, n.address, n.mac) for n in config.provider.router.neighbours]
        static += [(tn.id, n.address, n.mac) for tn in config.tenants.values()
                   for n in tn.router.neighbours]
        self.neighbours = NeighbourTable(static, seed=seed)
        tenants = config.tenants.values()
        pools = [p for tn in tenants if (p := tn.router.nat.pool(tn.id)) is not None]
        statics = [m for tn in tenants for m in tn.router.nat.static_mappings(tn.id)]
        if previous is not None:
            self.macs.carry_over(previous.macs)
            now = previous._now
            for entry in previous.neighbours.entries(now):
                if entry.static:
                    continue
                seen = now - round((entry.age or 0.0) * SECOND)
                address = ip_address(entry.address)
                if address.version == 4:
                    self.neighbours.learn4(entry.domain, int(address), entry.mac, seen)
                else:
                    value = int(address)
                    self.neighbours.learn6(entry.domain, value >> 64, value & (1 << 64) - 1,
                                           entry.mac, seen)
            self.neighbours.take_changed_tags()  # nothing cached rests on this table yet
        if previous is not None and (previous.nat.pools, previous._statics) == (pools, statics):
            self.nat = previous.nat  # the same NAT: every binding stays
        else:
            self.nat = NatTable(pools, statics=statics, seed=seed, tcp_syn_only=True,
                                capacity=self._bindings)
        self._statics = statics
        self.firewalls = Firewalls(config)
        route = Route("route", t, self.routing, self.neighbours, self.macs)
        answers = Answers(t.segment_router_mac, route.addr4, route.addr6_hi, route.addr6_lo)
        firewalls = [Firewall(place, self.firewalls, self.conns, self.nat, answers)
                     for place in ("firewall-out", "firewall-in")]
        stages: list[Any] = [
            Ingress(t), L2Switch(t, self.macs), route, *firewalls,
            Nat("nat-out", self.nat), Nat("nat-in", self.nat),
            Route("provider-route", t, self.routing, self.neighbours, self.macs),
            Route("deliver", t, self.routing, self.neighbours, self.macs),
            Output(t),
        ]
        self.pipeline = Pipeline(stages, entry="ingress",
                                 finishers=[ConnTrackPass(self.conns, answers)])
        mtus = [port.mtu for port in config.ports.values()]
        self.datapath = Datapath(self.pipeline, cache=self.cache, topology=t,
                                 tag_sources=(self.macs, self.neighbours),
                                 min_mtu=min(mtus, default=65535), on_hold=self._hold,
                                 actions=None if previous is None else previous.datapath.actions)
        if previous is not None:
            self.datapath.counters = previous.datapath.counters

    def reconfigure(self, config: Config) -> int:
        """Swap in ``config`` (validated) under a new generation; return it.

        Everything the config decides is compiled afresh; what the gateway learned
        stays (MACs where their segments still exist, neighbours, connections, and the
        NAT bindings when no pool or forward changed). The flow cache's generation goes
        up, so no packet is decided by an entry made under the old tables."""
        generation = self.topology.generation + 1
        previous = copy(self)
        self._compile(config, generation, previous)
        if self.cache is not None:
            self.cache.bump_generation()
        return generation

    # ---------------------------------------------------------------- per batch
    def process(self, batch: Batch, now: int) -> list[Batch]:
        """Run ``batch``; return the batches the gateway sends because of it."""
        self._now = now
        self.datapath.process(batch, now)
        if self.cache is not None and now - self._kept_alive >= KEEP_ALIVE:
            self._keep_alive(now)
        if now - self._swept >= SWEEP:
            self.neighbours.expire(now)
            self.datapath.compact_actions()
            self._swept = now
        if not len(self.pending):
            return []
        sent: list[Batch] = []
        released = self.pending.release_resolved(self.neighbours, now)
        if released is not None and released.count:
            self.counters["released"] += released.count
            self.datapath.process(released, now)
            sent.append(released)
        self.pending.expire(now)
        asks = self.pending.solicit(now)
        if asks:
            solicitations = self._solicitations(asks)
            if solicitations.count:
                self.counters["solicitations"] += solicitations.count
                sent.append(solicitations)
        return sent

    def _hold(self, batch: Batch, rows: np.ndarray, decided: Decisions) -> None:
        hold = decided.hold[rows]
        for family in (4, 6):
            sel = np.flatnonzero(hold["version"] == family)
            if not len(sel):
                continue
            accepted = self.pending.hold(batch, rows[sel], hold["domain"][sel].astype(np.int64),
                                         family, hold["hi"][sel], hold["lo"][sel],
                                         int(batch.meta["timestamp"][rows[sel]].max()))
            self.counters["held"] += int(accepted.sum())
            self.counters["hold-refused"] += int((~accepted).sum())
            batch.meta["drop"][rows[sel][~accepted]] = RouteDrop.QUEUE_FULL

    def _keep_alive(self, now: int) -> None:
        """Flows the cache forwarded since the last sweep keep their NAT bindings and
        connections alive: one pass over the cache a ``KEEP_ALIVE`` interval, instead
        of a gather per hit (the shortest timeout it must beat is ICMP's 60 s)."""
        assert self.cache is not None
        used = self.cache.used_since(self._kept_alive)
        entries = self.cache.entries
        bindings = entries["nat_binding"][used]
        self.nat.touch(bindings[bindings >= 0], now)
        conns = entries["conn"][used]
        gens = entries["conn_gen"][used]
        mine = conns >= 0
        conns, gens = conns[mine].astype(np.int64), gens[mine]
        same = self.conns.conns["gen"][conns] == gens  # not a later connection in the slot
        self.conns.touch(conns[same], now)
        self._kept_alive = now

    def _solicitations(self, asks: list[NeighbourKey]) -> Batch:
        """An ARP request / NS for each neighbour, out of every attachment of its segment."""
        frames: list[tuple[NeighbourKey, int]] = []  # (neighbour, attachment)
        segments: list[int] = []
        for key in asks:
            if key.family == 4:
                found = self.routing.lookup4(np.array([key.domain]), np.array([key.lo]))[0]
            else:
                found = self.routing.lookup6(np.array([key.domain]),
                                             np.array([key.hi], dtype=np.uint64),
                                             np.array([key.lo], dtype=np.uint64))[0]
            if found < 0 or self.routing.routes["kind"][found] != RouteKind.CONNECTED:
                continue
            segment = int(self.routing.routes["segment"][found])
            if not self._source(segment, key.family):
                continue  # no address of that family here: an NS from :: would be a DAD probe
            for attachment in self.topology.segments[segment].attachments:
                if self.topology.attachment_port[attachment] >= 0:
                    frames.append((key, attachment))
                    segments.append(segment)
        batch = Batch(max(1, len(frames)), slot_size=self.pending.slot_size)
        batch.reset(len(frames))
        t = self.topology
        for row, ((key, attachment), segment) in enumerate(zip(frames, segments, strict=True)):
            vlan = int(t.attachment_vlan[attachment]) or None
            port = int(t.attachment_port[attachment])
            mac = int(t.segment_router_mac[segment])
            source = self._source(segment, key.family)
            if key.family == 4:
                replies.write_arp_request(batch, row, eth_src=mac, ip_src=source,
                                          ip_target=key.lo, vlan_tci=vlan, port=port)
            else:
                replies.write_neighbour_solicit(batch, row, eth_src=mac, ip6_src=source,
                                                target=key.hi << 64 | key.lo, vlan_tci=vlan,
                                                port=port)
        return batch

    def _source(self, segment: int, family: int) -> int:
        for address in self.topology.segments[segment].addresses:
            if address.version == family:
                return int(address.ip)
        return 0

    # ----------------------------------------------------------- live changes
    def set_rules(self, tenant: str, direction: str, rules: Sequence[Rule]) -> RuleChange:
        """Replace a tenant's rules for one direction (all or nothing; ``RuleError`` names
        the bad field). The flows of that tenant and direction are decided afresh on
        their next packet; every other cached flow stays."""
        rules_of = self._tenant_rules(tenant)
        change = rules_of.rules[Direction(direction)].replace_all(rules)
        if not change.empty and self.cache is not None:
            tenant_id = self.config.tenants[tenant].id
            self.cache.invalidate_tags([Firewalls.tag(tenant_id, Direction(direction))])
        return change

    def set_container(self, tenant: str, name: str, prefixes: Sequence[str]) -> None:
        """Give a tenant's container exactly ``prefixes`` (its own; the containers it
        includes stay); re-decide the flows of the directions whose rules use it, or a
        container that includes it."""
        rules_of = self._tenant_rules(tenant)
        store = rules_of.store
        if name not in store.containers:
            raise KeyError(f"tenants.{tenant}.router.firewall.containers: no container {name!r}")
        # Its own prefixes: what it holds through the containers it includes stays.
        have = {str(p) for p in store.containers[name].prefixes}
        want = {str(ip_network(p, strict=False)) for p in prefixes}
        changed: set[str] = set()  # it and every container holding it through nesting
        for prefix in sorted(want - have):
            changed |= store.add_prefix(name, prefix).containers
        for prefix in sorted(have - want):
            changed |= store.remove_prefix(name, prefix).containers
        if self.cache is not None:
            tenant_id = self.config.tenants[tenant].id
            self.cache.invalidate_tags([Firewalls.tag(tenant_id, d)
                                        for d, rs in rules_of.rules.items()
                                        if any(rs.rules_using(c) for c in changed)])

    def _tenant_rules(self, tenant: str) -> TenantRules:
        if tenant not in self.config.tenants:
            raise KeyError(f"tenants: no tenant {tenant!r}")
        return self.firewalls.tenants[self.config.tenants[tenant].id]

    # ------------------------------------------------------------------- views
    @property
    def now(self) -> int:
        """The time of the last batch processed (ns), the gateway's clock."""
        return self._now

    def sandbox(self) -> Gateway:
        """A copy of this gateway to try packets on (``portico trace``); nothing done to
        it reaches this one.

        It shares what the config compiled (the config, topology, route tables,
        firewall classifiers: read, not written, by packets, and copying their LPM
        tables would cost hundreds of MiB), copies everything packets change (MACs,
        neighbours, connections, NAT bindings, the neighbour queue, every counter),
        and has no flow cache, so each packet runs the stages. Make it and use it
        under the lock that orders this gateway's batches: ``set_rules`` changes the
        shared classifiers in place."""
        shared: dict[int, Any] = {id(x): x for x in (self.config, self.topology,
                                                     self.routing, self.firewalls)}
        shared[id(self.cache)] = None  # every reference to the cache: none in the copy
        return deepcopy(self, shared)

    def runtime(self) -> str:
        return self.pipeline.runtime()

    def stats(self) -> dict[str, object]:
        """Every counter, by owner: what ``portico run --json`` prints."""
        stages = {}
        for name, c in self.pipeline.counters.items():
            stages[name] = {"calls": c.calls, "packets": c.packets,
                            "ns_per_packet": round(c.ns_per_packet, 1), "drops": dict(c.drops)}
        return {
            "datapath": dict(self.datapath.counters),
            "cache": dict(self.cache.counters) if self.cache is not None else None,
            "stages": stages,
            "nat": self.nat.counters(),
            "conntrack": self.conns.counters(),
            "neighbours": self.neighbours.counters(),
            "pending": self.pending.counters(),
            "gateway": dict(self.counters),
        }


def address_text(family: int, hi: int, lo: int) -> str:
    return str(IPv4Address(lo) if family == 4 else IPv6Address(hi << 64 | lo))
