"""The batch classifier: the first matching rule for every packet, in one compiled pass.

Theory of operation.

*Bitsets.* Number the rules in match order (``RuleSet.ordered``): the answer for
a packet is the lowest rule whose bit is set in the AND of one bitset per
dimension. For each dimension, every value a packet can have maps to a row of
rule bits:

* source and destination address: the container store maps an address to its
  *class* (the set of containers and rule literals holding it) through its LPM
  table, one lookup per address. Each class has a row for its use as a source
  (rules whose source is any of the class's keys, or "any") and one as a
  destination.
* protocol: a row per protocol number.
* source and destination port, ICMP type/code (``type << 8 | code``): the values fall into
  elementary intervals between the rules' bounds, and a table maps each value
  to its interval's row. Packets without ports (or that are not ICMP) get one
  more row: the rules with no constraint on that dimension.

*Partitions.* Rules that accept "any" source or destination, or any
protocol, make those rows dense, and a first-match search over dense rows
walks many words before it finds a rule that all dimensions agree on. So the
destination port, which nearly every rule constrains, is also a *cut*: its
elementary intervals are grouped by the set of rules they admit, and each
distinct set is a partition with its own, local, bit numbering (in match
order). A packet's destination port picks its partition, and the search runs
over that partition's few words only: with 10,000 rules spread over a couple
of hundred service ports, two or three words instead of 157. A partition's
words are a column range of every row, so a class's row is still computed
once (an OR of its keys' rows) whatever the number of partitions.

Partitions cost memory: every row is as wide as all partitions together, and
a rule admitted by many intervals is in many partitions. So the classifier
partitions only when the tables fit ``memory_budget``; otherwise it keeps one
partition holding every rule. The destination port stays a row as well, so
both layouts answer the same (the row is redundant inside a port partition).

*Summaries.* Beside the rows, one bit per 64-bit word of a row (per
partition) says whether the word is non-zero. The kernel ANDs the
summaries of the five rows first and then only the candidate words,
stopping at the first rule found.

*Changes.* The container store tells the classifier when a class comes into
use or is released; only that class's two rows are computed, so adding or
removing an address costs the few LPM entries and rows it touches. A change
of rules renumbers them and rebuilds the rule-indexed rows (the trie, the
classes and the LPM tables stay as they are). All rows live in one 2-D
array, because a Numba call pays per argument.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.classify.containers import ContainerStore, Literal
from portico.classify.lpm4 import NO_MATCH, lookup4
from portico.classify.rules import Rule, RuleSet

NO_RULE = -1
PORTLESS = 65536  # the extra value of the port dimensions: packets without ports
NOT_ICMP = 65536  # the extra value of the ICMP dimension
VALUES = 65537  # values per dimension in ``value_row``, the extra one included
SMALL_PART = 8  # partitions of up to this many words are searched without summaries
DEFAULT_MEMORY_BUDGET = 512 << 20  # bytes of rows a classifier may use to partition
Span = Callable[[Rule], tuple[int, int]]
Test = Callable[[Rule], bool]

# Positions in ``layout``.
PROTO_BASE, SPORT_BASE, ICMP_BASE, DPORT_BASE, CLASS_BASE = range(5)
# Columns of ``parts``: per partition, its words and summary words and its rules.
P_OFFSET, P_WORDS, P_SUMMARY_OFFSET, P_SUMMARY_WORDS, P_RULES = range(5)

# De Bruijn lookup for the index of a 64-bit word's lowest set bit.
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DEBRUIJN_INDEX[((1 << _bit) * 0x03F79D71B4CB0A89 >> 58) & 63] = _bit


@njit(cache=True, inline="always")
def lowest_bit(word: np.uint64) -> int:
    low = word & (~word + np.uint64(1))
    return _DEBRUIJN_INDEX[np.int64((low * _DEBRUIJN) >> np.uint64(58))]


@njit(cache=True, inline="always")
def admitted(table, picked, k, at):  # type: ignore[no-untyped-def]
    """Word ``at`` of the AND of packet ``k``'s six rows of ``table`` (rows or summaries).

    The destination-port row comes first: it is the sparsest, so a word that ends
    up zero usually shows it at once.
    """
    return (table[picked[k, 5], at] & table[picked[k, 0], at] & table[picked[k, 1], at]
            & table[picked[k, 2], at] & table[picked[k, 3], at] & table[picked[k, 4], at])


@njit(cache=True)
def classify_kernel(meta, rows_in, count, rows, summary, value_row, layout,  # type: ignore[no-untyped-def]
                    parts, part_rules, tbl24, tbl8, class6, out):
    """Index of the first matching rule for ``meta[rows_in[k]]`` into ``out[k]`` (-1: none).

    ``value_row`` holds four blocks of ``VALUES``: the partition of each destination
    port, the row of each source port, of each ICMP type/code, of each destination
    port. ``class6`` holds the (src, dst) classes of IPv6 rows, looked up before the call.

    Two passes: the first finds every packet's rows (the LPM loads, which miss
    cache), the second searches them. Each pass is a tight loop of independent
    iterations, so the processor overlaps one packet's cache misses with the next's.
    """
    proto_base = layout[PROTO_BASE]
    class_base = layout[CLASS_BASE]
    # Pass 1: the six rows of each packet (r_src, r_dst, r_proto, r_sport, r_icmp,
    # r_dport) and its partition; partition -1 marks a packet outside the rules' domain.
    picked = np.empty((count, 7), dtype=np.int64)
    for k in range(count):
        m = meta[rows_in[k]]
        if m.ip_version == 4:
            src_class = lookup4(tbl24, tbl8, m.src4)
            dst_class = lookup4(tbl24, tbl8, m.dst4)
        elif m.ip_version == 6:
            src_class = class6[k, 0]
            dst_class = class6[k, 1]
        else:
            picked[k, 6] = -1  # not IP: outside the rules' domain
            continue
        if src_class == NO_MATCH:
            src_class = 0
        if dst_class == NO_MATCH:
            dst_class = 0
        picked[k, 0] = class_base + 2 * np.int64(src_class)
        picked[k, 1] = class_base + 2 * np.int64(dst_class) + 1
        proto = np.int64(m.protocol)
        picked[k, 2] = proto_base + proto
        if proto == 6 or proto == 17 or proto == 132:
            picked[k, 6] = value_row[np.int64(m.dport)]
            picked[k, 3] = value_row[VALUES + np.int64(m.sport)]
            picked[k, 5] = value_row[3 * VALUES + np.int64(m.dport)]
        else:
            picked[k, 6] = value_row[PORTLESS]
            picked[k, 3] = value_row[VALUES + PORTLESS]
            picked[k, 5] = value_row[3 * VALUES + PORTLESS]
        if proto == 1 or proto == 58:
            picked[k, 4] = value_row[2 * VALUES + (np.int64(m.icmp_type) << 8)
                                     + np.int64(m.icmp_code)]
        else:
            picked[k, 4] = value_row[2 * VALUES + NOT_ICMP]
    # Pass 2: the first rule all six rows agree on, within the packet's partition.
    for k in range(count):
        part = picked[k, 6]
        if part < 0:
            out[k] = NO_RULE
            continue
        offset = parts[part, P_OFFSET]
        first_rule = parts[part, P_RULES]
        found = NO_RULE
        if parts[part, P_WORDS] <= SMALL_PART:
            # A few words share a cache line or two: reading them beats reading summaries.
            for w in range(parts[part, P_WORDS]):
                bits = admitted(rows, picked, k, offset + w)
                if bits:
                    found = part_rules[first_rule + w * 64 + lowest_bit(bits)]
                    break
        else:
            for s in range(parts[part, P_SUMMARY_WORDS]):
                candidates = admitted(summary, picked, k, parts[part, P_SUMMARY_OFFSET] + s)
                while candidates and found == NO_RULE:
                    w = s * 64 + lowest_bit(candidates)
                    candidates &= candidates - np.uint64(1)
                    bits = admitted(rows, picked, k, offset + w)
                    if bits:
                        found = part_rules[first_rule + w * 64 + lowest_bit(bits)]
                if found != NO_RULE:
                    break
        out[k] = found


def _intervals(ranges: list[tuple[int, int]], size: int) -> tuple[np.ndarray, list[int]]:
    """Elementary intervals of [0, size) cut at every range bound.

    Returns the interval index of each value and the starts of the intervals.
    """
    cuts = sorted({0} | {lo for lo, _ in ranges} | {hi + 1 for _, hi in ranges if hi + 1 < size})
    index = np.searchsorted(np.array(cuts), np.arange(size), side="right") - 1
    return index.astype(np.int64), cuts


def _icmp_range(rule: Rule) -> tuple[int, int]:
    if rule.icmp_type is None:
        return (0, 65535)
    if rule.icmp_code is None:
        return (rule.icmp_type << 8, (rule.icmp_type << 8) | 0xFF)
    key = (rule.icmp_type << 8) | rule.icmp_code
    return (key, key)


class Classifier:
    """One tenant's rules in one direction, compiled over that tenant's containers."""

    def __init__(self, store: ContainerStore, rules: RuleSet, *,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.store = store
        self.memory_budget = memory_budget
        self.ruleset = rules
        self.rules: list[Rule] = []
        self.version = -1  # the RuleSet version compiled
        self._literals: list[Literal] = []
        self._key_bits: dict[tuple[str, Hashable | None], np.ndarray] = {}
        self._class_keys: dict[int, frozenset[Hashable]] = {}
        self._class_capacity = 16
        self.compile()
        store.subscribe(self)
        # Recompile when the change lands, so ``rules`` and the tables never lag the set.
        self._unsubscribe_rules: Callable[[], None] = rules.subscribe(
            lambda _change: self.compile())

    # ---------------------------------------------------------------- compiling rules
    def compile(self) -> None:
        """(Re)number the rules and build the partitions and every rule-indexed row."""
        rules = self.ruleset.ordered()
        self._hold_literals(rules)
        self.rules = rules
        self.version = self.ruleset.version
        self._partition(rules)
        # One entry per (partition, local rule): the word column and bit it sets.
        member_rule = self.part_rules
        member_col = np.repeat(self.parts[:, P_OFFSET], self._part_sizes) + self._local // 64
        member_bit = np.left_shift(np.uint64(1), (self._local % 64).astype(np.uint64))

        def contribute(block: np.ndarray, rows_of: Callable[[Rule], slice | list[int]]) -> None:
            """Set each member's bit in the rows its rule admits (``slice(None)``: all)."""
            everywhere = np.zeros(self.total_words, dtype=np.uint64)
            picked_rows: list[int] = []
            picked: list[int] = []
            for j, r in enumerate(member_rule):
                chosen = rows_of(rules[r])
                if isinstance(chosen, slice):
                    everywhere[member_col[j]] |= member_bit[j]
                else:
                    picked_rows += chosen
                    picked += [j] * len(chosen)
            block |= everywhere
            if picked:
                index = np.array(picked, dtype=np.int64)
                np.bitwise_or.at(block, (np.array(picked_rows), member_col[index]),
                                 member_bit[index])

        blocks = []
        proto = np.zeros((256, self.total_words), dtype=np.uint64)
        contribute(proto, lambda rule: slice(None) if rule.protocol is None else [rule.protocol])
        blocks.append(proto)
        value_row = np.zeros(4 * VALUES, dtype=np.int64)
        value_row[:VALUES] = self._value_part
        base = 256
        for d, (span, constrained) in enumerate((
            (lambda rule: (rule.sport.lo, rule.sport.hi), lambda rule: not rule.sport.is_full),
            (_icmp_range, lambda rule: rule.icmp_type is not None),
            # Inside a port partition every rule admits every port mapped to it, so the
            # destination-port row only does work when there is a single partition.
            (lambda rule: (rule.dport.lo, rule.dport.hi),
             lambda rule: not self.partitioned and not rule.dport.is_full),
        ), start=1):
            ranges = [span(rule) for rule in rules if constrained(rule)]
            index, cuts = _intervals(ranges, 65536)
            # One row per interval, and a last one for packets without ports / not ICMP:
            # those match only the rules that leave this dimension open.
            block = np.zeros((len(cuts) + 1, self.total_words), dtype=np.uint64)
            def in_intervals(rule: Rule, span: Span = span, constrained: Test = constrained,
                             index: np.ndarray = index) -> slice | list[int]:
                if not constrained(rule):
                    return slice(None)
                lo, hi = span(rule)
                return list(range(index[lo], index[hi] + 1))

            def when_open(rule: Rule, constrained: Test = constrained) -> slice | list[int]:
                return [] if constrained(rule) else slice(None)

            contribute(block, in_intervals)
            block[len(cuts)] = 0
            contribute(block[len(cuts):], when_open)
            value_row[d * VALUES : d * VALUES + 65536] = base + index
            value_row[d * VALUES + 65536] = base + len(cuts)
            blocks.append(block)
            base += len(block)
        self.layout = np.array([0, 256, 256 + len(blocks[1]),
                                256 + len(blocks[1]) + len(blocks[2]), base], dtype=np.int64)
        self.value_row = value_row

        # Per-key rows for the address dimensions ("any" under key None).
        self._key_bits = {}
        for side, match_of in (("src", lambda rule: rule.src), ("dst", lambda rule: rule.dst)):
            keys = [self._key(match_of(rules[r])) for r in member_rule]
            for key in dict.fromkeys(keys):
                self._key_bits[(side, key)] = np.zeros(self.total_words, dtype=np.uint64)
            for j, key in enumerate(keys):
                self._key_bits[(side, key)][member_col[j]] |= member_bit[j]

        self.rows = np.zeros((base + 2 * self._class_capacity, self.total_words), np.uint64)
        self.rows[:base] = np.concatenate(blocks)
        self.summary = np.zeros((self.rows.shape[0], self.total_summary), dtype=np.uint64)
        self._summarize(0, base)
        for class_id, class_keys in self._class_keys.items():
            self._class_rows(class_id, class_keys)

    def _hold_literals(self, rules: list[Rule]) -> None:
        """Hold the new rules' literal prefixes in the store, then let the old ones go."""
        held = [self.store.add_literal(m.prefix) for rule in rules for m in (rule.src, rule.dst)
                if m.prefix is not None]
        for literal in self._literals:
            self.store.remove_literal(literal)
        self._literals = held

    @staticmethod
    def _key(match: object) -> Hashable | None:
        container = getattr(match, "container", None)
        prefix = getattr(match, "prefix", None)
        if container is not None:
            return container
        return Literal(prefix) if prefix is not None else None

    def _partition(self, rules: list[Rule]) -> None:
        """Group destination-port intervals by the rules they admit; lay the groups out."""
        ranges = [(rule.dport.lo, rule.dport.hi) for rule in rules if not rule.dport.is_full]
        index, cuts = _intervals(ranges, 65536)
        open_rules = [r for r, rule in enumerate(rules) if rule.dport.is_full]
        members: list[list[int]] = [list(open_rules) for _ in cuts]
        for r, rule in enumerate(rules):
            if not rule.dport.is_full:
                for interval in range(index[rule.dport.lo], index[rule.dport.hi] + 1):
                    members[interval].append(r)
        groups: dict[tuple[int, ...], int] = {}
        interval_part = []
        for rule_list in [*members, open_rules]:  # the last: packets without ports
            key = tuple(sorted(rule_list))
            interval_part.append(groups.setdefault(key, len(groups)))
        value_part = np.empty(VALUES, dtype=np.int64)
        value_part[:65536] = np.array(interval_part[:-1])[index]
        value_part[PORTLESS] = interval_part[-1]
        # Rows: protocols, a few per port/ICMP interval, two per class of the store.
        self._class_capacity = max(self._class_capacity, self._capacity_for(
            self.store.class_count()))
        def interval_rows(bounds: list[tuple[int, int]]) -> int:
            return len({0} | {lo for lo, _ in bounds} | {hi + 1 for _, hi in bounds}) + 1

        # As laid out when partitioned: the destination-port rows collapse to two.
        sports = [(r.sport.lo, r.sport.hi) for r in rules if not r.sport.is_full]
        icmps = [_icmp_range(r) for r in rules if r.icmp_type is not None]
        row_count = 256 + 2 + 2 * self._class_capacity + interval_rows(sports) + interval_rows(
            icmps)
        width = sum(max(1, -(-len(key) // 64)) for key in groups)
        self.partitioned = row_count * width * 8 <= self.memory_budget
        if not self.partitioned:  # one partition: every rule, whatever the port
            groups = {tuple(range(len(rules))): 0}
            value_part[:] = 0
        sizes = np.array([len(key) for key in groups], dtype=np.int64)
        words = np.maximum(1, -(-sizes // 64))
        summary_words = -(-words // 64)
        parts = np.zeros((len(groups), 5), dtype=np.int64)
        parts[:, P_OFFSET] = np.concatenate([[0], np.cumsum(words)[:-1]])
        parts[:, P_WORDS] = words
        parts[:, P_SUMMARY_OFFSET] = np.concatenate([[0], np.cumsum(summary_words)[:-1]])
        parts[:, P_SUMMARY_WORDS] = summary_words
        parts[:, P_RULES] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.parts = parts
        self.part_rules = np.array([r for key in groups for r in key], dtype=np.int64)
        self._part_sizes = sizes
        self._local = np.concatenate([np.arange(n) for n in sizes]) if len(sizes) else (
            np.zeros(0, np.int64))
        self._value_part = value_part
        self.total_words = int(words.sum())
        self.total_summary = int(summary_words.sum())
        # Where each word's summary bit goes: summary word = segment, bit = word % 64 in part.
        local_word = np.concatenate([np.arange(n) for n in words])
        part_of_word = np.repeat(np.arange(len(words)), words)
        self._summary_of_word = parts[part_of_word, P_SUMMARY_OFFSET] + local_word // 64
        self._summary_weight = np.left_shift(np.uint64(1), (local_word % 64).astype(np.uint64))
        self._segment_starts = np.flatnonzero(
            np.r_[True, self._summary_of_word[1:] != self._summary_of_word[:-1]])

    def close(self) -> None:
        """Stop following the store and the rules, and give back the rule literals."""
        self.store.unsubscribe(self)
        self._unsubscribe_rules()
        for literal in self._literals:
            self.store.remove_literal(literal)
        self._literals = []

    def affected_rules(self, containers: frozenset[str]) -> set[str]:
        """Ids of the rules a container change can affect (for flow-cache invalidation)."""
        return {rule_id for name in containers for rule_id in self.ruleset.rules_using(name)}

    def sync(self) -> bool:
        """Recompile if the rule set changed since the last compile; True if it did."""
        if self.ruleset.version == self.version:
            return False
        self.compile()
        return True

    # ---------------------------------------------------------------- classes (store events)
    def class_added(self, class_id: int, keys: frozenset[Hashable]) -> None:
        self._class_keys[class_id] = keys
        if class_id >= self._class_capacity:
            self._grow(class_id + 1)
        self._class_rows(class_id, keys)

    def class_removed(self, class_id: int) -> None:
        self._class_keys.pop(class_id, None)
        at = int(self.layout[CLASS_BASE]) + 2 * class_id
        self.rows[at : at + 2] = 0
        self.summary[at : at + 2] = 0

    def _class_rows(self, class_id: int, keys: frozenset[Hashable]) -> None:
        at = int(self.layout[CLASS_BASE]) + 2 * class_id
        for offset, side in ((0, "src"), (1, "dst")):
            row = self.rows[at + offset]
            any_bits = self._key_bits.get((side, None))
            row[:] = 0 if any_bits is None else any_bits
            for key in keys:
                found = self._key_bits.get((side, key))
                if found is not None:
                    row |= found
        self._summarize(at, at + 2)

    @staticmethod
    def _capacity_for(classes: int) -> int:
        return max(16, 1 << max(0, classes - 1).bit_length())

    def _grow(self, need: int) -> None:
        capacity = max(need, 2 * self._class_capacity)
        grown = (self.rows.shape[0] + 2 * (capacity - self._class_capacity)) * self.total_words
        if self.partitioned and grown * 8 > self.memory_budget:
            # More classes than the partitioned layout can afford: fall back to one partition.
            self._class_capacity = capacity
            self.compile()
            return
        extra = 2 * (capacity - self._class_capacity)
        self.rows = np.concatenate([self.rows, np.zeros((extra, self.total_words), np.uint64)])
        self.summary = np.concatenate(
            [self.summary, np.zeros((extra, self.total_summary), np.uint64)])
        self._class_capacity = capacity

    def _summarize(self, first: int, last: int) -> None:
        weighted = np.where(self.rows[first:last] != 0, self._summary_weight, np.uint64(0))
        self.summary[first:last] = np.bitwise_or.reduceat(weighted, self._segment_starts, axis=1)

    # ---------------------------------------------------------------- lookups
    def classify(self, batch: Batch, rows: np.ndarray | None = None) -> np.ndarray:
        """Index into ``self.rules`` of the first rule matching each row (-1: none)."""
        self.sync()
        if rows is None:
            rows = np.arange(batch.count, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        meta = batch.meta
        class6 = np.zeros((len(rows), 2), dtype=np.uint32)
        six = np.flatnonzero(meta["ip_version"][rows] == 6)
        if len(six):
            picked = meta[rows[six]]
            class6[six, 0] = self.store.lpm6.lookup(picked["src6_hi"], picked["src6_lo"])
            class6[six, 1] = self.store.lpm6.lookup(picked["dst6_hi"], picked["dst6_lo"])
        out = np.empty(len(rows), dtype=np.int64)
        lpm = self.store.lpm4
        classify_kernel(meta, rows, len(rows), self.rows, self.summary, self.value_row,
                        self.layout, self.parts, self.part_rules, lpm.tbl24, lpm.tbl8, class6,
                        out)
        return out

    def memory_bytes(self) -> int:
        return int(self.rows.nbytes + self.summary.nbytes + self.value_row.nbytes
                   + self.parts.nbytes + self.part_rules.nbytes)


__all__ = ["NO_RULE", "Classifier", "classify_kernel"]
