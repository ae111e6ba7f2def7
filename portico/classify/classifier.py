"""The batch classifier: the first matching rule for every packet, in one compiled pass.

Theory of operation. Rules are numbered in match order (``RuleSet.ordered``), so
rule ``r`` is bit ``r`` of a bitset and the answer for a packet is the lowest bit
set in the AND of one bitset per dimension:

* source and destination address: the container store maps an address to its
  *class* (the set of containers and rule literals holding it) through its LPM
  table, so a packet costs one LPM lookup per address. Each class has a row of
  rule bits per direction of use: rules whose source matches any key of the
  class (plus the rules whose source is "any"), and the same for destinations.
* protocol: a row per protocol number.
* source and destination port: the 65,536 values fall into elementary
  intervals between the rules' range bounds; a table maps a port to its
  interval's row. Packets of protocols without ports use one more row: the
  rules with no port constraint.
* ICMP type and code: the same interval scheme over ``type << 8 | code``, with
  one more row (rules with no ICMP constraint) for packets that are not ICMP.

All rows live in one 2-D ``uint64`` array (one argument for the kernel, which
pays per argument). Beside it, a summary array has one bit per 64-bit word of
a row, set where the word is non-zero; the kernel ANDs the six summaries
first and then only the candidate words, stopping at the first rule found, so
with 10,000 rules (157 words) a packet usually reads a handful of words,
not a thousand.

Changes. The container store tells the classifier when a class comes into use
or is released; only that class's two rows are computed (from per-key rule
bitsets), so adding or removing an address costs the few LPM entries and rows
it touches, never the whole structure. A change of rules recompiles the
rule-indexed rows (numbering is positional) but leaves the trie, the classes
and the LPM tables alone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.classify.containers import ContainerStore, Literal
from portico.classify.lpm4 import NO_MATCH, lookup4
from portico.classify.rules import PORT_PROTOCOLS, Rule, RuleSet

NO_RULE = -1
PORTLESS = 65536  # the extra row of the port dimensions: packets without ports
NOT_ICMP = 65536  # the extra row of the ICMP dimension

# Positions in ``layout`` (the kernel's map of the row array).
PROTO_BASE, SPORT_BASE, DPORT_BASE, ICMP_BASE, CLASS_BASE, WORDS, SUMMARY = range(7)

# De Bruijn lookup for the index of a 64-bit word's lowest set bit.
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DEBRUIJN_INDEX[((1 << _bit) * 0x03F79D71B4CB0A89 >> 58) & 63] = _bit


@njit(cache=True, inline="always")
def lowest_bit(word: np.uint64) -> int:
    low = word & (~word + np.uint64(1))
    return _DEBRUIJN_INDEX[np.int64((low * _DEBRUIJN) >> np.uint64(58))]


@njit(cache=True)
def classify_kernel(meta, rows_in, count, rows, summary, value_row, layout,  # type: ignore[no-untyped-def]
                    tbl24, tbl8, class6, out):
    """First matching rule index for ``meta[rows_in[k]]``, into ``out[k]`` (-1: none).

    ``value_row`` holds, per dimension, the row index of each port / ICMP value
    (three blocks of 65,537); ``class6`` holds the (src, dst) classes of IPv6 rows,
    looked up before the call.
    """
    proto_base = layout[PROTO_BASE]
    class_base = layout[CLASS_BASE]
    n_summary = layout[SUMMARY]
    for k in range(count):
        i = rows_in[k]
        m = meta[i]
        if m.ip_version == 4:
            src_class = lookup4(tbl24, tbl8, m.src4)
            dst_class = lookup4(tbl24, tbl8, m.dst4)
        elif m.ip_version == 6:
            src_class = class6[k, 0]
            dst_class = class6[k, 1]
        else:
            out[k] = NO_RULE  # not IP: outside the rules' domain
            continue
        if src_class == NO_MATCH:
            src_class = 0
        if dst_class == NO_MATCH:
            dst_class = 0
        r_src = class_base + 2 * np.int64(src_class)
        r_dst = class_base + 2 * np.int64(dst_class) + 1
        proto = np.int64(m.protocol)
        r_proto = proto_base + proto
        if proto == 6 or proto == 17 or proto == 132:
            r_sport = value_row[np.int64(m.sport)]
            r_dport = value_row[65537 + np.int64(m.dport)]
        else:
            r_sport = value_row[PORTLESS]
            r_dport = value_row[65537 + PORTLESS]
        if proto == 1 or proto == 58:
            r_icmp = value_row[2 * 65537 + (np.int64(m.icmp_type) << 8) + np.int64(m.icmp_code)]
        else:
            r_icmp = value_row[2 * 65537 + NOT_ICMP]
        found = NO_RULE
        for s in range(n_summary):
            candidates = (summary[r_src, s] & summary[r_dst, s] & summary[r_proto, s]
                          & summary[r_sport, s] & summary[r_dport, s] & summary[r_icmp, s])
            while candidates:
                w = s * 64 + lowest_bit(candidates)
                candidates &= candidates - np.uint64(1)
                # Most selective first: a word that goes to zero costs one or two loads.
                bits = rows[r_dport, w]
                if bits:
                    bits &= rows[r_dst, w]
                if bits:
                    bits &= rows[r_src, w]
                if bits:
                    bits &= rows[r_sport, w] & rows[r_proto, w] & rows[r_icmp, w]
                if bits:
                    found = w * 64 + lowest_bit(bits)
                    break
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


class Classifier:
    """One tenant's rules in one direction, compiled over that tenant's containers."""

    def __init__(self, store: ContainerStore, rules: RuleSet) -> None:
        self.store = store
        self.ruleset = rules
        self.rules: list[Rule] = []
        self.version = -1  # the RuleSet version compiled
        self._literals: list[Literal] = []
        self._key_bits: dict[tuple[str, Hashable], np.ndarray] = {}
        self._class_keys: dict[int, frozenset[Hashable]] = {}
        self._class_capacity = 0
        self.compile()
        store.subscribe(self)
        # Recompile when the change lands, so ``rules`` and the tables never lag the set.
        self._unsubscribe_rules = rules.subscribe(lambda _change: self.compile())

    # ---------------------------------------------------------------- compiling rules
    def compile(self) -> None:
        """(Re)number the rules and build every rule-indexed row."""
        rules = self.ruleset.ordered()
        for literal in self._literals:
            self.store.remove_literal(literal)
        self._literals = []
        key_of: list[tuple[Hashable | None, Hashable | None]] = []
        for rule in rules:
            keys: list[Hashable | None] = []
            for match in (rule.src, rule.dst):
                if match.container is not None:
                    keys.append(match.container)
                elif match.prefix is not None:
                    literal = self.store.add_literal(match.prefix)
                    self._literals.append(literal)
                    keys.append(literal)
                else:
                    keys.append(None)
            key_of.append((keys[0], keys[1]))
        self.rules = rules
        self.version = self.ruleset.version
        n = len(rules)
        self.words = max(1, math.ceil(n / 64))
        self.summary_words = max(1, math.ceil(self.words / 64))

        # Per-key rule bitsets for the address dimensions ("any" under key None).
        self._key_bits = {}
        for r, pair in enumerate(key_of):
            for side, key in zip(("src", "dst"), pair, strict=True):
                row = self._key_bits.setdefault((side, key), np.zeros(self.words, np.uint64))
                row[r // 64] |= np.uint64(1 << (r % 64))

        # Protocol, ports and ICMP: blocks of rows, each rule's bit set over a slice of them.
        proto_rows = np.zeros((256, self.words), dtype=np.uint64)
        for r, rule in enumerate(rules):
            picked = slice(None) if rule.protocol is None else rule.protocol
            proto_rows[picked, r // 64] |= np.uint64(1 << (r % 64))
        value_row = np.zeros(3 * 65537, dtype=np.int64)
        blocks = [proto_rows]
        base = 256
        for d, (span, constrained) in enumerate((
            (lambda rule: (rule.sport.lo, rule.sport.hi), lambda rule: not rule.sport.is_full),
            (lambda rule: (rule.dport.lo, rule.dport.hi), lambda rule: not rule.dport.is_full),
            (_icmp_range, lambda rule: rule.icmp_type is not None),
        )):
            ranges = [span(rule) for rule in rules if constrained(rule)]
            index, cuts = _intervals(ranges, 65536)
            # One row per interval, and a last one for packets without ports / not ICMP:
            # those match only the rules that do not constrain this dimension.
            block = np.zeros((len(cuts) + 1, self.words), dtype=np.uint64)
            for r, rule in enumerate(rules):
                bit = np.uint64(1 << (r % 64))
                if constrained(rule):
                    lo, hi = span(rule)
                    block[index[lo] : index[hi] + 1, r // 64] |= bit
                else:
                    block[:, r // 64] |= bit
            value_row[d * 65537 : d * 65537 + 65536] = base + index
            value_row[d * 65537 + 65536] = base + len(cuts)
            blocks.append(block)
            base += len(block)
        self.layout = np.array(
            [0, 256, 256 + len(blocks[1]), 256 + len(blocks[1]) + len(blocks[2]), base,
             self.words, self.summary_words], dtype=np.int64)
        self.value_row = value_row
        self._class_capacity = max(16, self._class_capacity)
        self.rows = np.zeros((base + 2 * self._class_capacity, self.words), dtype=np.uint64)
        self.rows[:base] = np.concatenate(blocks)
        self.summary = np.zeros((self.rows.shape[0], self.summary_words), dtype=np.uint64)
        self._summarize(0, base)
        for class_id, class_keys in self._class_keys.items():
            self._class_rows(class_id, class_keys)
        self.actions = np.array([list(type(rule.action)).index(rule.action) for rule in rules],
                                dtype=np.uint8)

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
            row = self._key_bits.get((side, None), np.zeros(self.words, np.uint64)).copy()
            for key in keys:
                found = self._key_bits.get((side, key))
                if found is not None:
                    row |= found
            self.rows[at + offset] = row
        self._summarize(at, at + 2)

    def _grow(self, need: int) -> None:
        capacity = max(need, 2 * self._class_capacity)
        extra = 2 * (capacity - self._class_capacity)
        self.rows = np.concatenate([self.rows, np.zeros((extra, self.words), np.uint64)])
        self.summary = np.concatenate(
            [self.summary, np.zeros((extra, self.summary_words), np.uint64)])
        self._class_capacity = capacity

    def _summarize(self, first: int, last: int) -> None:
        nonzero = np.zeros((last - first, self.summary_words * 64), dtype=bool)
        nonzero[:, : self.words] = self.rows[first:last] != 0
        self.summary[first:last] = np.packbits(nonzero, axis=1, bitorder="little").view(np.uint64)

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
                        self.layout, lpm.tbl24, lpm.tbl8, class6, out)
        return out

    def memory_bytes(self) -> int:
        return int(self.rows.nbytes + self.summary.nbytes + self.value_row.nbytes)


def _icmp_range(rule: Rule) -> tuple[int, int]:
    if rule.icmp_type is None:
        return (0, 65535)
    if rule.icmp_code is None:
        return (rule.icmp_type << 8, (rule.icmp_type << 8) | 0xFF)
    key = (rule.icmp_type << 8) | rule.icmp_code
    return (key, key)


__all__ = ["NO_RULE", "Classifier", "PORT_PROTOCOLS", "classify_kernel"]
