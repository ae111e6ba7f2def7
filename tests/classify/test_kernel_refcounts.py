"""The classifier kernel does no reference counting in its loops (see tests/test_refcounts.py)."""

from __future__ import annotations

import numpy as np

from portico.batch import Batch
from portico.classify.classifier import classify_kernel
from portico.classify.lpm4 import LPM4
from portico.classify.lpm6 import LPM6
from tests.test_refcounts import in_loops


def test_classify_kernel_counts_no_references_in_its_loops() -> None:
    batch = Batch(8, slot_size=256)
    batch.reset(8)
    lpm, lpm6 = LPM4(), LPM6()
    args = (batch.meta, np.arange(8, dtype=np.int64), 8, np.zeros((8, 8), np.int32),
            np.zeros((8, 5), np.int64), np.zeros((8, 3), np.int64), np.zeros((8, 4), np.int32),
            lpm.tbl24, lpm.tbl8, lpm6.root, lpm6.nodes, np.zeros(8, np.int64))
    assert in_loops(classify_kernel, args) == ([], set())
