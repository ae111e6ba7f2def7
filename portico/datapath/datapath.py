"""The datapath: parse, the flow cache in front, the stages behind it, one way to apply.

Theory of operation (capability 4, the synthesizing flow cache). A batch is
parsed, then split in two:

* **hits**: packets whose flow has a cache entry made under the current
  tables. The entry holds an action id; the actions are applied to all hits in
  one compiled step (``portico.datapath.actions.apply``).
* **misses**: the rest, and every packet that must see the stages whatever
  the cache holds: TCP SYN, FIN and RST (they change connection state), ICMP
  errors (they speak about another flow), ARP, and anything not IP. These run
  through the pipeline's stages, which do not touch the packet but *record*
  what they decide (``pipeline.Decisions``): a pending action per row and the
  tags of what the decision rests on. A stage's drop is recorded too.

The records are then *synthesized*: each distinct pending action becomes one
interned ``Action`` (equal decisions share an id), the flow's entry is
inserted into the cache with that id and the tags, and the miss rows get
their actions applied by the very step that applies hits. The first packet of
a flow and its thousandth are therefore changed by the same code from the
same data, which is what makes "output with the cache equals output without
it" hold by construction; the tests check it on random traffic anyway.

Staleness is the cache's business: entries carry the generation they were
made under and their tags, so ``FlowCache.bump_generation`` (any change) or
``invalidate_tags`` (a change to exactly those rules, routes or bindings)
makes the next packet of an affected flow take the miss path again.

The hit path is one compiled call (``_front``): parse, placement (the key
holds the tenant), triage, lookup, the split into hits and misses, and the
hits' actions. Each Numba call costs its dispatch and the unboxing of its
arguments whatever the rows (measured with no rows: 0.5 µs for the triage,
1.4 µs for the lookup), and the selections between them cost NumPy calls of
their own: with one call instead of six, a batch of 256 hits went from ~62 to
~50 µs (``portico bench --workload pipeline-hit``). The hits wait for the misses only when a forced
row closes a connection: then some may have to see the stages after the
close (``_after_a_close``), so their actions are applied after the stages.

Dropped decisions are cached like any other: a flow the firewall refused is
refused by its entry from then on, with the same reason counted. (Unless a
stage says the decision holds for the packet only, ``Decisions.no_cache``: a
drop that rests on state no tag follows, such as a missing NAT binding or a
missing connection. State of that kind behind a forwarding decision, a TCP
connection's, the cache checks on every hit: an entry keeps the connection
slot and generation its decision rests on, ``decided.conn``/``conn_gen``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Protocol

import numpy as np
from numba import njit

from portico import drops
from portico.batch import Batch
from portico.datapath import icmp_quote, replies
from portico.datapath.actions import ActionTable, Op, apply, apply_kernel
from portico.datapath.flowcache import FlowCache, lookup_kernel
from portico.datapath.pipeline import Decisions, Pipeline
from portico.datapath.stages.ingress import classify, classify_rows, every_row
from portico.datapath.stages.parse import parse, parse_rows
from portico.datapath.topology import Topology
from portico.packet.tcp import FIN, RST, SYN

ICMP_ERRORS = np.zeros(256, dtype=np.bool_)
ICMP_ERRORS[[3, 5, 11, 12]] = True  # ICMPv4: unreachable, redirect, time exceeded, parameter
ICMPV6_ERRORS = np.zeros(256, dtype=np.bool_)
ICMPV6_ERRORS[[1, 2, 3, 4]] = True  # ICMPv6: unreachable, too big, time exceeded, parameter
CONTROL_FLAGS = SYN | FIN | RST


class DatapathDrop(IntEnum):
    """Drops of the datapath itself (codes 136..139)."""

    UNRESOLVED = 136  # held for a neighbour, but no one holds packets (no on_hold)


drops.register("datapath", DatapathDrop)


class HoldHandler(Protocol):
    """Takes the rows a stage held for a neighbour (``decided.hold`` says which)."""

    def __call__(self, batch: Batch, rows: np.ndarray, decided: Decisions) -> None: ...


class TagSource(Protocol):
    """State the stages change as packets pass (learned MACs, neighbours): the
    dependency tags whose cached decisions the changes since the last call undo."""

    def take_changed_tags(self) -> np.ndarray: ...


@njit(cache=True, inline="always")
def _must_see_stages(m, longest) -> bool:  # type: ignore[no-untyped-def]
    """TCP SYN/FIN/RST, ICMP errors, non-IP packets, and packets a router must look at
    itself (TTL about to expire, longer than ``longest``) run the stages whatever is cached."""
    if m.ip_version == 0:
        return True
    if m.ttl <= 1 or m.l3_length > longest:
        return True
    if m.protocol == 6:
        return (m.tcp_flags & CONTROL_FLAGS) != 0
    if m.protocol == 1:
        return ICMP_ERRORS[m.icmp_type]
    if m.protocol == 58:
        return ICMPV6_ERRORS[m.icmp_type]
    return False


@njit(cache=True)
def _triage(meta, count, candidates, forced, longest):  # type: ignore[no-untyped-def]
    """Sort the live rows into cache candidates and rows that must see the stages."""
    n_candidates = 0
    n_forced = 0
    for i in range(count):
        m = meta[i]
        if m.drop != 0:
            continue
        if _must_see_stages(m, longest):
            forced[n_forced] = i
            n_forced += 1
        else:
            candidates[n_candidates] = i
            n_candidates += 1
    return n_candidates, n_forced


@njit(cache=True)
def _closes(meta, forced, n_forced):  # type: ignore[no-untyped-def]
    """Is any forced row a TCP FIN or RST?"""
    found = False
    for k in range(n_forced):
        m = meta[forced[k]]
        if m.protocol == 6 and (m.tcp_flags & (FIN | RST)) != 0:
            found = True
    return found


@njit(cache=True)
def _front(data, meta, count, drop_later_fragments, classifying, every, port_index,  # type: ignore[no-untyped-def]
           by_port_vlan, vni_keys, vni_attachment, attachment_segment, segment_tenant,
           tunnelled, longest, now, sig, entries, ctl, conns, open_state, records, candidates,
           misses, hit_rows, hit_ids, hit_entries):
    """The hit path in one call: parse, place (tenant), triage, look up, split, and
    apply the hits' actions, unless a forced row closes a connection (then the hits
    wait: some may have to see the stages after the close, ``_after_a_close``).
    Returns (forced, hits, misses, hits applied)."""
    parse_rows(data, meta, count, drop_later_fragments)
    if classifying:
        classify_rows(meta, every, port_index, by_port_vlan, vni_keys, vni_attachment,
                      attachment_segment, segment_tenant, False, tunnelled)
    n_candidates, n_forced = _triage(meta, count, candidates, misses, longest)
    found = lookup_kernel(meta, candidates[:n_candidates], now, sig, entries, ctl, conns,
                          open_state)
    n_hit = 0
    n_miss = n_forced
    for k in range(n_candidates):
        e = found[k]
        if e >= 0:
            hit_rows[n_hit] = candidates[k]
            hit_ids[n_hit] = entries[e].action
            hit_entries[n_hit] = e
            n_hit += 1
        else:
            misses[n_miss] = candidates[k]
            n_miss += 1
    applied = n_hit > 0 and not _closes(meta, misses, n_forced)
    if applied:
        apply_kernel(data, meta, hit_rows, hit_ids, records, n_hit)
    return n_forced, n_hit, n_miss, applied


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class _Nowhere:
    """The placement arrays of no topology, for a datapath without one (nothing is
    placed). Typed as a ``Topology``'s, so the hit-path kernel compiles once."""

    port_index = _frozen(np.zeros(0, dtype=np.int32))
    by_port_vlan = _frozen(np.zeros((0, 1), dtype=np.int32))
    vni_keys = _frozen(np.zeros(0, dtype=np.uint32))
    vni_attachment = attachment_segment = segment_tenant = _frozen(np.zeros(0, dtype=np.int32))


