"""How every benchmark takes a time: the median of repeats, garbage collector off.

One function so that every workload's figures are taken the same way (as
``timeit`` does, the collector is off while timing, so a collection that a
previous step left pending is not charged to the code being measured).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def median_seconds(work: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, GC off; also the last call's result."""
    times = []
    result: object = None
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            result = work()
            times.append(time.perf_counter() - began)
    finally:
        if enabled:
            gc.enable()
    return statistics.median(times), result
