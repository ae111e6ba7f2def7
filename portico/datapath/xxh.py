"""xxh: the xxHash64 pieces the datapath's hash tables share (flow cache, connections).

Each key word goes through its own lane round ``rotl(lane + w * P2, 31) * P1``
(independent rounds, so the CPU overlaps them; a lane seed per position, so the
same value in two positions hashes differently), the tables add the rounds
their own way, and ``avalanche`` mixes the sum. Inlined into the tables'
kernels; the constants are xxHash64's primes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
_U29 = np.uint64(29)
_U32 = np.uint64(32)
_U33 = np.uint64(33)


@njit(cache=True, inline="always")
def rotl(x, r):  # type: ignore[no-untyped-def]
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(cache=True, inline="always")
def lane_round(lane, w):  # type: ignore[no-untyped-def]
    return rotl(lane + w * P2, 31) * P1


@njit(cache=True, inline="always")
def avalanche(h):  # type: ignore[no-untyped-def]
    h ^= h >> _U33
    h *= P2
    h ^= h >> _U29
    h *= P3
    h ^= h >> _U32
    return h
