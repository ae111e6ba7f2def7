"""The stride tables under ``LPM4`` and ``LPM6``: a multibit trie with a wide root.

Theory of operation
===================

An address is cut into *chunks*: a first chunk of ``first`` bits (24 for IPv4,
16 for IPv6) and then 8-bit chunks. The first chunk indexes the **root**, a
flat array of ``2**first`` entries; every later chunk indexes a **group** of
256 entries in one flat ``nodes`` array (group ``g`` is ``nodes[256*g :
256*g + 256]``). For IPv4 this is DIR-24-8 (the root is DPDK's ``tbl24``, the
groups its ``tbl8``); for IPv6 it is a 16-8-8-...-8 trie of at most 15 levels.

Every entry is one ``uint32`` that a reader loads in a single store-atomic
access:

* ``0``: no route covers these addresses;
* ``1 .. 2**31 - 1``: the route's value plus one (values are ``0 .. 2**31 - 2``);
* ``0x80000000 | g``: look at group ``g`` with the next chunk.

A lookup therefore ends with ``entry - 1`` as a ``uint32``, which turns "no
route" into ``NO_MATCH = 0xFFFFFFFF`` without a branch. Storing value + 1 also
means a fresh table is all zeros, so ``np.zeros`` hands it out without
touching its pages.

Prefix expansion and the depth shadow
-------------------------------------

A prefix of length ``L`` ends in the level whose chunk holds bit ``L``; it is
*expanded* there to the ``2**(level end - L)`` entries it covers (a /8 writes
65,536 root entries, a /26 writes 64 entries of one group). Beside every entry
a shadow array (``root_depth``, ``node_depth``, ``uint8``, never read by
lookups) records the *depth* of the route that entry holds: ``L + 1``, or 0 for
none. For an entry that points to a group, its depth is that of the longest
prefix ending at or above that entry's level that covers it: the route its
whole group would hold if it had no longer prefixes.

* **Add** (length ``L``, depth ``d = L + 1``): walk down to the prefix's level,
  creating groups on the way (a new group starts as 256 copies of the entry it
  replaces, value and depth). In the covered range, every entry whose depth is
  ``<= d`` takes the new route (a longer prefix already there keeps its
  entries); where such an entry points to a group, the same rule is applied to
  the whole group below it, recursively.
* **Remove**: the same walk, but the entries whose depth is exactly ``d`` are
  this prefix's (no other prefix of length ``L`` covers them), and they are
  given the *covering* route: the longest remaining prefix shorter than ``L``
  that contains this one, found in the exact-match index (one dict per length,
  at most ``width`` probes), or "no route". So a delete restores exactly what
  the shorter prefix would have written.
* **Replace** (add of an existing prefix): the entries of depth exactly ``d``
  take the new value.
* **Freeing groups**: a group whose 256 entries are all routes (no pointers)
  of depth ``<= its level's offset + 1`` holds only what its parent entry's
  cover would hold, all equal. After a remove, the groups on the removed
  prefix's path are checked from the deepest up; each such group is folded
  back into its parent entry and returned to the free list. Only the removed
  prefix's path can become foldable, so a remove never scans the table.

Groups come from a free list kept as a FIFO ring; when it runs dry the
``nodes`` array is grown (doubled) and the new groups are appended to the ring.
Nothing ever rebuilds the table: each update writes only the entries its
prefix covers.

Why readers may look up while updates go on
-------------------------------------------

Every update is a sequence of single-entry ``uint32`` stores, ordered so that
a reader looking up any address between any two stores sees either the old or
the new route for it:

* a new group is filled completely (256 copies of its parent's route) before
  its pointer is stored in the parent entry, so publishing it changes no
  answer;
* an expanded range is rewritten entry by entry, each store switching the
  addresses of that entry from the old route to the new one;
* a group is folded by first storing its (uniform) route in the parent entry,
  and only then returned to the free list, untouched. The list is FIFO, so a
  reader that loaded the old pointer still finds the right route there until
  every other free group has been handed out.

The shadow depths and the exact-match index are written by the updater only.
The ``nodes`` array is replaced (not resized in place) when it grows; a reader
that captured the old array before the growth could be handed a pointer into
the new part, so readers on other threads (``nogil`` kernels) should size the
table up front with ``groups=`` and take ``(root, nodes)`` afresh per batch,
as every lookup in this package does. Readers in the same thread (the
datapath's kernels run under the GIL) only ever see a table between two
updates.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
from numba import njit

NO_MATCH = 0xFFFFFFFF
MAX_VALUE = 2**31 - 2
POINTER = 0x80000000
GROUP_MASK = 0x7FFFFFFF
_STACK = 16 * 256  # deep enough for a depth-first walk of 15 levels of groups
Int = int | np.int64  # kernels take Python or NumPy integers alike


# ---------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _chunk(hi: np.uint64, lo: np.uint64, offset: int, width: int) -> np.int64:
    """Bits ``offset .. offset + width`` of the 128-bit address ``hi:lo`` (no chunk spans 64)."""
    mask = np.uint64((1 << width) - 1)
    if offset < 64:
        return np.int64((hi >> np.uint64(64 - offset - width)) & mask)
    return np.int64((lo >> np.uint64(128 - offset - width)) & mask)


@njit(cache=True)
def _paint(table: np.ndarray, depth: np.ndarray, start: Int, count: Int, nodes: np.ndarray,
           node_depth: np.ndarray, d: Int, exact: bool, stored: Int, new_depth: Int) -> None:
    """Give ``stored``/``new_depth`` to entries ``start .. start+count`` of ``table`` whose
    depth is ``d`` (``exact``) or ``<= d``, following pointers into the groups below."""
    stack = np.empty(_STACK, np.int64)
    value = np.uint32(stored)
    level = np.uint8(new_depth)
    for j in range(start, start + count):
        held = depth[j]
        if (held != d) if exact else (held > d):
            continue
        depth[j] = level
        entry = table[j]
        if entry < POINTER:
            table[j] = value
            continue
        stack[0] = entry & GROUP_MASK
        top = 1
        while top > 0:
            top -= 1
            base = stack[top] * 256
            for k in range(base, base + 256):
                held = node_depth[k]
                if (held != d) if exact else (held > d):
                    continue
                node_depth[k] = level
                entry = nodes[k]
                if entry < POINTER:
                    nodes[k] = value
                else:
                    stack[top] = entry & GROUP_MASK
                    top += 1


@njit(cache=True, inline="always")
def _take_group(nodes: np.ndarray, node_depth: np.ndarray, free: np.ndarray, ring: np.ndarray,
                entry: np.uint32, entry_depth: np.uint8) -> np.int64:
    """A group off the free ring, filled with 256 copies of ``entry`` (not yet published)."""
    group = free[ring[0]]
    ring[0] = (ring[0] + 1) % free.size
    ring[1] -= 1
    base = group * 256
    for k in range(base, base + 256):
        node_depth[k] = entry_depth
        nodes[k] = entry
    return group


@njit(cache=True)
def _update(root: np.ndarray, root_depth: np.ndarray, nodes: np.ndarray,
            node_depth: np.ndarray, free: np.ndarray, ring: np.ndarray, first: int,
            hi: np.uint64, lo: np.uint64, length: Int, exact: bool, stored: Int,
            new_depth: Int, fold: bool) -> int:
    """Apply one add/replace/remove (see the module docstring); return groups taken
    (>= 0) or folded (< 0). The caller guarantees enough free groups for the walk."""
    d = length + 1
    if length <= first:
        start = _chunk(hi, lo, 0, first)
        _paint(root, root_depth, start, 1 << (first - length), nodes, node_depth, d, exact,
               stored, new_depth)
        return 0
    groups = np.empty(16, np.int64)
    parents = np.empty(16, np.int64)  # -1 - i: root entry i; k >= 0: nodes[k]
    taken = 0
    i = _chunk(hi, lo, 0, first)
    entry = root[i]
    if entry < POINTER:
        group = _take_group(nodes, node_depth, free, ring, entry, root_depth[i])
        root[i] = np.uint32(POINTER | group)  # published only once it is full
        taken += 1
    else:
        group = np.int64(entry & GROUP_MASK)
    groups[0] = group
    parents[0] = -1 - i
    levels = 1
    offset = first
    while length > offset + 8:
        j = group * 256 + _chunk(hi, lo, offset, 8)
        entry = nodes[j]
        if entry < POINTER:
            group = _take_group(nodes, node_depth, free, ring, entry, node_depth[j])
            nodes[j] = np.uint32(POINTER | group)
            taken += 1
        else:
            group = np.int64(entry & GROUP_MASK)
        groups[levels] = group
        parents[levels] = j
        levels += 1
        offset += 8
    start = group * 256 + _chunk(hi, lo, offset, 8)
    _paint(nodes, node_depth, start, 1 << (offset + 8 - length), nodes, node_depth, d, exact,
           stored, new_depth)
    if not fold:
        return taken
    folded = 0
    for level in range(levels - 1, -1, -1):
        base = groups[level] * 256
        limit = first + 8 * level + 1  # deepest depth that covers the whole group
        uniform = True
        for k in range(base, base + 256):
            if nodes[k] >= POINTER or node_depth[k] > limit:
                uniform = False
                break
        if not uniform:
            break
        parent = parents[level]
        if parent < 0:
            root[-1 - parent] = nodes[base]  # readers now bypass the group ...
        else:
            nodes[parent] = nodes[base]
        free[(ring[0] + ring[1]) % free.size] = groups[level]  # ... which is freed intact
        ring[1] += 1
        folded += 1
    return -folded


@njit(cache=True)
def _add_many(root: np.ndarray, root_depth: np.ndarray, nodes: np.ndarray,
              node_depth: np.ndarray, free: np.ndarray, ring: np.ndarray, first: int,
              his: np.ndarray, los: np.ndarray, lengths: np.ndarray,
              stored: np.ndarray) -> int:
    """Add many routes in order (a later duplicate replaces an earlier one)."""
    taken = 0
    for r in range(lengths.size):
        length = np.int64(lengths[r])
        taken += _update(root, root_depth, nodes, node_depth, free, ring, first, his[r],
                         los[r], length, False, np.int64(stored[r]), length + 1, False)
    return taken


# ---------------------------------------------------------------- the table
class StrideTable:
    """Longest-prefix match over ``width``-bit addresses; see the module docstring.

    Subclasses say how prefixes are written (``_parse``) and how addresses are
    given to lookups. Routes are kept in an exact-match index, one dict per
    prefix length mapping the network address (an int) to the value.
    """

    width: int = 32
    first: int = 24
    family: str = "IPv4"

    def __init__(self, *, groups: int = 256) -> None:
        if groups < 1:
            raise ValueError(f"groups must be positive, got {groups}")
        self.root = np.zeros(1 << self.first, np.uint32)
        self.root_depth = np.zeros(1 << self.first, np.uint8)
        self.nodes = np.zeros(groups * 256, np.uint32)
        self.node_depth = np.zeros(groups * 256, np.uint8)
        self._free = np.arange(groups, dtype=np.int64)
        self._ring = np.array([0, groups], np.int64)  # head, free groups
        self._routes: list[dict[int, int]] = [{} for _ in range(self.width + 1)]
        self._count = 0

    # -------------------------------------------------------- subclass hooks
    def _parse(self, prefix: object) -> tuple[int, int]:
        raise NotImplementedError

    def _format(self, address: int, length: int) -> str:
        raise NotImplementedError

    # -------------------------------------------------------- checking input
    def _prefix(self, prefix: object) -> tuple[int, int]:
        """``prefix`` as (network address, length), or ValueError naming what is wrong."""
        if isinstance(prefix, tuple):
            if len(prefix) != 2:
                raise ValueError(f"prefix {prefix!r}: expected (address, length)")
            address, length = prefix
            if not _is_int(address) or not _is_int(length):
                raise ValueError(f"prefix {prefix!r}: address and length must be integers")
            address, length = int(address), int(length)
            if not 0 <= length <= self.width:
                raise ValueError(f"prefix {prefix!r}: length {length} out of range "
                                 f"0..{self.width}")
            if not 0 <= address < 1 << self.width:
                raise ValueError(f"prefix {prefix!r}: address out of range for {self.family}")
        else:
            address, length = self._parse(prefix)
        if address & ((1 << (self.width - length)) - 1):
            raise ValueError(f"prefix {self._format(address, length)} has host bits set")
        return address, length

    @staticmethod
    def _value(value: object) -> int:
        if not _is_int(value):
            raise ValueError(f"value {value!r} is not an integer")
        number = int(value)  # type: ignore[call-overload]
        if not 0 <= number <= MAX_VALUE:
            raise ValueError(f"value {number} out of range 0..{MAX_VALUE}")
        return number

    # -------------------------------------------------------- updates
    def _split(self, address: int) -> tuple[np.uint64, np.uint64]:
        address <<= 128 - self.width
        return np.uint64(address >> 64), np.uint64(address & 0xFFFFFFFFFFFFFFFF)

    def _levels_below_root(self, length: int) -> int:
        return max(0, -(-(length - self.first) // 8))

    def _reserve(self, groups: int) -> None:
        """Make sure at least ``groups`` groups are free, growing ``nodes`` if not."""
        free = int(self._ring[1])
        if free >= groups:
            return
        capacity = self._free.size
        grown = max(2 * capacity, capacity + groups - free)
        queue = (int(self._ring[0]) + np.arange(free)) % capacity
        nodes = np.zeros(grown * 256, np.uint32)
        nodes[: capacity * 256] = self.nodes
        node_depth = np.zeros(grown * 256, np.uint8)
        node_depth[: capacity * 256] = self.node_depth
        waiting = np.concatenate([self._free[queue], np.arange(capacity, grown)])
        self._free = np.concatenate([waiting, np.zeros(grown - waiting.size, np.int64)])
        self._ring = np.array([0, waiting.size], np.int64)
        self.node_depth = node_depth
        self.nodes = nodes

    def _apply(self, address: int, length: int, *, exact: bool, value: int, depth: int,
               fold: bool) -> None:
        if not fold:
            self._reserve(self._levels_below_root(length))
        hi, lo = self._split(address)
        _update(self.root, self.root_depth, self.nodes, self.node_depth, self._free,
                self._ring, self.first, hi, lo, length, exact, value + 1 if depth else 0,
                depth, fold)

    def add(self, prefix: object, value: int) -> None:
        """Route ``prefix`` to ``value`` (replacing the value if the prefix is there)."""
        address, length = self._prefix(prefix)
        value = self._value(value)
        routes = self._routes[length]
        exists = address in routes
        self._apply(address, length, exact=exists, value=value, depth=length + 1, fold=False)
        routes[address] = value
        self._count += not exists

    def remove(self, prefix: object) -> None:
        """Remove ``prefix``; its addresses fall back to the longest prefix covering it."""
        address, length = self._prefix(prefix)
        routes = self._routes[length]
        if address not in routes:
            raise KeyError(f"prefix {self._format(address, length)} is not in the table")
        del routes[address]
        self._count -= 1
        cover, cover_length = self._cover(address, length)
        self._apply(address, length, exact=True, value=cover,
                    depth=0 if cover_length < 0 else cover_length + 1, fold=True)

    def _cover(self, address: int, length: int) -> tuple[int, int]:
        """The value and length of the longest prefix shorter than ``length`` holding
        ``address``, or (0, -1)."""
        for shorter in range(length - 1, -1, -1):
            routes = self._routes[shorter]
            if routes:
                key = address & ~((1 << (self.width - shorter)) - 1)
                if key in routes:
                    return routes[key], shorter
        return 0, -1

    def _add_arrays(self, addresses: np.ndarray, lengths: np.ndarray,
                    values: np.ndarray, his: np.ndarray, los: np.ndarray) -> None:
        """Bulk add of checked arrays (``addresses`` as Python-int-able objects)."""
        need = 0
        for offset in range(self.first, self.width, 8):  # a group per distinct path node
            deeper = lengths > offset
            if deeper.any():
                need += np.unique(self._truncate(his[deeper], los[deeper], offset)).size
        self._reserve(need)
        _add_many(self.root, self.root_depth, self.nodes, self.node_depth, self._free,
                  self._ring, self.first, his, los, lengths, values + 1)
        for length in np.unique(lengths).tolist():
            chosen = lengths == length
            routes = self._routes[length]
            before = len(routes)
            routes.update(zip(addresses[chosen].tolist(), values[chosen].tolist(),
                              strict=True))
            self._count += len(routes) - before

    def _truncate(self, his: np.ndarray, los: np.ndarray, bits: int) -> np.ndarray:
        """A key per address for its first ``bits`` bits (for counting distinct paths)."""
        if bits <= 64:
            return his >> np.uint64(64 - bits) if bits < 64 else his
        keep = np.uint64(((1 << (bits - 64)) - 1) << (128 - bits))
        return np.stack([his, los & keep], axis=1).view(np.dtype((np.void, 16))).ravel()

    # -------------------------------------------------------- reading
    def get(self, prefix: object) -> int | None:
        """The value of exactly ``prefix``, or None."""
        address, length = self._prefix(prefix)
        return self._routes[length].get(address)

    def __contains__(self, prefix: object) -> bool:
        return self.get(prefix) is not None

    def __len__(self) -> int:
        return self._count

    def _items(self) -> Iterator[tuple[int, int, int]]:
        for length, routes in enumerate(self._routes):
            for address in sorted(routes):
                yield address, length, routes[address]

    @property
    def groups_in_use(self) -> int:
        """Groups below the root now holding routes (the rest are on the free list)."""
        return self._free.size - int(self._ring[1])

    def memory_bytes(self) -> int:
        """Bytes held: lookup tables, their depth shadows, the free list, and the exact-match
        index (dicts plus an estimate of their int objects)."""
        arrays = sum(a.nbytes for a in (self.root, self.root_depth, self.nodes,
                                         self.node_depth, self._free, self._ring))
        index = sum(sys.getsizeof(routes) for routes in self._routes)
        return arrays + index + self._count * (32 + 8 * (self.width // 32))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
