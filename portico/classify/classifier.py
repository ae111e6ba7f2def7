"""The batch classifier: the first matching rule for every packet, in one compiled pass.

Theory of operation.

*Candidates from the address trie.* A packet's source and destination each
have a *class*: the set of keys (containers, and rule literals) that hold the
address, found with one LPM lookup in the container store. Rules that name a
container are few per container, so the class is the most selective
dimension there is: a packet's candidates are the rules *anchored* at the keys
of its classes. Every rule is anchored in one place:

* at its source key or its destination key, when it names one (the shorter
  of the two lists, when it names both);
* else at its destination port, when that is a single port: one list per
  port value;
* else in each 256-port *bucket* its port range overlaps, when that is at
  most ``MAX_BUCKETS`` buckets;
* else in the one *wide* list (any source, any destination, any port or a
  very wide range: the default rule is here).

A packet walks the lists of its source class's keys, of its destination
class's keys, of its destination port and port bucket, and the wide list: a
handful of short lists, whatever the number of rules.

*Intersection.* Each list is kept in match order. Its entries carry, beside
the rule's slot, the rule's order key, destination-port bounds and protocol,
so those dimensions are intersected inline while the list is read
sequentially; only candidates that pass load the rule record (source port,
ICMP type/code, the source and destination key) for the rest. An address
dimension is tested by finding the rule's key among the packet's class keys
(a class has a few). Port and ICMP bounds encode "no constraint" as a range
that also holds the extra value of packets without ports (``PORTLESS``) or
that are not ICMP (``NOT_ICMP``), so one comparison serves both. Each list is
walked until its first match or until its order keys pass the best match so
far; the answer is the earliest rule over all the lists.

Why not rule bitsets (the first design): a first-match search over rule
bitsets ANDs dense rows ("any" source, "any" protocol) word by word until the
first common bit; at 10k rules that was ~50 words a packet (4.3 Mpps), and
cutting the bitsets by port to go faster cost gigabytes. Anchoring takes the
"any" dimensions out of the candidate sets instead of ANDing them.

*Mispredicted branches.* A packet reads ~11 list entries, and nearly all of
them fail on the destination port. Tested as ``dport < lo or dport > hi``, each
of those two comparisons goes either way at random (a packet's port is as
likely below a rule's as above it), so about half the entries cost a
mispredicted branch (~8 ns here): that was half the walk's time, more than
its cache misses (software prefetching of the lists changed nothing
measurable). The walk therefore tests the port range as one unsigned
comparison, ``(dport - lo) <=u (hi - lo)``, and folds the protocol into the
same branch (a pool entry's protocol is ``p | 0xFF00``, or 0 for any, so
``((proto ^ e) & (e >> 8)) == 0`` tests it), a branch that fails nearly
always and is predicted so. The same goes for the rest: source port and ICMP
bounds are unsigned comparisons; a rule's keys are compared with the whole
class rows rather than searched with early exits; the class rows are read
whole when a packet's lists are gathered; TCP/UDP values are selects. This
took the bench from ~5.1 to ~5.9 Mpps at batch 256 (see ``bench/RESULTS.md``).

*Memory stalls.* The LPM table, the class rows, the list directory and the
lists are bigger than the cache together, and each one's address comes from
the one before. The kernel therefore works in passes, one step for every
packet each, and prefetches (``portico.prefetch``) packet ``k + AHEAD``'s
lines while it works on packet ``k``.

*Changes are local.* Adding or removing an address changes the store's
classes; the classifier is told (``class_added``/``class_removed``) and
rewrites that class's row of key ids only. Adding or removing a rule writes
its record and inserts it into (or deletes it from) its lists, placing it
with an order key between its neighbours' (keys are spread with gaps and
respread only when a gap runs out); the rank the caller sees, the rule's
index in match order, is one O(rules) vector write. Lists live in one pool
with room to grow; a full list moves to the pool's end with twice the room,
and the pool is compacted when more than half of it is garbage. All of it is
a few arrays, because a Numba call pays per argument.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.classify.containers import ContainerStore, Literal
from portico.classify.lpm4 import NO_MATCH, lookup4
from portico.classify.lpm6 import lookup6
from portico.classify.rules import Rule, RuleChange, RuleSet
from portico.prefetch import prefetch

NO_RULE = -1
PORTLESS = 65536  # the port value of packets without ports
NOT_ICMP = 65536  # the ICMP type/code value of packets that are not ICMP
ANY_KEY = -1
NO_ORDER = np.iinfo(np.int64).max

# Columns of a rule record (``fields``). RANK is the rule's index in match order.
RANK, PROTO, SPORT_LO, SPORT_HI, ICMP_LO, ICMP_HI, SRC_KEY, DST_KEY = range(8)
FIELD_COUNT = 8
# Columns of a pool entry and of a list's directory entry. An entry's ORDER is an
# order key with gaps between rules, so inserting a rule rarely rewrites the others'.
E_ORDER, E_SLOT, E_DPORT_LO, E_DPORT_HI, E_PROTO = range(5)
ENTRY = 5
AHEAD = 8  # packets a pass prefetches ahead
ORDER_SPAN = 1 << 62
L_OFFSET, L_LENGTH, L_ROOM = range(3)
# List ids: the wide list, then one per destination port, then two per key.
WIDE_LIST = 0
PORT_LISTS = 1
BUCKET_BITS = 8  # port ranges are listed in each 256-port bucket they overlap...
BUCKET_LISTS = PORT_LISTS + 65536
MAX_BUCKETS = 16  # ...unless they overlap more than this many: then they are wide
KEY_LISTS = BUCKET_LISTS + (65536 >> BUCKET_BITS)
SRC_SIDE, DST_SIDE = 0, 1


@njit(cache=True)
def classify_kernel(meta, rows_in, count, fields, pool, lists, class_keys,  # type: ignore[no-untyped-def]
                    tbl24, tbl8, root6, nodes6, out):
    """Rank (index in match order) of the first rule matching ``meta[rows_in[k]]``, or -1.

    ``tbl24``/``tbl8`` are the container store's IPv4 table, ``root6``/``nodes6`` its
    IPv6 one.

    The tables are bigger than the cache and each step's address comes from the
    step before (LPM entry -> class row -> list directory -> list), so the work is
    done in passes, one step for every packet each, and each pass prefetches what
    packet ``k + AHEAD`` will need while it works on packet ``k``.
    """
    width = class_keys.shape[1]
    most = 2 * width + 3  # lists a packet can walk: its keys' lists, port, bucket, wide
    classes = np.empty((count, 2), dtype=np.int64)
    spans = np.empty((count, most, 2), dtype=np.int64)
    walks = np.zeros(count, dtype=np.int64)
    values = np.empty((count, 4), dtype=np.int64)  # protocol, sport, dport, ICMP type/code
    # Pass 1: the classes of both addresses (and the values the rules compare).
    for k in range(count):
        if k + AHEAD < count:
            ahead = meta[rows_in[k + AHEAD]]
            prefetch(tbl24, np.int64(ahead.src4) >> 8)
            prefetch(tbl24, np.int64(ahead.dst4) >> 8)
        m = meta[rows_in[k]]
        if m.ip_version != 4 and m.ip_version != 6:
            classes[k, 0] = -1  # not IP: outside the rules' domain
            continue
        # Both tables every time (an IPv4 row looks up ::, one cached line): a table
        # read on one branch only makes Numba count references around every row.
        six = m.ip_version == 6
        zero = np.uint64(0)
        src6 = lookup6(root6, nodes6, m.src6_hi if six else zero, m.src6_lo if six else zero)
        dst6 = lookup6(root6, nodes6, m.dst6_hi if six else zero, m.dst6_lo if six else zero)
        src_class = src6 if six else lookup4(tbl24, tbl8, m.src4)
        dst_class = dst6 if six else lookup4(tbl24, tbl8, m.dst4)
        classes[k, 0] = 0 if src_class == NO_MATCH else np.int64(src_class)
        classes[k, 1] = 0 if dst_class == NO_MATCH else np.int64(dst_class)
        # Selects, not branches: TCP and UDP come mixed, and a mispredicted branch
        # (~8 ns) costs more than computing both sides.
        proto = np.int64(m.protocol)
        values[k, 0] = proto
        ported = (proto == 6) | (proto == 17) | (proto == 132)
        sport = np.int64(m.sport)
        dport = np.int64(m.dport)
        values[k, 1] = sport if ported else PORTLESS
        values[k, 2] = dport if ported else PORTLESS
        icmp = (np.int64(m.icmp_type) << 8) | np.int64(m.icmp_code)
        values[k, 3] = icmp if (proto == 1) | (proto == 58) else NOT_ICMP
    # Pass 2: the lists each packet walks, from its classes' key rows. ``spans[k, w, 0]``
    # holds the list id until the loop after this one replaces it by the list's span.
    for k in range(count):
        if k + AHEAD < count and classes[k + AHEAD, 0] >= 0:
            prefetch(class_keys, classes[k + AHEAD, 0])
            prefetch(class_keys, classes[k + AHEAD, 1])
        if classes[k, 0] < 0:
            continue
        n = 0
        for side in range(2):
            klass = classes[k, side]
            for j in range(width):  # the whole row, counting the keys: no early exit
                key = np.int64(class_keys[klass, j])
                spans[k, n, 0] = KEY_LISTS + 2 * key + side
                n += 1 if key >= 0 else 0
        dport = values[k, 2]
        if dport != PORTLESS:
            spans[k, n, 0] = PORT_LISTS + dport
            spans[k, n + 1, 0] = BUCKET_LISTS + (dport >> BUCKET_BITS)
            n += 2
        spans[k, n, 0] = WIDE_LIST
        walks[k] = n + 1
    for k in range(count):
        if k + AHEAD < count:
            for w in range(walks[k + AHEAD]):
                prefetch(lists, spans[k + AHEAD, w, 0])
        for w in range(walks[k]):
            lst = spans[k, w, 0]
            spans[k, w, 0] = lists[lst, L_OFFSET]
            spans[k, w, 1] = lists[lst, L_OFFSET] + lists[lst, L_LENGTH]
    # Pass 3: walk the lists; the answer is the first rule in match order over them.
    for k in range(count):
        if k + AHEAD < count:
            for w in range(walks[k + AHEAD]):
                prefetch(pool, spans[k + AHEAD, w, 0])
        if classes[k, 0] < 0:
            out[k] = NO_RULE
            continue
        src_class = classes[k, 0]
        dst_class = classes[k, 1]
        proto = values[k, 0]
        sport = values[k, 1]
        dport = values[k, 2]
        icmp = values[k, 3]
        best = np.int64(NO_ORDER)
        found = np.int64(-1)
        # One loop walks all the lists, written out here rather than in a helper:
        # a call that passes arrays costs more than the walk itself.
        for w in range(walks[k]):
            for e in range(spans[k, w, 0], spans[k, w, 1]):
                order = pool[e, E_ORDER]
                if order >= best:
                    break
                # One branch for port and protocol, and it fails nearly always: two
                # comparisons (dport < lo, dport > hi) each go either way at random and
                # mispredicted branches were half the walk's time.
                lo = pool[e, E_DPORT_LO]
                in_range = np.uint64(dport - lo) <= np.uint64(pool[e, E_DPORT_HI] - lo)
                want = pool[e, E_PROTO]  # see _proto_entry: 0 is any protocol
                same_proto = ((proto ^ want) & (want >> 8)) == 0
                if not (in_range & same_proto):
                    continue
                slot = pool[e, E_SLOT]
                lo = np.int64(fields[slot, SPORT_LO])
                sport_in = np.uint64(sport - lo) <= np.uint64(fields[slot, SPORT_HI] - lo)
                lo = np.int64(fields[slot, ICMP_LO])
                icmp_in = np.uint64(icmp - lo) <= np.uint64(fields[slot, ICMP_HI] - lo)
                if not (sport_in & icmp_in):
                    continue
                # Both keys among the packet's class keys ("any" is held): the whole
                # rows are compared, without early exits (a class has a few keys).
                src_key = fields[slot, SRC_KEY]
                dst_key = fields[slot, DST_KEY]
                src_held = src_key == ANY_KEY
                dst_held = dst_key == ANY_KEY
                for j in range(width):
                    src_held |= class_keys[src_class, j] == src_key
                    dst_held |= class_keys[dst_class, j] == dst_key
                if not (src_held & dst_held):
                    continue
                best = order
                found = slot
                break
        out[k] = fields[found, RANK] if found >= 0 else NO_RULE


def _ports(lo: int, hi: int, full: bool) -> tuple[int, int]:
    """Bounds as the kernel compares them: a full range also admits PORTLESS."""
    return (0, PORTLESS) if full else (lo, hi)


def _proto_entry(proto: int) -> int:
    """A pool entry's protocol: ``p | 0xFF00`` for protocol ``p``, 0 for any protocol,
    so that ``((packet_proto ^ entry) & (entry >> 8)) == 0`` tests it in one comparison."""
    return 0 if proto < 0 else proto | 0xFF00


def _icmp_bounds(rule: Rule) -> tuple[int, int]:
    if rule.icmp_type is None:
        return (0, NOT_ICMP)
    if rule.icmp_code is None:
        return (rule.icmp_type << 8, (rule.icmp_type << 8) | 0xFF)
    key = (rule.icmp_type << 8) | rule.icmp_code
    return (key, key)


class Classifier:
    """One tenant's rules in one direction, compiled over that tenant's containers."""

    def __init__(self, store: ContainerStore, rules: RuleSet) -> None:
        self.store = store
        self.ruleset = rules
        self.rules: list[Rule] = []  # match order; ``classify`` answers indices into it
        self._compiled: dict[str, Rule] = {}  # the same rules, by id
        self._ranks_stale = False
        self.version = -1  # the RuleSet version compiled
        # Rule records, by slot.
        self.fields = np.zeros((64, FIELD_COUNT), dtype=np.int32)
        self._free_slots: list[int] = list(range(63, -1, -1))
        self._slot: dict[str, int] = {}
        self._anchor: dict[str, list[int]] = {}  # rule id -> its lists
        self._literals: dict[str, list[Literal]] = {}  # rule id -> literals it holds
        self._order_keys: list[tuple[int, str]] = []
        self._slot_order = np.zeros(0, dtype=np.int64)  # slots in match order
        self._order_of = np.zeros(64, dtype=np.int64)  # slot -> order key
        # Keys (containers, literals) that rules use: ids, users, the classes holding them.
        self._key_id: dict[Hashable, int] = {}
        self._key_users: dict[Hashable, int] = {}
        self._free_keys: list[int] = []
        self._classes_of: dict[Hashable, set[int]] = {}
        self._class_keys: dict[int, frozenset[Hashable]] = {}
        self.class_keys = np.full((16, 4), -1, dtype=np.int32)
        # The candidate lists: a directory and one pool.
        self.lists = np.zeros((KEY_LISTS, 3), dtype=np.int64)
        self.pool = np.zeros((1024, ENTRY), dtype=np.int64)
        self._pool_used = 0
        self._garbage = 0
        store.subscribe(self)
        self.compile()
        # Follow each change as it lands, so ``rules`` and the tables never lag the set.
        self._unsubscribe_rules: Callable[[], None] = rules.subscribe(self._rules_changed)

    # ---------------------------------------------------------------- rule changes
    def compile(self) -> None:
        """Bring the tables to the rule set as it is now (the rules it has and lacks)."""
        want = {rule.id: rule for rule in self.ruleset.ordered()}
        have = self._compiled
        gone = {rule_id for rule_id, rule in have.items() if want.get(rule_id) != rule}
        new = {rule_id for rule_id, rule in want.items() if have.get(rule_id) != rule}
        self._apply(gone, new)

    def _rules_changed(self, change: RuleChange) -> None:
        self._apply(change.removed | change.updated, change.added | change.updated)

    def sync(self) -> bool:
        """Catch up with the rule set if a change was missed; True if it did."""
        if self.ruleset.version == self.version:
            return False
        self.compile()
        return True

    def _apply(self, gone: set[str] | frozenset[str], new: set[str] | frozenset[str]) -> None:
        for rule_id in gone:
            if rule_id in self._compiled:
                self._remove_rule(self._compiled[rule_id])
        added = [rule for rule_id in new if (rule := self.ruleset.get(rule_id)) is not None]
        for rule in added:
            self._add_rule(rule)
        if len(added) > 8:
            self._respace()
        else:
            for rule in sorted(added, key=lambda rule: rule.order_key):
                self._place(rule)
        # Ranks are positions in match order; the next lookup renumbers them all (one
        # vector write), so a burst of changes pays for it once.
        self._ranks_stale = True
        for rule in added:
            self._anchor_rule(rule)
        self.version = self.ruleset.version

    def _place(self, rule: Rule) -> None:
        """An order key between the rule's neighbours in match order (respace if none fits)."""
        at = bisect_left(self._order_keys, rule.order_key)
        before = int(self._order_of[self._slot_order[at - 1]]) if at else 0
        after = ORDER_SPAN
        for slot in self._slot_order[at + 1 :]:  # skip the new rules not placed yet
            if self._order_of[slot] >= 0:
                after = int(self._order_of[slot])
                break
        if after - before < 2:
            self._respace()
        else:
            self._order_of[self._slot[rule.id]] = (before + after) // 2

    def _respace(self) -> None:
        """Order keys evenly spread again, in the lists too (rare: when a gap runs out)."""
        step = ORDER_SPAN // (len(self._slot_order) + 1)
        self._order_of[self._slot_order] = np.arange(1, len(self._slot_order) + 1) * step
        used = self.pool[: self._pool_used]
        used[:, E_ORDER] = self._order_of[used[:, E_SLOT]]

    def _add_rule(self, rule: Rule) -> None:
        if not self._free_slots:
            grown = len(self.fields)
            self.fields = np.concatenate([self.fields, np.zeros_like(self.fields)])
            self._order_of = np.concatenate([self._order_of, np.zeros_like(self._order_of)])
            self._free_slots = list(range(2 * grown - 1, grown - 1, -1))
        slot = self._free_slots.pop()
        self._slot[rule.id] = slot
        self._compiled[rule.id] = rule
        self._order_of[slot] = -1  # not placed yet
        literals = [self.store.add_literal(m.prefix) for m in (rule.src, rule.dst)
                    if m.prefix is not None]
        self._literals[rule.id] = literals
        record = self.fields[slot]
        record[PROTO] = -1 if rule.protocol is None else rule.protocol
        record[SPORT_LO], record[SPORT_HI] = _ports(rule.sport.lo, rule.sport.hi,
                                                     rule.sport.is_full)
        record[ICMP_LO], record[ICMP_HI] = _icmp_bounds(rule)
        record[SRC_KEY] = self._use_key(self._key(rule.src))
        record[DST_KEY] = self._use_key(self._key(rule.dst))
        at = bisect_left(self._order_keys, rule.order_key)
        self._order_keys.insert(at, rule.order_key)
        self._slot_order = np.insert(self._slot_order, at, slot)
        self.rules.insert(at, rule)

    def _anchor_rule(self, rule: Rule) -> None:
        """Put the rule into its lists, in match order (order keys are already placed)."""
        slot = self._slot[rule.id]
        self._anchor[rule.id] = anchors = self._anchors(rule, slot)
        lo, hi = _ports(rule.dport.lo, rule.dport.hi, rule.dport.is_full)
        for lst in anchors:
            self._insert_entry(lst, slot, lo, hi)

    def _anchors(self, rule: Rule, slot: int) -> list[int]:
        """The lists a rule is walked from: one key list, one port list, buckets, or wide."""
        src, dst = int(self.fields[slot, SRC_KEY]), int(self.fields[slot, DST_KEY])
        if src != ANY_KEY or dst != ANY_KEY:
            src_list, dst_list = KEY_LISTS + 2 * src, KEY_LISTS + 2 * dst + 1
            shorter = dst != ANY_KEY and (src == ANY_KEY or self.lists[dst_list, L_LENGTH]
                                          < self.lists[src_list, L_LENGTH])
            return [dst_list if shorter else src_list]
        ports = rule.dport
        if ports.is_full:
            return [WIDE_LIST]
        if ports.lo == ports.hi:
            return [PORT_LISTS + ports.lo]
        first, last = ports.lo >> BUCKET_BITS, ports.hi >> BUCKET_BITS
        if last - first >= MAX_BUCKETS:
            return [WIDE_LIST]
        return [BUCKET_LISTS + bucket for bucket in range(first, last + 1)]

    def _remove_rule(self, rule: Rule) -> None:
        slot = self._slot.pop(rule.id)
        del self._compiled[rule.id]
        for lst in self._anchor.pop(rule.id):
            first, length = self.lists[lst, L_OFFSET], self.lists[lst, L_LENGTH]
            entries = self.pool[first : first + length]
            at = int(np.flatnonzero(entries[:, E_SLOT] == slot)[0])
            entries[at : length - 1] = entries[at + 1 : length].copy()
            self.lists[lst, L_LENGTH] -= 1
        at = bisect_left(self._order_keys, rule.order_key)
        del self._order_keys[at]
        del self.rules[at]
        self._slot_order = np.delete(self._slot_order, at)
        self._drop_key(self._key(rule.src))
        self._drop_key(self._key(rule.dst))
        for literal in self._literals.pop(rule.id):
            self.store.remove_literal(literal)
        self.fields[slot] = 0
        self._free_slots.append(slot)

    # ---------------------------------------------------------------- the pool of lists
    def _insert_entry(self, lst: int, slot: int, lo: int, hi: int) -> None:
        if self.lists[lst, L_LENGTH] == self.lists[lst, L_ROOM]:
            self._relocate(lst, max(4, 2 * int(self.lists[lst, L_ROOM])))
        first, length = int(self.lists[lst, L_OFFSET]), int(self.lists[lst, L_LENGTH])
        entries = self.pool[first : first + length + 1]
        order = self._order_of[slot]
        at = int(np.searchsorted(entries[:length, E_ORDER], order))
        entries[at + 1 :] = entries[at:length].copy()
        entries[at] = (order, slot, lo, hi, _proto_entry(int(self.fields[slot, PROTO])))
        self.lists[lst, L_LENGTH] = length + 1

    def _relocate(self, lst: int, room: int) -> None:
        """Move one list to the end of the pool with ``room`` entries."""
        if self._pool_used + room > len(self.pool):
            if self._garbage > self._pool_used // 2:
                self._compact()
            if self._pool_used + room > len(self.pool):
                size = max(2 * len(self.pool), self._pool_used + room)
                grown = np.zeros((size, ENTRY), dtype=np.int64)
                grown[: self._pool_used] = self.pool[: self._pool_used]
                self.pool = grown
        first, length, old_room = (int(v) for v in self.lists[lst])
        at = self._pool_used
        self.pool[at : at + length] = self.pool[first : first + length]
        self.lists[lst] = (at, length, room)
        self._pool_used += room
        self._garbage += old_room

    def _compact(self) -> None:
        """Lay the lists out again without the garbage between them."""
        live = np.flatnonzero(self.lists[:, L_ROOM] > 0)
        pool = np.zeros_like(self.pool)
        at = 0
        for lst in live.tolist():
            first, length, room = (int(v) for v in self.lists[lst])
            pool[at : at + length] = self.pool[first : first + length]
            self.lists[lst, L_OFFSET] = at
            at += room
        self.pool = pool
        self._pool_used = at
        self._garbage = 0

    # ---------------------------------------------------------------- keys and classes
    @staticmethod
    def _key(match: object) -> Hashable | None:
        container = getattr(match, "container", None)
        if container is not None:
            return container
        prefix = getattr(match, "prefix", None)
        return Literal(prefix) if prefix is not None else None

    def _use_key(self, key: Hashable | None) -> int:
        if key is None:
            return ANY_KEY
        self._key_users[key] = self._key_users.get(key, 0) + 1
        if key in self._key_id:
            return self._key_id[key]
        key_id = self._free_keys.pop() if self._free_keys else len(self._key_id)
        self._key_id[key] = key_id
        need = KEY_LISTS + 2 * (key_id + 1)
        if need > len(self.lists):
            grown = np.zeros((max(need, KEY_LISTS + 2 * (len(self.lists) - KEY_LISTS) + 64), 3),
                             dtype=np.int64)
            grown[: len(self.lists)] = self.lists
            self.lists = grown
        for class_id in self._classes_of.get(key, ()):
            self._write_class(class_id)
        return key_id

    def _drop_key(self, key: Hashable | None) -> None:
        if key is None:
            return
        self._key_users[key] -= 1
        if self._key_users[key]:
            return
        del self._key_users[key]
        key_id = self._key_id.pop(key)
        for side in (SRC_SIDE, DST_SIDE):
            lst = KEY_LISTS + 2 * key_id + side
            self._garbage += int(self.lists[lst, L_ROOM])
            self.lists[lst] = 0
        self._free_keys.append(key_id)
        for class_id in self._classes_of.get(key, ()):
            self._write_class(class_id)

    def class_added(self, class_id: int, keys: frozenset[Hashable]) -> None:
        self._class_keys[class_id] = keys
        for key in keys:
            self._classes_of.setdefault(key, set()).add(class_id)
        self._write_class(class_id)

    def class_removed(self, class_id: int) -> None:
        for key in self._class_keys.pop(class_id, ()):
            holders = self._classes_of[key]
            holders.discard(class_id)
            if not holders:
                del self._classes_of[key]
        if class_id < len(self.class_keys):
            self.class_keys[class_id] = -1

    def _write_class(self, class_id: int) -> None:
        """The ids of the rule keys among a class's keys: the row the kernel reads."""
        ids = [self._key_id[key] for key in self._class_keys.get(class_id, ())
               if key in self._key_id]
        rows, width = self.class_keys.shape
        if class_id >= rows or len(ids) > width:
            need_rows = rows if class_id < rows else 2 * class_id + 2  # doubling growth
            grown = np.full((need_rows, max(width, len(ids))), -1, dtype=np.int32)
            grown[:rows, :width] = self.class_keys
            self.class_keys = grown
        row = self.class_keys[class_id]
        row[:] = -1
        row[: len(ids)] = ids

    # ---------------------------------------------------------------- lookups
    def close(self) -> None:
        """Stop following the store and the rules, and give back the rule literals."""
        self.store.unsubscribe(self)
        self._unsubscribe_rules()
        for literals in self._literals.values():
            for literal in literals:
                self.store.remove_literal(literal)
        self._literals = {}

    def affected_rules(self, containers: frozenset[str]) -> set[str]:
        """Ids of the rules a container change can affect (for flow-cache invalidation)."""
        return {rule_id for name in containers for rule_id in self.ruleset.rules_using(name)}

    def classify(self, batch: Batch, rows: np.ndarray | None = None) -> np.ndarray:
        """Index into ``self.rules`` of the first rule matching each row (-1: none)."""
        self.sync()
        if self._ranks_stale:
            self.fields[self._slot_order, RANK] = np.arange(len(self._slot_order),
                                                            dtype=np.int32)
            self._ranks_stale = False
        if rows is None:
            rows = np.arange(batch.count, dtype=np.int64)
        elif not (isinstance(rows, np.ndarray) and rows.dtype == np.int64):
            rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.int64)
        store = self.store
        classify_kernel(batch.meta, rows, len(rows), self.fields, self.pool, self.lists,
                        self.class_keys, store.lpm4.tbl24, store.lpm4.tbl8, store.lpm6.root,
                        store.lpm6.nodes, out)
        return out

    def list_lengths(self) -> dict[str, int]:
        """Rules anchored per kind of list (how the candidates spread; for the bench)."""
        lengths = self.lists[:, L_LENGTH]
        return {"wide": int(lengths[WIDE_LIST]),
                "port": int(lengths[PORT_LISTS:BUCKET_LISTS].sum()),
                "port range": sum(BUCKET_LISTS <= lists[0] < KEY_LISTS
                                  for lists in self._anchor.values()),
                "source key": int(lengths[KEY_LISTS::2].sum()),
                "destination key": int(lengths[KEY_LISTS + 1 :: 2].sum())}

    def memory_bytes(self) -> int:
        return int(self.fields.nbytes + self.pool.nbytes + self.lists.nbytes
                   + self.class_keys.nbytes + self._slot_order.nbytes)


__all__ = ["NO_RULE", "Classifier", "classify_kernel"]
