"""firewall: the tenant router's stateful firewall, one place per direction.

Synopsis. ``firewall-out`` gets a tenant's packets leaving towards the
provider (before SNAT: the rules see the tenant's own addresses), next
``nat-out``; ``firewall-in`` gets packets entering a tenant (after DNAT,
``decided.domain`` is the tenant), next ``deliver``. Per row:

1. the tenant's rules for the direction (``portico.classify``: containers,
   priorities, first match) say allow, deny or reject. A direction with no
   rules at all allows everything (as an OVN switch without ACLs does); with
   rules, a packet no rule matches is denied.
2. connection tracking (``portico.datapath.conntable``, the tenant id as the
   zone, keyed on the addresses the rules saw) runs the TCP state machine:

   ==============  =======================================================
   conntrack says  the packet
   ==============  =======================================================
   NEW             opened a connection the rules allowed: passes
   ESTABLISHED     of a connection, from its opener: passes if the rules
                   still allow it (a rule change reaches open connections)
   REPLY           of a connection, from the other side: passes (replies
                   to allowed flows need no rule of their own)
   DENIED          would open a connection the rules refuse: ``denied``,
                   or answered with ICMP administratively prohibited when
                   the rule says reject
   INVALID         makes no sense for its connection (an ACK with none, a
                   reply before the request): ``invalid``
   UNTRACKED       not tracked (non-first fragments): the rules decide;
                   ICMP errors pass when the flow they quote is tracked
                   (conntrack's RELATED), whatever the rules
   TABLE_FULL      ``conntrack-full``
   ==============  =======================================================

Inbound, an unsolicited packet may open a connection only through a binding
that admits it (``NatTable.admits_unsolicited``: a static DNAT mapping, an
endpoint-independent pool): with the default address-and-port-dependent
filtering (RFC 4787 REQ-8) only replies of tracked connections come in.

Caching. Each decision carries the tag ``tag(RULE, ruleset)`` of its tenant
and direction: any change to that rule set (or to a container its rules use)
re-decides the flows of that tenant and direction on their next packet, and
leaves every other tenant's cached flows alone. The connection's slot goes in
``decided.conn``; cache hits refresh it (``ConnTrack.touch``), so a
connection the cache forwards stays alive, and TCP SYN/FIN/RST always come
through here (the datapath sends them down the miss path). A cached decision
holds only while its connection is open (``Gateway``'s hit check: a SYN's
entry says nothing for the rest of the handshake, a FIN's or RST's ends the
entries of the connection), and a refusal for want of a connection is not
cached: the packet is the reply of the one the other side may open next.
"""

from __future__ import annotations

from enum import IntEnum
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from portico import drops
from portico.batch import Batch
from portico.classify.classifier import Classifier
from portico.classify.containers import ContainerStore
from portico.classify.rules import Action as RuleAction
from portico.classify.rules import Direction, RuleSet
from portico.control.model import Config
from portico.datapath.conntable import ConnTrack, Outcome
from portico.datapath.flowcache import TagKind
from portico.datapath.icmp_quote import SOURCE
from portico.datapath.nat import NatTable
from portico.datapath.pipeline import DONE, Decisions
from portico.datapath.replies import ReplyKind
from portico.datapath.stages.parse import ICMP4_ERROR, ICMP6_ERROR


class FirewallDrop(IntEnum):
    """Why the firewall dropped a packet (codes 140..147)."""

    DENIED = 140  # a rule (or the default of a direction with rules) refused it
    INVALID = 141  # conntrack: not valid for its connection, or no connection to be part of
    CONNTRACK_FULL = 142  # a new connection, and no room to track it


drops.register("firewall", FirewallDrop)

RULE_TAG_BASE = int(TagKind.RULE) << 28
ADMIN_PROHIBITED4 = (3, 13)  # ICMP destination unreachable, administratively prohibited
ADMIN_PROHIBITED6 = (1, 1)  # ICMPv6 destination unreachable, administratively prohibited
NO_RULE = -1


def _icmp_errors(view: np.ndarray) -> np.ndarray:
    """Which rows are ICMP / ICMPv6 errors (they quote the flow they are about)."""
    return (((view["protocol"] == 1) & ICMP4_ERROR[view["icmp_type"]])
            | ((view["protocol"] == 58) & ICMP6_ERROR[view["icmp_type"]]))


