"""The pipeline: stages wired into a graph, a batch dispatched through it, and its counters.

Theory of operation. As in VPP, a stage is one function over many packets: it
gets a Batch and the rows that reached it, and writes one decision per row,
the index of the stage each packet goes to next in its ``NEXT`` list (or
``DONE`` when the packet leaves: an output port was set, or it was dropped by
setting ``meta["drop"]``). A stage declares, as data at the top of its file,
its ``NAME``, its ``NEXT`` stages and its ``DROPS`` (an ``IntEnum`` registered
with ``portico.drops``), so the graph and the drop reasons can be read
without running anything.

The pipeline checks the graph once, when it is built (unknown next stages,
duplicate names and cycles are refused, naming them), and orders the stages
topologically. Running a batch is then one pass over that order: each stage
gets the rows whose current stage it is, as one selection, and its decisions
move them on. A stage therefore runs at most once per batch, however the
packets spread over the graph, and never loops per packet.

Stages decide; they do not rewrite. What a stage wants done to a packet
(route it out of a port, translate its source, drop it) it records in the
``Decisions`` of the run: a pending ``Action`` per row, plus the dependency
tags (rule, route, NAT binding ids) its decision rests on. The datapath turns
a flow's records into one cache entry and applies it the same way for the
first packet and for every later one (``portico.datapath.datapath``). So a
stage sees the packet as it was received, not as earlier stages will leave
it; a stage that must see another's effect reads it from ``Decisions``.

For every stage it counts what ``vppctl show runtime`` shows: calls, packets,
packets per call, time per packet, and drops by reason (a row dropped while in
a stage is that stage's drop). Rows whose ``trace`` flag is set leave a line
per stage in a bounded trace log: which stage, and where the packet went.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Protocol

import numpy as np
from numba import njit

from portico import drops
from portico.batch import META_DTYPE, Batch
from portico.datapath.actions import ACTION_DTYPE, Op
from portico.datapath.flowcache import MAX_TAGS, NO_TAG
from portico.datapath.icmp_quote import QUOTE_DTYPE
from portico.datapath.replies import REPLY_DTYPE

# A packet held for an unresolved next hop: the neighbour it waits for.
HOLD_DTYPE = np.dtype([("version", "u1"), ("domain", "i4"), ("hi", "u8"), ("lo", "u8")],
                      align=True)

DONE = -1  # a decision: the packet leaves the pipeline (output set, or dropped)
TRACE_LIMIT = 10_000  # trace lines kept; the oldest go first


class Stage(Protocol):
    """One network function. Implementations declare the three class attributes."""

    NAME: ClassVar[str]
    NEXT: ClassVar[tuple[str, ...]]
    DROPS: ClassVar[type[IntEnum] | None]

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        """Decide for every row: ``decision[k]`` = index into NEXT for ``rows[k]``, or DONE;
        record what is to be done to the packet in ``decided``."""


SET_IP_SRC, SET_IP_DST = int(Op.SET_IP_SRC), int(Op.SET_IP_DST)
SET_SPORT, SET_DPORT = int(Op.SET_SPORT), int(Op.SET_DPORT)


@njit(cache=True)
def _effective(meta, rows, actions, domain, view):  # type: ignore[no-untyped-def]
    """view[k] = meta[rows[k]] with the recorded rewrites and domain applied."""
    for k in range(rows.shape[0]):
        r = rows[k]
        view[k] = meta[r]
        v = view[k]
        a = actions[r]
        ops = np.int64(a.ops)
        if ops & SET_IP_SRC:
            v.src4 = a.ip_src
        if ops & SET_IP_DST:
            v.dst4 = a.ip_dst
        if ops & SET_SPORT:
            v.sport = a.sport
            if v.protocol == 1:  # an ICMP echo's identifier is both ports, as parse has it
                v.dport = a.sport
        if ops & SET_DPORT:
            v.dport = a.dport
        if domain[r] >= 0:
            v.tenant = domain[r]


class Decisions:
    """What the stages decided for the rows of one batch: pending actions and tags.

    ``actions`` holds one ``ACTION_DTYPE`` record per batch row; stages OR
    operations into ``ops`` and set the fields they need. ``tags`` holds up to
    ``MAX_TAGS`` dependency tags per row; a row that collects more is marked
    ``overflow`` and must not be cached (its invalidation could not be exact).
    ``overflow`` is also how a stage says "decided for this packet only"
    (``no_cache``): an answer, a packet held for a neighbour.

    Three decisions are not rewrites of the packet, and take it off the
    action path: ``reply`` (a ``replies.REPLY_DTYPE`` record, kind != NONE:
    the gateway answers the packet in place, an ARP reply or an ICMP error),
    and ``hold`` (version != 0: the packet waits for the neighbour
    ``hold_hi``/``hold_lo`` of domain ``hold_domain`` to be resolved).
    ``quote`` (side != 0) asks for the packet an ICMP error quotes to be
    rewritten after the actions (NAT's half of an error, ``icmp_quote``).
    ``domain`` is the routing domain (tenant id) a packet is in, once a stage
    moved it between domains (NAT into another tenant); -1 until then.
    ``defer_drop`` records a drop a stage wants unless a finisher (connection
    tracking) finds a reason of its own first: the finisher's verdict, when it
    has one, names the drop better (an ACK with no binding is, first of all,
    an ACK with no connection).
    ``binding`` (a NAT binding) and ``conn`` (a tracked connection) are the
    per-flow state a decision used, -1 for none: a cache entry keeps them so
    that hits keep them alive.
    """

    def __init__(self, capacity: int) -> None:
        self.actions = np.zeros(capacity, dtype=ACTION_DTYPE)
        self.tags = np.full((capacity, MAX_TAGS), NO_TAG, dtype=np.uint32)
        self.tag_count = np.zeros(capacity, dtype=np.int64)
        self.overflow = np.zeros(capacity, dtype=bool)
        self.domain = np.full(capacity, -1, dtype=np.int32)
        self.reply = np.zeros(capacity, dtype=REPLY_DTYPE)
        self.quote = np.zeros(capacity, dtype=QUOTE_DTYPE)
        self.hold = np.zeros(capacity, dtype=HOLD_DTYPE)
        self.binding = np.full(capacity, -1, dtype=np.int64)
        self.conn = np.full(capacity, -1, dtype=np.int64)
        self.conn_gen = np.zeros(capacity, dtype=np.uint16)
        self.deferred: list[tuple[np.ndarray, int, str]] = []  # (rows, reason, stage)
        # What a firewall place asks connection tracking to decide after the stages.
        self.ct_zone = np.full(capacity, -1, dtype=np.int32)
        self.ct_allowed = np.zeros(capacity, dtype=bool)
        self.ct_reject = np.zeros(capacity, dtype=bool)
        self.ct_view = np.zeros(capacity, dtype=META_DTYPE)
        # A hairpinned packet's first record (``firewall-out``'s, as it left its tenant),
        # kept when ``firewall-in`` writes its own: both are tracked. Zone -1: none.
        self.ct_first_zone = np.full(capacity, -1, dtype=np.int32)
        self.ct_first_allowed = np.zeros(capacity, dtype=bool)
        self.ct_first_view = np.zeros(capacity, dtype=META_DTYPE)

    def reset(self, rows: np.ndarray) -> None:
        self.actions[rows] = np.zeros(1, dtype=ACTION_DTYPE)[0]
        self.actions["out_port"][rows] = -1
        self.tags[rows] = NO_TAG
        self.tag_count[rows] = 0
        self.overflow[rows] = False
        self.domain[rows] = -1
        self.reply["kind"][rows] = 0
        self.quote["side"][rows] = 0
        self.hold["version"][rows] = 0
        self.binding[rows] = -1
        self.conn[rows] = -1
        self.conn_gen[rows] = 0
        self.deferred.clear()
        self.ct_zone[rows] = -1
        self.ct_first_zone[rows] = -1

    def defer_drop(self, rows: np.ndarray, reason: int, stage: str) -> None:
        """Drop ``rows`` for ``reason`` after the finishers, unless one drops them first."""
        self.deferred.append((np.asarray(rows, dtype=np.int64), int(reason), stage))

    def no_cache(self, rows: np.ndarray) -> None:
        """These rows' decisions hold for this packet only: keep them out of the cache."""
        self.overflow[rows] = True

    def effective(self, meta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """A copy of ``meta[rows]`` as the packets will be after the rewrites recorded so
        far (addresses, ports) and in the domain a stage moved them to (``tenant``):
        what a later stage must decide on, since stages see packets as received."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        view = np.empty(len(rows), dtype=meta.dtype)
        _effective(meta, rows, self.actions, self.domain, view)
        return view

    def add_tag(self, rows: np.ndarray, tags: np.ndarray | int) -> None:
        """Record that the decision for each row rests on ``tags`` (one per row, or one)."""
        rows = np.asarray(rows, dtype=np.int64)
        values = np.broadcast_to(np.asarray(tags, dtype=np.uint32), rows.shape)
        slot = self.tag_count[rows]
        room = slot < MAX_TAGS
        self.tags[rows[room], slot[room]] = values[room]
        self.tag_count[rows[room]] += 1
        self.overflow[rows[~room]] = True


class Finisher(Protocol):
    """Work that must see every row of the run in arrival order, whichever stages the
    rows went through (connection tracking, whose two firewall places run apart)."""

    NAME: ClassVar[str]
    DROPS: ClassVar[type[IntEnum] | None]

    def finish(self, batch: Batch, rows: np.ndarray, decided: Decisions) -> None: ...


class PipelineError(ValueError):
    """The stage graph is wrong; the message names the stage."""


@dataclass
class StageCounters:
    calls: int = 0
    packets: int = 0
    nanoseconds: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def packets_per_call(self) -> float:
        return self.packets / self.calls if self.calls else 0.0

    @property
    def ns_per_packet(self) -> float:
        return self.nanoseconds / self.packets if self.packets else 0.0


@dataclass(frozen=True)
class TraceLine:
    row: int
    stage: str
    outcome: str  # the next stage's name, "done", or "drop: <reason>"


class Pipeline:
    """Stages wired by their NEXT names, entered at ``entry``."""

    def __init__(self, stages: Sequence[Stage], *, entry: str,
                 finishers: Sequence[Finisher] = ()) -> None:
        by_name: dict[str, int] = {}
        for index, stage in enumerate(stages):
            if stage.NAME in by_name:
                raise PipelineError(f"stages: two stages are named {stage.NAME!r}")
            by_name[stage.NAME] = index
        if entry not in by_name:
            raise PipelineError(f"entry: no stage named {entry!r}")
        for stage in stages:
            for name in stage.NEXT:
                if name not in by_name:
                    raise PipelineError(f"stages.{stage.NAME}.next: no stage named {name!r}")
        self.stages = list(stages)
        self.entry = by_name[entry]
        # next_of[s][d]: the stage index decision d of stage s leads to.
        self.next_of = [np.array([by_name[n] for n in s.NEXT] or [DONE], dtype=np.int64)
                        for s in stages]
        self.order = self._topological(by_name)
        self.finishers = list(finishers)
        names = [stage.NAME for stage in stages] + [f.NAME for f in self.finishers]
        self.counters = {name: StageCounters() for name in names}
        self.trace: list[TraceLine] = []

    def _topological(self, by_name: dict[str, int]) -> list[int]:
        """Stage indices with every stage before the stages it leads to; cycles refused."""
        state = [0] * len(self.stages)  # 0 new, 1 on the path, 2 done
        order: list[int] = []

        def visit(index: int, path: list[str]) -> None:
            if state[index] == 2:
                return
            name = self.stages[index].NAME
            if state[index] == 1:
                loop = " -> ".join([*path[path.index(name):], name])
                raise PipelineError(f"stages: the graph has a cycle: {loop}")
            state[index] = 1
            for next_name in self.stages[index].NEXT:
                visit(by_name[next_name], [*path, name])
            state[index] = 2
            order.append(index)

        for index in range(len(self.stages)):
            visit(index, [])
        return order[::-1]

    def run(self, batch: Batch, rows: np.ndarray | None = None,
            decided: Decisions | None = None) -> Decisions:
        """Send ``rows`` (all of the batch by default) through the graph from the entry.

        Returns the stages' decisions (in ``decided`` if given, else a fresh one).
        """
        rows = np.arange(batch.count, dtype=np.int64) if rows is None else np.asarray(
            rows, dtype=np.int64)
        if decided is None:
            decided = Decisions(batch.capacity)
            decided.reset(rows)
        current = np.full(len(rows), self.entry, dtype=np.int64)
        drop_column = batch.meta["drop"]
        for index in self.order:
            here = np.flatnonzero(current == index)
            if not len(here):
                continue
            stage = self.stages[index]
            selected = rows[here]
            decision = np.full(len(here), DONE, dtype=np.int64)
            began = time.perf_counter_ns()
            stage.process(batch, selected, decision, decided)
            spent = time.perf_counter_ns() - began
            counters = self.counters[stage.NAME]
            counters.calls += 1
            counters.packets += len(here)
            counters.nanoseconds += spent
            dropped = drop_column[selected] != 0
            if dropped.any():
                for reason, n in drops.count(drop_column[selected][dropped]).items():
                    counters.drops[reason] = counters.drops.get(reason, 0) + n
            going = np.where(decision >= 0, self.next_of[index][np.maximum(decision, 0)], DONE)
            going[dropped] = DONE
            current[here] = going
            self._trace(batch, selected, going, dropped, stage.NAME)
        for finisher in self.finishers:
            before = drop_column[rows] != 0
            began = time.perf_counter_ns()
            finisher.finish(batch, rows, decided)
            counters = self.counters[finisher.NAME]
            counters.calls += 1
            counters.packets += len(rows)
            counters.nanoseconds += time.perf_counter_ns() - began
            now_dropped = (drop_column[rows] != 0) & ~before
            if now_dropped.any():
                for reason, n in drops.count(drop_column[rows][now_dropped]).items():
                    counters.drops[reason] = counters.drops.get(reason, 0) + n
                gone = rows[now_dropped]
                for k in np.flatnonzero(batch.meta["trace"][gone] != 0):
                    self.trace.append(TraceLine(int(gone[k]), finisher.NAME, "drop: " + drops.name(
                        batch.meta["drop"][gone[k]])))
        for deferred, code, owner in decided.deferred:  # what no finisher dropped
            still = deferred[drop_column[deferred] == 0]
            if len(still):
                drop_column[still] = code
                decided.no_cache(still)
                counted = self.counters[owner]
                reason = drops.name(code)
                counted.drops[reason] = counted.drops.get(reason, 0) + len(still)
        return decided

    def _trace(self, batch: Batch, selected: np.ndarray, going: np.ndarray,
               dropped: np.ndarray, name: str) -> None:
        marked = np.flatnonzero(batch.meta["trace"][selected] != 0)
        for k in marked:  # traced packets only: a handful, not the hit path
            if dropped[k]:
                outcome = "drop: " + drops.name(batch.meta["drop"][selected[k]])
            elif going[k] == DONE:
                outcome = "done"
            else:
                outcome = self.stages[going[k]].NAME
            self.trace.append(TraceLine(int(selected[k]), name, outcome))
        if len(self.trace) > TRACE_LIMIT:
            del self.trace[: len(self.trace) - TRACE_LIMIT]

    def runtime(self) -> str:
        """Per-stage counters as a table, in pipeline order (like ``vppctl show runtime``)."""
        lines = [f"{'stage':<20}{'calls':>10}{'packets':>12}{'pkts/call':>11}{'ns/pkt':>9}"
                 "  drops"]
        for name in [*(self.stages[i].NAME for i in self.order),
                     *(f.NAME for f in self.finishers)]:
            c = self.counters[name]
            dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(c.drops.items()))
            lines.append(f"{name:<20}{c.calls:>10}{c.packets:>12}{c.packets_per_call:>11.1f}"
                         f"{c.ns_per_packet:>9.0f}  {dropped or '-'}")
        return "\n".join(lines)
