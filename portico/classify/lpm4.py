"""IPv4 longest-prefix match: DIR-24-8, looked up for a whole batch at once.

    >>> lpm = LPM4()
    >>> lpm.add("10.0.0.0/8", 1)
    >>> lpm.add("10.1.0.0/16", 2)
    >>> lpm.lookup(np.array([0x0A010203, 0x0A020304, 0x0B000000], np.uint32)).tolist()
    [2, 1, 4294967295]

Theory of operation
===================

DIR-24-8 (Gupta, Lin, McKeown, 1998; DPDK's ``rte_lpm``) trades memory for a
lookup of one or two loads. ``tbl24`` has an entry for every /24 (2**24
entries of 4 bytes, 64 MiB); ``tbl8`` holds groups of 256 entries, one group
for each /24 that has a route longer than /24 inside it::

    entry = tbl24[address >> 8]
    if entry & 0x80000000:                          # a pointer to tbl8 group g
        entry = tbl8[(g << 8) | (address & 0xFF)]
    return entry - 1                                # stored value + 1; 0 - 1 = NO_MATCH

An entry is 0 (no route), ``value + 1`` (values are ``0 .. 2**31 - 2``) or
``0x80000000 | g``. A prefix of length ``L <= 24`` is expanded into the
``2**(24 - L)`` ``tbl24`` entries it covers; a longer one into
``2**(32 - L)`` entries of its /24's group, which is created on first use as
256 copies of the ``tbl24`` entry it replaces.

This is the two-level instance of the stride tables in
``portico.classify.lpm_tables``, whose docstring has the rest: how every entry
keeps the depth (prefix length + 1) of the route it holds in a shadow array,
so that an add overwrites only entries of shorter prefixes and a remove gives
its entries back to the longest prefix that covers it; how groups come from a
FIFO free list and are folded back into ``tbl24`` (and freed) when a remove
leaves them uniform; and why the order of stores lets lookups run while
routes are added and removed: a reader between any two stores sees, for each
address, either the old or the new route. Updates touch only the entries of
the prefix they change; the table is never rebuilt.

Other kernels look addresses up with ``lookup4(lpm.tbl24, lpm.tbl8, address)``
(``@njit(inline="always")``), taking the two arrays afresh for each batch
(``tbl8`` is replaced when it grows).

Memory: 80 MiB for ``tbl24`` and its depth shadow (allocated lazily by the OS;
only the pages routes touch become resident), 1,280 bytes per group, and the
exact-match index (a dict per prefix length).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import numpy as np
from numba import njit

from portico.classify.lpm_tables import MAX_VALUE, NO_MATCH, StrideTable

__all__ = ["LPM4", "NO_MATCH", "MAX_VALUE", "lookup4"]


@njit(cache=True, inline="always")
def lookup4(tbl24: np.ndarray, tbl8: np.ndarray, address: int | np.integer) -> np.uint32:
    """The value of the longest prefix holding ``address`` (an IPv4 address as an
    integer), or ``NO_MATCH``; ``tbl24``/``tbl8`` are ``LPM4.tbl24``/``LPM4.tbl8``."""
    a = np.int64(address)
    entry = np.int64(tbl24[a >> 8])
    pointer = entry >= 0x80000000
    # tbl8 is read whether or not the entry points into it (group 0 always exists):
    # an inlined helper that touches an array on one branch only makes Numba keep
    # a reference-count increment and decrement around every call, two atomic
    # operations that cost ~16 ns here, thirty times the lookup itself.
    below = np.int64(tbl8[(((entry & 0x7FFFFFFF) << 8) | (a & 0xFF)) if pointer else 0])
    if pointer:
        entry = below
    return np.uint32((entry - 1) & 0xFFFFFFFF)


@njit(cache=True)
def _lookup_batch(tbl24: np.ndarray, tbl8: np.ndarray, addresses: np.ndarray,
                  out: np.ndarray) -> None:
    for i in range(addresses.size):
        out[i] = lookup4(tbl24, tbl8, addresses[i])


class LPM4(StrideTable):
    """IPv4 routes (prefix -> uint32 value) with batch longest-prefix lookups.

    Prefixes are ``"10.0.0.0/8"`` strings, ``ipaddress.IPv4Network`` or
    ``(address, length)`` with an integer address; host bits must be zero.
    ``groups`` is the number of ``tbl8`` groups to reserve up front (the table
    grows past it when needed).
    """

    width = 32
    first = 24
    family = "IPv4"

    @property
    def tbl24(self) -> np.ndarray:
        """The first-level table: ``uint32[2**24]``, for ``lookup4``."""
        return self.root

    @property
    def tbl8(self) -> np.ndarray:
        """The groups of 256 entries: ``uint32[256 * groups]``, for ``lookup4``."""
        return self.nodes

    def _parse(self, prefix: object) -> tuple[int, int]:
        if isinstance(prefix, ipaddress.IPv4Network):
            return int(prefix.network_address), prefix.prefixlen
        if isinstance(prefix, str):
            text, _, length = prefix.partition("/")
            try:
                address = int(ipaddress.IPv4Address(text.strip()))
            except ValueError as err:
                raise ValueError(f"malformed prefix {prefix!r}: {err}") from None
            if not length:
                return address, 32
            if not length.strip().isdigit():
                raise ValueError(f"malformed prefix {prefix!r}: length {length!r} "
                                 "is not a number")
            if not 0 <= int(length) <= 32:
                raise ValueError(f"prefix {prefix!r}: length {int(length)} out of range 0..32")
            return address, int(length)
        if isinstance(prefix, ipaddress.IPv6Network):
            raise ValueError(f"prefix {prefix} is IPv6; this table holds IPv4")
        raise ValueError(f"malformed prefix {prefix!r}: expected 'a.b.c.d/n', an "
                         "IPv4Network or (address, length)")

    def _format(self, address: int, length: int) -> str:
        return f"{ipaddress.IPv4Address(address)}/{length}"

    def items(self) -> Iterator[tuple[ipaddress.IPv4Network, int]]:
        """Every (prefix, value), shortest prefixes first, then by address."""
        for address, length, value in self._items():
            yield ipaddress.IPv4Network((address, length)), value

    def add_many(self, addresses: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        """Add routes from arrays of addresses, lengths and values (the bulk build).

        Later duplicates replace earlier ones. Every route is checked before
        any is added: on bad input nothing changes.
        """
        addresses = np.asarray(addresses)
        lengths = np.asarray(lengths)
        values = np.asarray(values)
        if not addresses.shape == lengths.shape == values.shape or addresses.ndim != 1:
            raise ValueError("addresses, lengths and values must be 1-D and the same length")
        for name, array in (("addresses", addresses), ("lengths", lengths), ("values", values)):
            if array.size and array.dtype.kind not in "iu":
                raise ValueError(f"{name} must be integers, not {array.dtype}")
        a = addresses.astype(np.int64)
        n = lengths.astype(np.int64)
        v = values.astype(np.int64)
        _first_bad((a < 0) | (a > 0xFFFFFFFF), "address out of range for IPv4", a, n)
        _first_bad((n < 0) | (n > 32), "length out of range 0..32", a, n)
        host = np.where(n == 0, 0xFFFFFFFF, (1 << (32 - n)) - 1)
        _first_bad((a & host) != 0, "host bits set", a, n)
        bad = np.flatnonzero((v < 0) | (v > MAX_VALUE))
        if bad.size:
            raise ValueError(f"value {int(v[bad[0]])} (route {int(bad[0])}) out of range "
                             f"0..{MAX_VALUE}")
        his = (a.astype(np.uint64) << np.uint64(32))
        self._add_arrays(a, n, v, his, np.zeros_like(his))

    def lookup(self, addresses: np.ndarray) -> np.ndarray:
        """The value of the longest matching prefix for every address (``uint32``),
        ``NO_MATCH`` where none matches."""
        addresses = _addresses(addresses)
        out = np.empty(addresses.size, np.uint32)
        _lookup_batch(self.root, self.nodes, addresses, out)
        return out

    def lookup_into(self, addresses: np.ndarray, out: np.ndarray) -> None:
        """``lookup`` into ``out`` (``uint32``, as long as ``addresses``), allocating nothing."""
        if not (isinstance(addresses, np.ndarray) and addresses.dtype == np.uint32
                and addresses.ndim == 1):
            raise ValueError("addresses must be a 1-D uint32 array")
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint32 and out.ndim == 1
                and out.size == addresses.size):
            raise ValueError(f"out must be a 1-D uint32 array of {addresses.size} entries")
        _lookup_batch(self.root, self.nodes, addresses, out)


def _first_bad(bad: np.ndarray, problem: str, a: np.ndarray, n: np.ndarray) -> None:
    where = np.flatnonzero(bad)
    if where.size:
        k = int(where[0])
        shown = (f"{ipaddress.IPv4Address(int(a[k]))}" if 0 <= a[k] <= 0xFFFFFFFF
                 else str(int(a[k])))
        raise ValueError(f"route {k} ({shown}/{int(n[k])}): {problem}")


def _addresses(addresses: object) -> np.ndarray:
    array = np.asarray(addresses)
    if array.dtype == np.uint32 and array.ndim == 1:
        return array
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError("addresses must be a 1-D array of integers")
    if array.size and (array.min() < 0 or array.max() > 0xFFFFFFFF):
        raise ValueError("addresses out of range for IPv4")
    return array.astype(np.uint32)