class Datapath:
    """A pipeline with a flow cache in front (``cache=None``: every packet runs the stages)."""

    def __init__(self, pipeline: Pipeline, *, cache: FlowCache | None,
                 actions: ActionTable | None = None, topology: Topology | None = None,
                 tag_sources: Sequence[TagSource] = (), min_mtu: int = 65535,
                 on_hold: HoldHandler | None = None) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.actions = actions if actions is not None else ActionTable()
        self.topology = topology
        self.tag_sources = tuple(tag_sources)
        self.min_mtu = min_mtu
        self.on_hold = on_hold
        self.counters = {"packets": 0, "hits": 0, "misses": 0, "forced": 0, "uncacheable": 0}
        self._decided: Decisions | None = None
        self._rows: tuple[np.ndarray, ...] | None = None

    def process(self, batch: Batch, now: int) -> None:
        """Parse, classify, look up, run the stages for the misses, synthesize, apply."""
        self._process(batch, now)
        if self.cache is not None:
            # What the stages learned (a MAC moved, a neighbour resolved) reaches the
            # cache between batches: entries resting on the old state go.
            for source in self.tag_sources:
                changed = source.take_changed_tags()
                if len(changed):
                    self.cache.invalidate_tags(changed)

    def _process(self, batch: Batch, now: int) -> None:
        parse(batch)
        if self.topology is not None:
            # The flow key holds the tenant: it must be known before the lookup.
            classify(batch, self.topology)
        count = batch.count
        meta = batch.meta
        self.counters["packets"] += count
        if self.cache is None:
            miss_rows = np.flatnonzero(meta["drop"][:count] == 0)
            self.counters["misses"] += len(miss_rows)
            if len(miss_rows):
                apply(batch, miss_rows, self._stages(batch, miss_rows, now), self.actions)
                self._answer_and_hold(batch, miss_rows)
            return
        scratch = self._scratch(count)
        candidates, misses, hit_rows, hit_ids, hit_entries, tunnelled = scratch
        topology = self.topology
        places = topology if topology is not None else _Nowhere
        sig, entries, ctl, connections, open_states = self.cache.tables
        n_forced, n_hit, n_miss, applied = _front(
            batch.data, meta, count, True, topology is not None, every_row(count),
            places.port_index, places.by_port_vlan, places.vni_keys, places.vni_attachment,
            places.attachment_segment, places.segment_tenant, tunnelled, self.min_mtu, now,
            sig, entries, ctl, connections, open_states, self.actions.records[: self.actions.count],
            candidates, misses, hit_rows, hit_ids, hit_entries)
        self.counters["forced"] += n_forced
        self.counters["hits"] += n_hit
        self.counters["misses"] += n_miss
        hit_rows, hit_ids = hit_rows[:n_hit], hit_ids[:n_hit]
        miss_rows = misses[:n_miss]
        if n_hit and not applied:
            late = self._after_a_close(meta, misses[:n_forced], hit_rows, hit_entries[:n_hit])
            if late.any():  # they see the stages, in order with the close, as uncached
                self.counters["hits"] -= int(late.sum())
                self.counters["misses"] += int(late.sum())
                miss_rows = np.concatenate([miss_rows, hit_rows[late]])
                hit_rows, hit_ids = hit_rows[~late], hit_ids[~late]
        if len(miss_rows):
            # In arrival order, as without the cache: stages that hand out state (NAT
            # ports, connections) must meet the rows in the same order either way.
            miss_rows = np.sort(miss_rows)
            apply(batch, miss_rows, self._stages(batch, miss_rows, now), self.actions)
            self._answer_and_hold(batch, miss_rows)
        if len(hit_rows) and not applied:
            apply(batch, hit_rows, hit_ids, self.actions)

    def _scratch(self, count: int) -> tuple[np.ndarray, ...]:
        """The hit path's row arrays, kept from batch to batch (grown when one is bigger)."""
        if self._rows is None or len(self._rows[0]) < count:
            size = max(count, 256)
            self._rows = (*(np.empty(size, dtype=np.int64) for _ in range(5)),
                          np.empty(size, dtype=np.bool_))
        return self._rows

    def _after_a_close(self, meta: np.ndarray, forced: np.ndarray, hit_rows: np.ndarray,
                       hit_entries: np.ndarray) -> np.ndarray:
        """Which hits come after a FIN or RST, in the same batch, of the connection their
        entry rests on. The lookups precede the stages, so those hits were found before
        the close was tracked; they must see the stages after it, as they would have
        without the cache. The close's connection is the one its own flow's entry names
        (``peek``: the close itself is never looked up)."""
        assert self.cache is not None
        closing = forced[(meta["protocol"][forced] == 6)
                         & ((meta["tcp_flags"][forced] & (FIN | RST)) != 0)]
        if not len(closing):
            return np.zeros(len(hit_rows), dtype=bool)
        found = self.cache.peek(meta, closing)
        conns = np.where(found >= 0, self.cache.entries["conn"][np.maximum(found, 0)], -1)
        known = conns >= 0
        if not known.any():
            return np.zeros(len(hit_rows), dtype=bool)
        first: dict[int, int] = {}  # connection -> the row of its first close in the batch
        for conn, row in zip(conns[known].tolist(), closing[known].tolist(), strict=True):
            first.setdefault(conn, row)
        theirs = self.cache.entries["conn"][hit_entries].astype(np.int64)
        late = np.isin(theirs, conns[known])
        if late.any():  # closes are few: a dict lookup per candidate
            idx = np.flatnonzero(late)
            late[idx] = hit_rows[idx] > np.array([first[int(c)] for c in theirs[idx]])
        return late

    def compact_actions(self, slack: int = 4) -> bool:
        """Forget actions no cache entry uses, once the table holds ``slack`` times more
        than the entries do: NAT gives every flow an action of its own, so without this
        the table would grow with every flow ever seen. Between batches only (ids held
        by a batch in flight would dangle). Returns whether it compacted."""
        cached = len(self.cache) if self.cache is not None else 0
        if len(self.actions) <= slack * max(1024, cached):  # the cheap test first
            return False
        in_use = (np.unique(self.cache.entries["action"][self.cache.occupied()])
                  if self.cache is not None else np.zeros(0, dtype=np.int64))
        fresh = ActionTable(max(64, 2 * len(in_use)))
        new_ids = fresh.add_records(self.actions.records[in_use])
        if self.cache is not None:
            remap = np.full(len(self.actions), -1, dtype=np.int64)
            remap[in_use] = new_ids
            occupied = self.cache.occupied()
            entries = self.cache.entries
            entries["action"][occupied] = remap[entries["action"][occupied]]
        self.actions = fresh
        return True

    def _answer_and_hold(self, batch: Batch, rows: np.ndarray) -> None:
        """The decisions that are not rewrites: answers built in place, packets held."""
        decided = self._decided
        assert decided is not None
        live = batch.meta["drop"][rows] == 0
        quoted = rows[live & (decided.quote["side"][rows] != 0)]
        if len(quoted):
            icmp_quote.rewrite(batch.data, batch.meta, quoted, decided.quote)
        answered = rows[live & (decided.reply["kind"][rows] != 0)]
        if len(answered):
            replies.build(batch, answered, decided.reply)
        held = rows[live & (decided.hold["version"][rows] != 0)]
        if len(held):
            if self.on_hold is None:
                batch.meta["drop"][held] = int(DatapathDrop.UNRESOLVED)
            else:
                self.on_hold(batch, held, decided)

    def _stages(self, batch: Batch, rows: np.ndarray, now: int) -> np.ndarray:
        """Run the stages for ``rows``; synthesize and cache their decisions; the action ids."""
        if self._decided is None or len(self._decided.actions) < batch.capacity:
            self._decided = Decisions(batch.capacity)
        decided = self._decided
        decided.reset(rows)
        self.pipeline.run(batch, rows, decided)
        pending = decided.actions[rows]
        # Answers and held packets are not rewritten: they get the empty action.
        aside = (decided.reply["kind"][rows] != 0) | (decided.hold["version"][rows] != 0)
        pending[aside] = np.zeros(1, dtype=pending.dtype)[0]
        pending["out_port"][aside] = -1
        dropped = batch.meta["drop"][rows]
        # A stage's drop is part of the decision: cache it as a drop with its reason.
        refused = dropped != 0
        pending["ops"][refused] = int(Op.DROP)
        pending["reason"][refused] = dropped[refused]
        action_ids = self.actions.add_records(pending)
        if self.cache is not None:
            cacheable = ~decided.overflow[rows]
            self.counters["uncacheable"] += int((~cacheable).sum())
            keep = rows[cacheable]
            if len(keep):  # none (a batch of ARP, say): nothing to insert
                made = self.cache.insert(batch.meta, keep, action_ids[cacheable],
                                         decided.tags[keep], now)
                ok = made >= 0
                entries = self.cache.entries
                entries["nat_binding"][made[ok]] = decided.binding[keep[ok]]
                entries["conn"][made[ok]] = decided.conn[keep[ok]]
                entries["conn_gen"][made[ok]] = decided.conn_gen[keep[ok]]
        # The stages' drops are already on the rows; apply leaves dropped rows alone.
        return action_ids