def _quoted(view: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """The flows errors quote, as rows conntrack can look up, in the tenant's addresses:
    an inbound error's quote after ``nat-in`` restored its source (``firewall-in``
    comes after it); an outbound one's as the host sent it (``firewall-out`` comes
    before ``nat-out``)."""
    q = view.copy()
    for column in ("src4", "dst4", "src6_hi", "src6_lo", "dst6_hi", "dst6_lo", "sport",
                   "dport", "protocol", "ip_version"):
        q[column] = view[f"inner_{column}"]
    source = quotes["side"] == SOURCE
    q["src4"][source] = quotes["address"][source]
    q["sport"][source] = quotes["port"][source]
    echo = (q["protocol"] == 1) | (q["protocol"] == 58)  # an echo's identifier is both ports
    q["dport"][echo & source] = q["sport"][echo & source]
    return q


class TenantRules:
    """One tenant's containers and its two rule sets, compiled into classifiers."""

    def __init__(self, name: str, tenant_id: int, firewall: object) -> None:
        from portico.control.model import Firewall

        assert isinstance(firewall, Firewall)
        self.tenant_id = tenant_id
        self.store = ContainerStore(name)
        for container in firewall.container_order():
            self.store.create(container, firewall.prefixes(container), firewall.includes(container))
        self.rules: dict[Direction, RuleSet] = {}
        self.classifiers: dict[Direction, Classifier] = {}
        for direction in (Direction.INGRESS, Direction.EGRESS):
            ruleset = RuleSet(tenant=name, direction=direction,
                              container_exists=self.store.containers.__contains__)
            ruleset.replace_all(firewall.rules(direction))
            self.rules[direction] = ruleset
            self.classifiers[direction] = Classifier(self.store, ruleset)


class Firewalls:
    """Every tenant's rules, by tenant id, and the tag of each (tenant, direction)."""

    def __init__(self, config: Config) -> None:
        self.tenants = {t.id: TenantRules(name, t.id, t.router.firewall)
                        for name, t in config.tenants.items()}

    @staticmethod
    def tag(tenant: int, direction: Direction) -> int:
        return RULE_TAG_BASE | tenant << 1 | (direction is Direction.INGRESS)


class Firewall:
    """One direction of the tenant routers' firewall (see the module's docstring)."""

    DROPS: ClassVar[type[IntEnum] | None] = FirewallDrop
    PLACES: ClassVar[dict[str, tuple[Direction, tuple[str, ...]]]] = {
        "firewall-out": (Direction.EGRESS, ("nat-out",)),
        "firewall-in": (Direction.INGRESS, ("deliver",)),
    }

    def __init__(self, place: str, firewalls: Firewalls, conns: ConnTrack, nat: NatTable,
                 answers: Answers) -> None:
        if place not in self.PLACES:
            raise ValueError(f"firewall.place: {place!r} is not one of {sorted(self.PLACES)}")
        self.direction, next_ = self.PLACES[place]
        self.NAME = place  # type: ignore[misc]
        self.NEXT = next_  # type: ignore[misc]
        self.firewalls = firewalls
        self.conns = conns
        self.nat = nat
        self.answers = answers

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        meta = batch.meta
        rows = np.asarray(rows, dtype=np.int64)
        decision[:] = 0  # on to NAT or delivery; tracking decides after the stages
        view = decided.effective(meta, rows)
        zones = view["tenant"].astype(np.int64)
        allowed, reject = self._rules(view, zones)
        # Errors are judged by the flow they quote, after tracking (ConnTrackPass).
        errors = _icmp_errors(view)
        allowed[errors] = True
        reject[errors] = False
        if self.direction is Direction.INGRESS:
            binding = decided.binding[rows]
            via = binding >= 0
            nat_says = np.ones(len(rows), dtype=bool)
            nat_says[via] = self.nat.admits_unsolicited(binding[via])
            allowed &= nat_says
        else:
            # A refused packet leaving must not take a NAT binding on its way to being
            # dropped: unless it may be a reply (its connection exists), refuse it now.
            refused = np.flatnonzero(~allowed)
            if len(refused):
                now = int(view["timestamp"].max())
                known = self.conns.peek(view, refused, zones[refused], now)
                now_refused = refused[~known]
                answered = now_refused[reject[now_refused]]
                meta["drop"][rows[now_refused[~reject[now_refused]]]] = FirewallDrop.DENIED
                # Refused while no connection knows it: one may open (see ConnTrackPass).
                decided.no_cache(rows[now_refused])
                if len(answered):
                    self.answers.reject(meta, rows[answered], view[answered], decided)
                    decision[answered] = DONE
        if self.direction is Direction.INGRESS:
            hairpin = rows[decided.ct_zone[rows] >= 0]  # firewall-out recorded it first
            decided.ct_first_zone[hairpin] = decided.ct_zone[hairpin]
            decided.ct_first_allowed[hairpin] = decided.ct_allowed[hairpin]
            decided.ct_first_view[hairpin] = decided.ct_view[hairpin]
        decided.ct_zone[rows] = zones
        decided.ct_allowed[rows] = allowed
        decided.ct_reject[rows] = reject
        decided.ct_view[rows] = view
        unique = np.unique(zones)
        tags = np.array([Firewalls.tag(int(z), self.direction) for z in unique], dtype=np.uint32)
        decided.add_tag(rows, tags[np.searchsorted(unique, zones)])

    def _rules(self, view: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: whether the tenant's rules allow the packet, and whether they reject it."""
        allowed = np.ones(len(view), dtype=bool)
        reject = np.zeros(len(view), dtype=bool)
        for zone in np.unique(zones):
            tenant = self.firewalls.tenants.get(int(zone))
            if tenant is None:
                continue  # the provider: no firewall of its own
            classifier = tenant.classifiers[self.direction]
            if not len(tenant.rules[self.direction]):
                continue
            sel = np.flatnonzero(zones == zone)
            found = classifier.classify(SimpleNamespace(meta=view), sel)  # type: ignore[arg-type]
            actions = np.array([int(r.action is RuleAction.ALLOW) for r in classifier.rules]
                               + [0], dtype=bool)
            rejects = np.array([int(r.action is RuleAction.REJECT) for r in classifier.rules]
                               + [0], dtype=bool)
            allowed[sel] = actions[found]  # -1 (no rule) picks the trailing "deny"
            reject[sel] = rejects[found]
        return allowed, reject


class Answers:
    """Where the firewall's rejections come from: per ingress segment, the router's MAC
    and first address of each family (the route stage computes them)."""

    def __init__(self, router_mac: np.ndarray, addr4: np.ndarray, addr6_hi: np.ndarray,
                 addr6_lo: np.ndarray) -> None:
        self.router_mac, self.addr4, self.addr6_hi, self.addr6_lo = (
            router_mac, addr4, addr6_hi, addr6_lo)

    def reject(self, meta: np.ndarray, rows: np.ndarray, view: np.ndarray,
               decided: Decisions) -> None:
        """Answer refused packets with ICMP administratively prohibited (RFC 1812 5.2.7.1,
        RFC 4443 3.1), from the router of the segment they came in by."""
        v4 = view["ip_version"] == 4
        r = decided.reply
        r["kind"][rows] = int(ReplyKind.ICMP_ERROR)
        r["type"][rows] = np.where(v4, ADMIN_PROHIBITED4[0], ADMIN_PROHIBITED6[0])
        r["code"][rows] = np.where(v4, ADMIN_PROHIBITED4[1], ADMIN_PROHIBITED6[1])
        r["mtu"][rows] = 0
        segment = meta["segment"][rows].astype(np.int64)
        r["eth_src"][rows] = self.router_mac[segment]
        r["ip4_src"][rows] = self.addr4[segment]
        r["ip6_src_hi"][rows] = self.addr6_hi[segment]
        r["ip6_src_lo"][rows] = self.addr6_lo[segment]
        decided.no_cache(rows)


class ConnTrackPass:
    """Connection tracking for every row a firewall place saw, after the stages, in
    arrival order (a ``Pipeline`` finisher).

    The two firewall places run apart (``firewall-out`` before ``firewall-in`` in
    the graph), so tracking inside them would see a batch's packets out of order:
    an ACK leaving would be tracked before the SYN+ACK that came in just before
    it. Each place records what it saw (``decided.ct_*``: the zone, the packet as
    the rules saw it, their verdict), and this pass tracks them all in row order,
    then drops what the table says must not pass (see the module's table). Per-
    packet verdicts (``invalid``, a refused packet of a known connection) are not
    cached: the next packet of the flow may be fine.

    A hairpinned packet crosses both places, and both records are tracked, the
    sender's (``firewall-out``) just before the receiver's (``firewall-in``): each
    direction of a hairpinned connection is the reply of the other direction's
    other record (the server answers the address it saw, and the client sees the
    public service), and it passes when both do.
    """

    NAME: ClassVar[str] = "conntrack"
    DROPS: ClassVar[type[IntEnum] | None] = FirewallDrop

    def __init__(self, conns: ConnTrack, answers: Answers) -> None:
        self.conns = conns
        self.answers = answers

    def finish(self, batch: Batch, rows: np.ndarray, decided: Decisions) -> None:
        meta = batch.meta
        rows = np.sort(rows[(decided.ct_zone[rows] >= 0) & (meta["drop"][rows] == 0)])
        if not len(rows):
            return
        zones = decided.ct_zone[rows].astype(np.int64)
        allowed = decided.ct_allowed[rows]
        reject = decided.ct_reject[rows]
        first = decided.ct_first_zone[rows] >= 0
        if first.any():
            outcome, slots, first_outcome = self._track_hairpins(rows, first, decided)
        else:
            outcome, slots = self.conns.process(decided.ct_view, rows, zones, allowed)
            first_outcome = outcome
        errors = np.flatnonzero(_icmp_errors(decided.ct_view[rows]))
        if len(errors):  # related: an error passes when the flow it quotes is tracked
            quoted = _quoted(decided.ct_view[rows[errors]], decided.quote[rows[errors]])
            now = int(quoted["timestamp"].max())
            allowed = allowed.copy()
            allowed[errors] = self.conns.peek(quoted, np.arange(len(quoted)), zones[errors], now)
        passes = ((outcome == Outcome.NEW) | (outcome == Outcome.REPLY)
                  | (((outcome == Outcome.ESTABLISHED) | (outcome == Outcome.UNTRACKED))
                     & allowed))
        refused = ~passes & ((outcome == Outcome.DENIED) | (outcome == Outcome.ESTABLISHED)
                             | (outcome == Outcome.UNTRACKED))
        meta["drop"][rows[refused & ~reject]] = FirewallDrop.DENIED
        meta["drop"][rows[outcome == Outcome.INVALID]] = FirewallDrop.INVALID
        meta["drop"][rows[outcome == Outcome.TABLE_FULL]] = FirewallDrop.CONNTRACK_FULL
        if first.any():  # a hairpin its sender's record refuses
            o = first_outcome
            ok = ((o == Outcome.NEW) | (o == Outcome.REPLY)
                  | (((o == Outcome.ESTABLISHED) | (o == Outcome.UNTRACKED))
                     & decided.ct_first_allowed[rows]))
            lost = first & ~ok & (meta["drop"][rows] == 0)
            meta["drop"][rows[lost]] = np.where(o[lost] == Outcome.INVALID,
                                                FirewallDrop.INVALID, FirewallDrop.DENIED)
            decided.no_cache(rows[lost])
        answered = refused & reject
        if answered.any():
            self.answers.reject(meta, rows[answered], decided.ct_view[rows[answered]], decided)
        known = (outcome == Outcome.ESTABLISHED) | (outcome == Outcome.REPLY)
        # DENIED too: refused for want of a connection, which the other side may open
        # next (its packet the reply this one then is); no tag would say so to the cache.
        decided.no_cache(rows[(known & refused) | (outcome == Outcome.INVALID)
                              | (outcome == Outcome.DENIED) | (outcome == Outcome.TABLE_FULL)])
        tracked = slots >= 0
        decided.conn[rows[tracked]] = slots[tracked]
        decided.conn_gen[rows[tracked]] = self.conns.conns["gen"][slots[tracked]]

    def _track_hairpins(self, rows: np.ndarray, first: np.ndarray,
                        decided: Decisions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Track every row's record, with each hairpin's first record just before its
        own; the rows' outcomes and slots, and the first records' outcomes (per row)."""
        at = np.arange(len(rows)) + np.cumsum(first)  # each row's record in the sequence
        before = at[first] - 1  # the first records, just before theirs
        n = len(rows) + len(before)
        view = np.empty(n, dtype=decided.ct_view.dtype)
        zones = np.empty(n, dtype=np.int64)
        allowed = np.empty(n, dtype=bool)
        view[at], view[before] = decided.ct_view[rows], decided.ct_first_view[rows[first]]
        zones[at], zones[before] = decided.ct_zone[rows], decided.ct_first_zone[rows[first]]
        allowed[at] = decided.ct_allowed[rows]
        allowed[before] = decided.ct_first_allowed[rows[first]]
        outcome, slots = self.conns.process(view, np.arange(n), zones, allowed)
        first_outcome = np.full(len(rows), Outcome.NEW, dtype=outcome.dtype)
        first_outcome[first] = outcome[before]
        return outcome[at], slots[at], first_outcome
