"""hugemem: zeroed arrays, aligned, and on huge pages where the kernel gives them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from portico import hugemem
from portico.datapath.flowcache import ENTRY_DTYPE


def _huge_kib_at(address: int) -> int:
    """AnonHugePages of the mapping of this process that holds ``address``."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    inside = False
    for line in lines:
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_small_arrays_are_zeroed_and_line_aligned() -> None:
    a = hugemem.zeros(100, np.uint32)
    assert a.shape == (100,) and a.dtype == np.uint32
    assert not a.any()
    assert a.ctypes.data % hugemem.CACHE_LINE == 0


def test_big_tables_start_on_a_huge_page_and_get_huge_pages() -> None:
    count = 3 * hugemem.HUGE // ENTRY_DTYPE.itemsize
    entries = hugemem.zeros(count, ENTRY_DTYPE)
    assert entries.shape == (count,) and entries.dtype == ENTRY_DTYPE
    assert entries.ctypes.data % hugemem.HUGE == 0
    raw = entries.view(np.uint8)
    assert not raw.any()
    raw[:] = 1  # touched: the kernel backs it now
    assert int(raw.sum()) == raw.size
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if mode.exists() and "[never]" not in mode.read_text():
        assert _huge_kib_at(entries.ctypes.data) >= hugemem.HUGE // 1024
