"""route: the routers' forwarding step: LPM per domain, TTL, ICMP errors, MTU, neighbours.

Synopsis. One class, three places in the pipeline (``NAME`` per instance):

* ``route``: the first hop. Rows come from ``switch``: frames addressed to a
  router's MAC, and the ARP / neighbour-solicitation broadcasts the switch
  passes up. The domain is the ingress tenant (0: the provider router).
* ``provider-route``: after ``nat-out``, the provider router's lookup for a
  tenant's packet leaving through it (the destination is not translated).
* ``deliver``: after ``firewall-in``, the tenant router's lookup of the
  translated destination of a packet entering the tenant.

What a row gets, by the route record its destination finds
(``portico.datapath.routing``):

==============  ===========================================================
record          decision
==============  ===========================================================
CONNECTED, VIA  next hop = destination (CONNECTED) or ``via``; MTU check;
                neighbour's MAC -> SET_ETH_DST, ``out_attachment``; next
                ``output``. An unresolved neighbour: the packet is *held*
                (``decided.hold``) and the datapath asks for the MAC.
PROVIDER        (``route`` in a tenant) next ``firewall-out``
TENANT          (``route``/``provider-route`` in the provider) next ``nat-in``
LOCAL           ICMP echo requests are answered (echo reply); the rest of
                the traffic to a router address is dropped ``local-unsupported``
none            ICMP destination unreachable (network), from ``route``;
                ``no-route`` elsewhere
==============  ===========================================================

Before the lookup, ``route`` sends ICMP time exceeded for a TTL (hop limit)
of 1 or 0: the gateway is one routed hop, so it decrements once (DEC_TTL at
``route``), whatever number of routers the packet crosses inside it.

The MTU check compares the IP length with the egress segment's MTU: too big
with DF (always, for IPv6) gets ICMP fragmentation needed (RFC 1191) or
packet too big (RFC 8201) carrying that MTU; too big without DF is dropped
``needs-fragmentation`` (the gateway does not fragment). The datapath sends
every packet longer than the smallest MTU down the miss path
(``Datapath(min_mtu=...)``), so a cached flow's one big packet meets this
check too.

ARP and ND are answered here, for the router's addresses on the segment
they arrive on (RFC 826, RFC 4861 7.2.4), and every ARP packet and
solicitation/advertisement teaches its sender's address (RFC 826's merge
step). They are consumed: dropped with a named reason when not answered
(``arp-consumed``, ``nd-consumed``), never forwarded.

Answers (echo replies, ICMP errors, ARP replies, NAs) are ``decided.reply``
records built in place by ``portico.datapath.replies`` after the stages,
from the router address on the segment the packet came in by, and are not
cached. Caching otherwise: a forwarded decision carries its neighbour's tag
(and its MAC location's, when learned): learning a neighbour or a MAC move
re-decides it. Routes are config: their changes bump the generation.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np

from portico import drops
from portico.batch import Batch
from portico.datapath.actions import Op
from portico.datapath.flowcache import NO_TAG
from portico.datapath.mactable import MacTable
from portico.datapath.neighbours import NeighbourTable
from portico.datapath.pipeline import Decisions
from portico.datapath.replies import ReplyKind
from portico.datapath.routing import NO_ROUTE, RouteKind, Routing
from portico.datapath.topology import Topology
from portico.packet.arp import ARP
from portico.packet.arp import REQUEST as ARP_REQUEST


class RouteDrop(IntEnum):
    """Why a router dropped (or consumed) a packet (codes 120..127 are replies')."""

    NO_ROUTE = 128  # no route, where no ICMP error can be sent from (after NAT)
    LOCAL_UNSUPPORTED = 129  # to a router address, not an echo request
    NEEDS_FRAGMENTATION = 130  # bigger than the egress MTU, DF clear: we do not fragment
    NO_LOCATION = 131  # the next hop's MAC is known, but not behind which attachment
    ARP_CONSUMED = 132  # an ARP packet learnt from (and not answered)
    ND_CONSUMED = 133  # a neighbour solicitation/advertisement learnt from (not answered)
    NOT_ROUTABLE = 134  # neither IP nor ARP / ND sent to a router's MAC
    QUEUE_FULL = 135  # waiting for the next hop's MAC, and its queue is full


drops.register("route", RouteDrop)

ICMP4_UNREACHABLE, ICMP4_TIME_EXCEEDED = 3, 11
ICMP6_UNREACHABLE, ICMP6_TOO_BIG, ICMP6_TIME_EXCEEDED = 1, 2, 3
FRAG_NEEDED = 4
ECHO_REQUEST4, ECHO_REQUEST6 = 8, 128
NS, NA = 135, 136
ETHERTYPE_ARP = 0x0806
DF = 0x40  # in the IPv4 flags byte (offset 6)
SET_ETH_DST, DEC_TTL = int(Op.SET_ETH_DST), int(Op.DEC_TTL)

ARP_OP = ARP.at("op").offset
ARP_SHA = ARP.at("sha").offset
ARP_SPA = ARP.at("spa").offset
ARP_TPA = ARP.at("tpa").offset


def _be(data: np.ndarray, rows: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """Big-endian ``width``-byte fields at ``at`` of each row, as uint64 (a gather)."""
    value = np.zeros(len(rows), dtype=np.uint64)
    for b in range(width):
        value = (value << np.uint64(8)) | data[rows, at + b].astype(np.uint64)
    return value


class Route:
    """A router's forwarding step (see the module's docstring); ``place`` names which."""

    DROPS: ClassVar[type[IntEnum] | None] = RouteDrop
    PLACES: ClassVar[dict[str, tuple[str, ...]]] = {
        "route": ("output", "firewall-out", "nat-in"),
        "provider-route": ("output", "nat-in"),
        "deliver": ("output",),
    }

    def __init__(self, place: str, topology: Topology, routing: Routing,
                 neighbours: NeighbourTable, macs: MacTable) -> None:
        if place not in self.PLACES:
            raise ValueError(f"route.place: {place!r} is not one of {sorted(self.PLACES)}")
        self.NAME = place  # type: ignore[misc]
        self.NEXT = self.PLACES[place]  # type: ignore[misc]
        self.topology = topology
        self.routing = routing
        self.neighbours = neighbours
        self.macs = macs
        self._to = {name: k for k, name in enumerate(self.NEXT)}
        # Per segment: the router's first address of each family (answers come from it),
        # and the attachment to use when the segment has only one.
        n = topology.segment_count
        self.addr4 = np.zeros(n, dtype=np.uint64)
        self.addr6_hi = np.zeros(n, dtype=np.uint64)
        self.addr6_lo = np.zeros(n, dtype=np.uint64)
        for record in topology.router_addresses[::-1]:  # the first address wins
            s = int(record["segment"])
            if record["version"] == 4:
                self.addr4[s] = record["lo"]
            else:
                self.addr6_hi[s], self.addr6_lo[s] = record["hi"], record["lo"]
        self.sole_attachment = np.array(
            [s.attachments[0] if len(s.attachments) == 1 else -1 for s in topology.segments],
            dtype=np.int64)
        # segment << 32 | address: the IPv4 router addresses ARP may ask for, per segment.
        v4 = topology.router_addresses[topology.router_addresses["version"] == 4]
        self.arp_targets = (v4["segment"].astype(np.uint64) << np.uint64(32)) | v4["lo"]

    # ------------------------------------------------------------------ stage
    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        meta = batch.meta
        rows = np.asarray(rows, dtype=np.int64)
        version = meta["ip_version"][rows]
        if self.NAME == "route":
            arp = np.flatnonzero((version == 0) & (meta["ethertype"][rows] == ETHERTYPE_ARP))
            if len(arp):
                self._arp(batch, rows[arp], decided)
            nd = np.flatnonzero((version == 6) & (meta["protocol"][rows] == 58)
                                & np.isin(meta["icmp_type"][rows], (NS, NA)))
            if len(nd):
                self._nd(batch, rows[nd], decided)
            other = (version == 0) & (meta["ethertype"][rows] != ETHERTYPE_ARP)
            meta["drop"][rows[other]] = RouteDrop.NOT_ROUTABLE
            ip = np.flatnonzero((version != 0) & ~np.isin(np.arange(len(rows)), nd))
        else:
            ip = np.flatnonzero(version != 0)
        if not len(ip):
            return
        self._route(batch, rows, ip, decision, decided)

    def _domains(self, meta: np.ndarray, rows: np.ndarray, decided: Decisions) -> np.ndarray:
        if self.NAME == "provider-route":
            return np.zeros(len(rows), dtype=np.int64)
        if self.NAME == "deliver":
            return decided.domain[rows].astype(np.int64)
        return meta["tenant"][rows].astype(np.int64)

    def _route(self, batch: Batch, all_rows: np.ndarray, ip: np.ndarray, decision: np.ndarray,
               decided: Decisions) -> None:
        meta = batch.meta
        rows = all_rows[ip]
        view = decided.effective(meta, rows)
        domains = self._domains(meta, rows, decided)
        version = view["ip_version"]
        first = self.NAME == "route"
        if first:  # the TTL is the gateway's one hop
            expired = view["ttl"] <= 1
            self._error(meta, rows[expired], decided,
                        np.where(version[expired] == 4, ICMP4_TIME_EXCEEDED, ICMP6_TIME_EXCEEDED),
                        0)
        else:
            expired = np.zeros(len(rows), dtype=bool)
        found = self.routing.lookup(domains, version, view["dst4"], view["dst6_hi"],
                                    view["dst6_lo"])
        kind = np.zeros(len(rows), dtype=np.int64)
        known = found != NO_ROUTE
        kind[known] = self.routing.routes["kind"][found[known]]
        live = ~expired

        missing = live & ~known
        if first:
            self._error(meta, rows[missing], decided,
                        np.where(version[missing] == 4, ICMP4_UNREACHABLE, ICMP6_UNREACHABLE), 0)
        else:
            meta["drop"][rows[missing]] = RouteDrop.NO_ROUTE

        local = live & (kind == RouteKind.LOCAL)
        echo = local & (view["icmp_type"] == np.where(version == 4, ECHO_REQUEST4, ECHO_REQUEST6))
        echo &= view["protocol"] == np.where(version == 4, 1, 58)
        if first and echo.any():
            self._answer(meta, rows[echo], decided, ReplyKind.ECHO_REPLY, 0, 0)
        meta["drop"][rows[local & ~(echo & first)]] = RouteDrop.LOCAL_UNSUPPORTED

        provider = live & (kind == RouteKind.PROVIDER)
        tenant = live & (kind == RouteKind.TENANT)
        self._go(rows, provider, "firewall-out", decision, ip, meta)
        if tenant.any():
            decided.domain[rows[tenant]] = self.routing.routes["tenant"][found[tenant]]
        self._go(rows, tenant, "nat-in", decision, ip, meta)
        if first:
            onward = provider | tenant
            decided.actions["ops"][rows[onward]] |= DEC_TTL

        forward = live & ((kind == RouteKind.CONNECTED) | (kind == RouteKind.VIA))
        if forward.any():
            sent = self._forward(batch, rows[forward], view[forward], domains[forward],
                                 found[forward], decided)
            onward = np.zeros(len(rows), dtype=bool)
            onward[np.flatnonzero(forward)[sent]] = True
            self._go(rows, onward, "output", decision, ip, meta)

    def _go(self, rows: np.ndarray, mask: np.ndarray, stage: str, decision: np.ndarray,
            ip: np.ndarray, meta: np.ndarray) -> None:
        """Send the masked rows on to ``stage``; a stage this place does not lead to is a
        route the place cannot take (PROVIDER after NAT): ``no-route``."""
        if not mask.any():
            return
        if stage in self._to:
            decision[ip[mask]] = self._to[stage]
        else:
            meta["drop"][rows[mask]] = RouteDrop.NO_ROUTE

    def _forward(self, batch: Batch, rows: np.ndarray, view: np.ndarray, domains: np.ndarray,
                 found: np.ndarray, decided: Decisions) -> np.ndarray:
        """Record the next hop of each row; the mask of rows that go on to ``output``."""
        meta = batch.meta
        route = self.routing.routes[found]
        version = view["ip_version"]
        v4 = version == 4
        via = route["kind"] == RouteKind.VIA
        hi = np.where(via, route["nh_hi"], np.where(v4, 0, view["dst6_hi"])).astype(np.uint64)
        lo = np.where(via, route["nh_lo"],
                      np.where(v4, view["dst4"], view["dst6_lo"])).astype(np.uint64)
        mtu = route["mtu"].astype(np.int64)
        big = (mtu > 0) & (view["l3_length"].astype(np.int64) > mtu)
        if big.any():
            l3 = meta["l3"][rows].astype(np.int64)
            df = np.ones(len(rows), dtype=bool)
            df[v4] = (batch.data[rows[v4], np.maximum(l3[v4], 0) + 6] & DF) != 0
            too_big = big & df
            if too_big.any():
                self._error(meta, rows[too_big], decided,
                            np.where(v4[too_big], ICMP4_UNREACHABLE, ICMP6_TOO_BIG),
                            np.where(v4[too_big], FRAG_NEEDED, 0), mtu[too_big])
            meta["drop"][rows[big & ~df]] = RouteDrop.NEEDS_FRAGMENTATION
            # The packet's length decided, not its flow: the flow's smaller packets pass.
            decided.no_cache(rows[big])
        go = ~big
        macs = np.zeros(len(rows), dtype=np.uint64)
        tags = np.full(len(rows), NO_TAG, dtype=np.uint32)
        if (go & v4).any():
            sel = go & v4
            macs[sel] = self.neighbours.resolve4(domains[sel], lo[sel], int(view["timestamp"][0]))
            tags[sel] = self.neighbours.tags4(domains[sel], lo[sel])
        if (go & ~v4).any():
            sel = go & ~v4
            macs[sel] = self.neighbours.resolve6(domains[sel], hi[sel], lo[sel],
                                                 int(view["timestamp"][0]))
            tags[sel] = self.neighbours.tags6(domains[sel], hi[sel], lo[sel])
        decided.add_tag(rows[go], tags[go])

        unresolved = go & (macs == 0)
        if unresolved.any():
            held = rows[unresolved]
            decided.hold["version"][held] = version[unresolved]
            decided.hold["domain"][held] = domains[unresolved]
            decided.hold["hi"][held] = hi[unresolved]
            decided.hold["lo"][held] = lo[unresolved]
            decided.no_cache(held)
        resolved = go & (macs != 0)
        sent = np.zeros(len(rows), dtype=bool)
        if not resolved.any():
            return sent
        segment = route["segment"][resolved].astype(np.int64)
        where = self.sole_attachment[segment]
        ask = where < 0
        if ask.any():
            located, loc_tags = self.macs.locate(segment[ask], macs[resolved][ask])
            where[ask] = located
            sub = rows[resolved][ask]
            tagged = loc_tags != NO_TAG
            decided.add_tag(sub[tagged], loc_tags[tagged])
        out = rows[resolved]
        lost = where < 0
        meta["drop"][out[lost]] = RouteDrop.NO_LOCATION
        sent[np.flatnonzero(resolved)[~lost]] = True
        out, where = out[~lost], where[~lost]
        meta["out_attachment"][out] = where
        a = decided.actions
        a["ops"][out] |= SET_ETH_DST | (DEC_TTL if self.NAME == "route" else 0)
        a["eth_dst"][out] = macs[resolved][~lost]
        return sent

    # ---------------------------------------------------------------- answers
    def _answer(self, meta: np.ndarray, rows: np.ndarray, decided: Decisions, kind: ReplyKind,
                type_: object, code: object, mtu: object = 0) -> None:
        """Answer the packets in place; the answer leaves by the segment they came in by,
        from its router's MAC and address."""
        if not len(rows):
            return
        segment = meta["segment"][rows].astype(np.int64)
        r = decided.reply
        r["kind"][rows] = int(kind)
        r["type"][rows] = type_
        r["code"][rows] = code
        r["mtu"][rows] = mtu
        r["eth_src"][rows] = self.topology.segment_router_mac[segment]
        r["ip4_src"][rows] = self.addr4[segment]
        r["ip6_src_hi"][rows] = self.addr6_hi[segment]
        r["ip6_src_lo"][rows] = self.addr6_lo[segment]
        decided.no_cache(rows)

    def _error(self, meta: np.ndarray, rows: np.ndarray, decided: Decisions, type_: object,
               code: object, mtu: object = 0) -> None:
        self._answer(meta, rows, decided, ReplyKind.ICMP_ERROR, type_, code, mtu)

    def _arp(self, batch: Batch, rows: np.ndarray, decided: Decisions) -> None:
        data, meta = batch.data, batch.meta
        l3 = meta["l3"][rows].astype(np.int64)
        op = _be(data, rows, l3 + ARP_OP, 2)
        sha = _be(data, rows, l3 + ARP_SHA, 6)
        spa = _be(data, rows, l3 + ARP_SPA, 4)
        tpa = _be(data, rows, l3 + ARP_TPA, 4)
        segment = meta["segment"][rows].astype(np.int64)
        domain = meta["tenant"][rows].astype(np.int64)
        now = int(meta["timestamp"][rows[0]])
        sender = (spa != 0) & (sha != 0) & ((sha >> np.uint64(40)) & np.uint64(1) == 0)
        if sender.any():
            self.neighbours.learn4_many(domain[sender], spa[sender], sha[sender], now)
        ours = np.isin((segment.astype(np.uint64) << np.uint64(32)) | tpa, self.arp_targets)
        request = (op == ARP_REQUEST) & ours
        if request.any():
            self._answer(meta, rows[request], decided, ReplyKind.ARP_REPLY, 0, 0)
            decided.reply["ip4_src"][rows[request]] = tpa[request]
        meta["drop"][rows[~request]] = RouteDrop.ARP_CONSUMED
        decided.no_cache(rows)

    def _nd(self, batch: Batch, rows: np.ndarray, decided: Decisions) -> None:
        data, meta = batch.data, batch.meta
        l4 = meta["l4"][rows].astype(np.int64)
        kind = meta["icmp_type"][rows]
        t_hi = _be(data, rows, l4 + 8, 8)
        t_lo = _be(data, rows, l4 + 16, 8)
        has_option = meta["l3_length"][rows].astype(np.int64) >= 40 + 24 + 8
        opt_type = np.where(has_option, data[rows, np.where(has_option, l4 + 24, l4)], 0)
        lladdr = np.where(has_option, _be(data, rows, np.where(has_option, l4 + 26, l4), 6), 0)
        segment = meta["segment"][rows].astype(np.int64)
        domain = meta["tenant"][rows].astype(np.int64)
        now = int(meta["timestamp"][rows[0]])
        # NS: the source (unless unspecified) with its source link-layer option (type 1);
        # NA: the target with its target link-layer option (type 2).
        ns_learn = (kind == NS) & (opt_type == 1) & (
            (meta["src6_hi"][rows] != 0) | (meta["src6_lo"][rows] != 0))
        na_learn = (kind == NA) & (opt_type == 2)
        hi = np.where(ns_learn, meta["src6_hi"][rows], t_hi).astype(np.uint64)
        lo = np.where(ns_learn, meta["src6_lo"][rows], t_lo).astype(np.uint64)
        learn = (ns_learn | na_learn) & (lladdr != 0)
        if learn.any():
            self.neighbours.learn6_many(domain[learn], hi[learn], lo[learn],
                                        lladdr[learn].astype(np.uint64), now)
        ours = (kind == NS) & (t_hi == self.addr6_hi[segment]) & (t_lo == self.addr6_lo[segment])
        ours &= (t_hi != 0) | (t_lo != 0)
        if ours.any():
            self._answer(meta, rows[ours], decided, ReplyKind.NEIGHBOUR_ADVERT, 0, 0)
        meta["drop"][rows[~ours]] = RouteDrop.ND_CONSUMED
        decided.no_cache(rows)
