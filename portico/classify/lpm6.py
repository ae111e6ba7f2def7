"""IPv6 longest-prefix match: a 16-8-8-...-8 multibit trie, looked up for a whole batch.

    >>> lpm = LPM6()
    >>> lpm.add("2001:db8::/32", 1)
    >>> lpm.add("2001:db8:1::/48", 2)
    >>> hi = np.array([0x20010DB800010000, 0x20010DB800020000], np.uint64)
    >>> lpm.lookup(hi, np.zeros(2, np.uint64)).tolist()
    [2, 1]

Theory of operation
===================

Addresses are given as two ``uint64`` columns, ``hi`` (bits 0-63) and ``lo``
(bits 64-127), as the batch's address columns hold them. The trie's **root**
is indexed by the first 16 bits (65,536 entries, 256 KiB); every later level
by 8 bits, through groups of 256 entries in one flat ``nodes`` array, so a
lookup walks at most 15 levels and usually few: a /48 route ends in the
fourth level, a /64 in the seventh. Why 16 then 8: the first 16 bits of a
global route are shared by huge numbers of prefixes (2000::/3 is the whole
Internet), so a wider root would mostly repeat itself (a 24-bit root costs
80 MiB, as IPv4's ``tbl24`` does, to save one level); 8-bit strides keep a
group at 1 KiB plus its 256-byte depth shadow, so a sparse table of long
prefixes does not pay for wide nodes it barely uses. Where prefixes cluster
at /32, /48 and /64 (as allocation policy makes them), those lengths end
exactly on a level boundary and expand to a single entry.

Entries, expansion, the depth shadow that lets a remove restore the covering
prefix, group folding and the FIFO free list, and why readers may look up
while routes are added and removed (each reader sees, for every address,
either the old or the new route between any two stores: a group is filled
before it is published, and folded into its parent before it is freed) are
those of ``portico.classify.lpm_tables``; see its docstring. Updates touch
only the entries of the prefix they change; the table is never rebuilt.

Other kernels call::

    lookup6(root: uint32[65536], nodes: uint32[256 * groups], hi: uint64, lo: uint64)
        -> uint32

with ``lpm.root, lpm.nodes`` taken afresh for each batch (``nodes`` is
replaced when it grows); it returns the value or ``NO_MATCH``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import numpy as np
from numba import njit

from portico.classify.lpm_tables import MAX_VALUE, NO_MATCH, StrideTable

__all__ = ["LPM6", "NO_MATCH", "MAX_VALUE", "lookup6"]


@njit(cache=True, inline="always")
def lookup6(root: np.ndarray, nodes: np.ndarray, hi: np.uint64, lo: np.uint64) -> np.uint32:
    """The value of the longest prefix holding the address ``hi:lo``, or ``NO_MATCH``;
    ``root``/``nodes`` are ``LPM6.root``/``LPM6.nodes``."""
    h = np.uint64(hi)
    entry = root[np.int64(h >> np.uint64(48))]
    offset = 16
    while entry >= 0x80000000:
        if offset < 64:
            chunk = np.int64((h >> np.uint64(56 - offset)) & np.uint64(0xFF))
        else:
            chunk = np.int64((np.uint64(lo) >> np.uint64(120 - offset)) & np.uint64(0xFF))
        entry = nodes[((np.int64(entry) & 0x7FFFFFFF) << 8) | chunk]
        offset += 8
    return np.uint32((np.int64(entry) - 1) & 0xFFFFFFFF)


@njit(cache=True)
def _lookup_batch(root: np.ndarray, nodes: np.ndarray, hi: np.ndarray, lo: np.ndarray,
                  out: np.ndarray) -> None:
    for i in range(hi.size):
        out[i] = lookup6(root, nodes, hi[i], lo[i])


class LPM6(StrideTable):
    """IPv6 routes (prefix -> uint32 value) with batch longest-prefix lookups.

    Prefixes are ``"2001:db8::/32"`` strings, ``ipaddress.IPv6Network`` or
    ``(address, length)`` with a 128-bit integer address; host bits must be
    zero. ``groups`` is the number of groups to reserve up front.
    """

    width = 128
    first = 16
    family = "IPv6"

    def __init__(self, *, groups: int = 64) -> None:
        super().__init__(groups=groups)

    def _parse(self, prefix: object) -> tuple[int, int]:
        if isinstance(prefix, ipaddress.IPv6Network):
            return int(prefix.network_address), prefix.prefixlen
        if isinstance(prefix, str):
            text, _, length = prefix.partition("/")
            try:
                address = int(ipaddress.IPv6Address(text.strip()))
            except ValueError as err:
                raise ValueError(f"malformed prefix {prefix!r}: {err}") from None
            if not length:
                return address, 128
            if not length.strip().isdigit():
                raise ValueError(f"malformed prefix {prefix!r}: length {length!r} "
                                 "is not a number")
            if not 0 <= int(length) <= 128:
                raise ValueError(f"prefix {prefix!r}: length {int(length)} out of range 0..128")
            return address, int(length)
        if isinstance(prefix, ipaddress.IPv4Network):
            raise ValueError(f"prefix {prefix} is IPv4; this table holds IPv6")
        raise ValueError(f"malformed prefix {prefix!r}: expected 'x:y::/n', an "
                         "IPv6Network or (address, length)")

    def _format(self, address: int, length: int) -> str:
        return f"{ipaddress.IPv6Address(address)}/{length}"

    def items(self) -> Iterator[tuple[ipaddress.IPv6Network, int]]:
        """Every (prefix, value), shortest prefixes first, then by address."""
        for address, length, value in self._items():
            yield ipaddress.IPv6Network((address, length)), value

    def add_many(self, hi: np.ndarray, lo: np.ndarray, lengths: np.ndarray,
                 values: np.ndarray) -> None:
        """Add routes from arrays (network address as ``hi``/``lo`` ``uint64``, length,
        value); later duplicates replace earlier ones; on bad input nothing changes."""
        hi = np.asarray(hi)
        lo = np.asarray(lo)
        lengths = np.asarray(lengths)
        values = np.asarray(values)
        if not hi.shape == lo.shape == lengths.shape == values.shape or hi.ndim != 1:
            raise ValueError("hi, lo, lengths and values must be 1-D and the same length")
        if hi.size and (hi.dtype != np.uint64 or lo.dtype != np.uint64):
            raise ValueError("hi and lo must be uint64 arrays")
        for name, array in (("lengths", lengths), ("values", values)):
            if array.size and array.dtype.kind not in "iu":
                raise ValueError(f"{name} must be integers, not {array.dtype}")
        n = lengths.astype(np.int64)
        v = values.astype(np.int64)
        bad = np.flatnonzero((n < 0) | (n > 128))
        if bad.size:
            raise ValueError(f"route {int(bad[0])}: length {int(n[bad[0]])} out of range 0..128")
        hi_keep = np.where(n >= 64, 0xFFFFFFFFFFFFFFFF, _ones_then_zeros(n)).astype(np.uint64)
        lo_keep = np.where(n <= 64, 0, _ones_then_zeros(n - 64)).astype(np.uint64)
        bad = np.flatnonzero(((hi & ~hi_keep) | (lo & ~lo_keep)) != 0)
        if bad.size:
            k = int(bad[0])
            address = (int(hi[k]) << 64) | int(lo[k])
            raise ValueError(f"route {k} ({self._format(address, int(n[k]))}): host bits set")
        bad = np.flatnonzero((v < 0) | (v > MAX_VALUE))
        if bad.size:
            raise ValueError(f"value {int(v[bad[0]])} (route {int(bad[0])}) out of range "
                             f"0..{MAX_VALUE}")
        addresses = np.array([(h << 64) | low for h, low in zip(hi.tolist(), lo.tolist(),
                                                                 strict=True)], dtype=object)
        self._add_arrays(addresses, n, v, hi, lo)

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The value of the longest matching prefix for every address ``hi[i]:lo[i]``
        (``uint32``), ``NO_MATCH`` where none matches."""
        hi, lo = _columns(hi, lo)
        out = np.empty(hi.size, np.uint32)
        _lookup_batch(self.root, self.nodes, hi, lo, out)
        return out

    def lookup_into(self, hi: np.ndarray, lo: np.ndarray, out: np.ndarray) -> None:
        """``lookup`` into ``out`` (``uint32``, as long as ``hi``), allocating nothing."""
        for name, column in (("hi", hi), ("lo", lo)):
            if not (isinstance(column, np.ndarray) and column.dtype == np.uint64
                    and column.ndim == 1 and column.size == hi.size):
                raise ValueError(f"{name} must be a 1-D uint64 array of {hi.size} entries")
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint32 and out.ndim == 1
                and out.size == hi.size):
            raise ValueError(f"out must be a 1-D uint32 array of {hi.size} entries")
        _lookup_batch(self.root, self.nodes, hi, lo, out)


def _ones_then_zeros(bits: np.ndarray) -> np.ndarray:
    """A 64-bit mask of ``bits`` leading ones per element (``bits`` clipped to 0..64)."""
    clipped = np.clip(bits, 0, 64).astype(np.uint64)
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    shifted = np.where(clipped == 0, np.uint64(0),
                       ones << (np.uint64(64) - np.maximum(clipped, np.uint64(1))))
    return np.where(clipped >= 64, ones, shifted).astype(np.uint64)


def _columns(hi: object, lo: object) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(hi)
    low = np.asarray(lo)
    if h.ndim != 1 or h.shape != low.shape:
        raise ValueError("hi and lo must be 1-D arrays of the same length")
    if h.size and (h.dtype != np.uint64 or low.dtype != np.uint64):
        raise ValueError("hi and lo must be uint64 arrays")
    return h.astype(np.uint64, copy=False), low.astype(np.uint64, copy=False)
