"""hugemem: zeroed NumPy arrays backed by transparent huge pages, for big random-access tables.

Role. The flow cache, the connection table and the NAT bindings are probed at
random over tens or hundreds of MiB. With 4 KiB pages nearly every probe of
such a table misses the TLB too, and the page walk costs another trip to
memory; with 2 MiB pages the TLB covers the whole table. Linux gives huge
pages to an anonymous mapping that asks for them (``madvise(MADV_HUGEPAGE)``)
when transparent huge pages are in ``madvise`` or ``always`` mode, which is
the default of most distributions; it is a hint, so a machine that has them
off simply gets 4 KiB pages and the same results.

Theory of operation. ``zeros(count, dtype)`` maps ``count * itemsize`` bytes
plus one huge page of slack anonymously (so zeroed by the kernel, and touched
lazily), advises huge pages, and returns a view that starts on a 2 MiB
boundary, so that the first and last huge page are whole. Small arrays
(below ``HUGE``) take ``np.zeros`` with cache-line alignment: a huge page for
a 64 KiB table would waste memory and gain nothing. The mapping lives as long
as the array (the view keeps the ``mmap`` object alive through its base).
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np

HUGE = 2 << 20  # bytes in an x86-64 / arm64 transparent huge page
CACHE_LINE = 64


def zeros(count: int, dtype: np.dtype | type | str, *, align: int = CACHE_LINE) -> np.ndarray:
    """A zeroed 1-D array of ``count`` items of ``dtype``: on huge pages when it is
    at least ``HUGE`` bytes, else ``align``-aligned ordinary memory."""
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    if nbytes < HUGE:
        raw = np.zeros(nbytes + align, dtype=np.uint8)
        skip = -raw.ctypes.data % align
        return raw[skip : skip + nbytes].view(dtype)
    region = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(region, dtype=np.uint8)
    skip = -raw.ctypes.data % HUGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # THP compiled out: ordinary pages, same results
            region.madvise(mmap.MADV_HUGEPAGE)
    return raw[skip : skip + nbytes].view(dtype)


__all__ = ["HUGE", "zeros"]
