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

Dropped decisions are cached like any other: a flow the firewall refused is
refused by its entry from then on, with the same reason counted.
"""

from __future__ import annotations

import numpy as np

from portico.batch import Batch
from portico.datapath.actions import Action, ActionTable, Op, apply
from portico.datapath.flowcache import FlowCache
from portico.datapath.pipeline import Decisions, Pipeline
from portico.datapath.stages.parse import parse
from portico.packet.tcp import FIN, RST, SYN

ICMP_ERRORS = np.zeros(256, dtype=bool)
ICMP_ERRORS[[3, 5, 11, 12]] = True  # ICMPv4: unreachable, redirect, time exceeded, parameter
ICMPV6_ERRORS = np.zeros(256, dtype=bool)
ICMPV6_ERRORS[[1, 2, 3, 4]] = True  # ICMPv6: unreachable, too big, time exceeded, parameter


def needs_stages(meta: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per row: True for packets that must run the stages even when their flow is cached."""
    m = meta[rows]
    tcp_control = (m["protocol"] == 6) & ((m["tcp_flags"] & (SYN | FIN | RST)) != 0)
    icmp_error = ((m["protocol"] == 1) & ICMP_ERRORS[m["icmp_type"]]) | (
        (m["protocol"] == 58) & ICMPV6_ERRORS[m["icmp_type"]])
    return tcp_control | icmp_error | (m["ip_version"] == 0)


class Datapath:
    """A pipeline with a flow cache in front (``cache=None``: every packet runs the stages)."""

    def __init__(self, pipeline: Pipeline, *, cache: FlowCache | None,
                 actions: ActionTable | None = None) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.actions = actions if actions is not None else ActionTable()
        self.counters = {"packets": 0, "hits": 0, "misses": 0, "forced": 0, "uncacheable": 0}
        self._decided: Decisions | None = None

    def process(self, batch: Batch, now: int) -> None:
        """Parse, look up, run the stages for the misses, synthesize, apply: one batch."""
        parse(batch)
        rows = np.arange(batch.count, dtype=np.int64)
        meta = batch.meta
        live = rows[meta["drop"][: batch.count] == 0]
        self.counters["packets"] += batch.count
        hit_rows = np.zeros(0, dtype=np.int64)
        hit_ids = np.zeros(0, dtype=np.int64)
        miss_rows = live
        if self.cache is not None and len(live):
            forced = needs_stages(meta, live)
            self.counters["forced"] += int(forced.sum())
            candidates = live[~forced]
            entries = self.cache.lookup(meta, candidates, now)
            hit = entries >= 0
            hit_rows = candidates[hit]
            hit_ids = self.cache.entries["action"][entries[hit]].astype(np.int64)
            miss_rows = np.concatenate([live[forced], candidates[~hit]])
        self.counters["hits"] += len(hit_rows)
        self.counters["misses"] += len(miss_rows)
        if len(miss_rows):
            miss_ids = self._stages(batch, miss_rows, now)
            apply(batch, miss_rows, miss_ids, self.actions)
        if len(hit_rows):
            apply(batch, hit_rows, hit_ids, self.actions)

    def _stages(self, batch: Batch, rows: np.ndarray, now: int) -> np.ndarray:
        """Run the stages for ``rows``; synthesize and cache their decisions; the action ids."""
        if self._decided is None or len(self._decided.actions) < batch.capacity:
            self._decided = Decisions(batch.capacity)
        decided = self._decided
        decided.reset(rows)
        self.pipeline.run(batch, rows, decided)
        pending = decided.actions[rows]
        dropped = batch.meta["drop"][rows]
        # A stage's drop is part of the decision: cache it as a drop with its reason.
        refused = dropped != 0
        pending["ops"][refused] = int(Op.DROP)
        pending["reason"][refused] = dropped[refused]
        kinds, which = np.unique(pending, return_inverse=True)
        ids = np.array([self.actions.add(_action(kind)) for kind in kinds], dtype=np.int64)
        action_ids = ids[which.reshape(-1)]
        if self.cache is not None:
            cacheable = ~decided.overflow[rows]
            self.counters["uncacheable"] += int((~cacheable).sum())
            keep = rows[cacheable]
            self.cache.insert(batch.meta, keep, action_ids[cacheable], decided.tags[keep], now)
        # The stages' drops are already on the rows; apply leaves dropped rows alone.
        return action_ids


def _action(record: np.void) -> Action:
    ops = Op(int(record["ops"]))
    if Op.DROP in ops:  # a drop carries nothing else
        return Action(ops=Op.DROP, reason=int(record["reason"]))
    return Action(
        ops=ops, ip_src=int(record["ip_src"]), ip_dst=int(record["ip_dst"]),
        sport=int(record["sport"]), dport=int(record["dport"]),
        eth_src=int(record["eth_src"]), eth_dst=int(record["eth_dst"]),
        vlan_tci=int(record["vlan_tci"]),
        out_port=int(record["out_port"]) if Op.OUTPUT in ops else -1,
    )
