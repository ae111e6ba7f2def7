"""services.naas.psid: RFC 7597 port sets, the MAP-E way of sharing one address.

Role. A pool may cut each shared address's ports into plain blocks
(``pools.BlockLayout``) or into the port sets of RFC 7597 (MAP-E), section 5.1,
which this module computes: which ports belong to a Port Set ID (PSID), and
which PSID a port belongs to. A MAP-E style set is not one run of ports but
many short runs spread over the whole port space, so that every pod's ports
look like any other host's to the far end (no pod is stuck with only high or
only low ports).

Theory of operation. RFC 7597 reads a 16-bit port number as three fields::

      0                   8                  15
     +-----------+-----------------+-----------+
     |     A     |      PSID       |     j     |
     +-----------+-----------------+-----------+
     |<--- a --->|<------ k ------>|<--- m --->|      a + k + m = 16

``a`` is the PSID offset, ``k`` the PSID length and ``m = 16 - a - k``. The
ports of one PSID are those whose middle ``k`` bits equal it: for each value of
``A`` a run of ``2^m`` consecutive ports starting at ``A * 2^(16-a) + PSID *
2^m``. With ``a > 0``, ``A = 0`` is excluded, which keeps ports
``0 .. 2^(16-a) - 1`` out of every set (0-1023, the system ports, for the
RFC's default ``a = 6``). So each of the ``2^k`` sets of an address holds
``(2^a - 1) * 2^m`` ports in ``2^a - 1`` runs, and the sets are disjoint: two
sets differ in the PSID bits of every port. With ``a = 0`` there is no ``A``:
a set is one run of ``2^m`` ports, PSID 0's starting at port 0.

The RFC's example (section 5.1): ``a = 6, k = 8, PSID = 0x34`` gives ``m = 2``
and the runs 1232-1235, 2256-2259, ..., 63696-63699, 64720-64723: 63 runs of 4.

``PsidLayout`` is the allocator's view: an address holds ``2^k`` blocks, block
``b`` being the port set of PSID ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

DEFAULT_OFFSET = 6  # RFC 7597's default: excludes ports 0-1023


def check_parameters(psid_length: int, offset: int) -> None:
    """Raise ValueError naming the field unless ``k`` and ``a`` make a port layout."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 15:
        raise ValueError(f"psid_offset: {offset!r} is not an offset in bits (0-15)")
    if (isinstance(psid_length, bool) or not isinstance(psid_length, int)
            or not 0 <= psid_length <= 16 - offset):
        raise ValueError(f"psid_length: {psid_length!r} is not a PSID length for offset "
                         f"{offset} (0-{16 - offset} bits)")


def port_set(psid: int, psid_length: int, offset: int = DEFAULT_OFFSET
             ) -> tuple[tuple[int, int], ...]:
    """The ports of ``psid`` as runs ``(first, last)``, both included, in order."""
    check_parameters(psid_length, offset)
    if isinstance(psid, bool) or not isinstance(psid, int) or not 0 <= psid < 1 << psid_length:
        raise ValueError(f"psid: {psid!r} is not a PSID of {psid_length} bits")
    m = 16 - offset - psid_length
    run = 1 << m
    if offset == 0:
        start = psid << m
        return ((start, start + run - 1),)
    step = 1 << (16 - offset)
    return tuple((a * step + (psid << m), a * step + (psid << m) + run - 1)
                 for a in range(1, 1 << offset))


def psid_of(port: int, psid_length: int, offset: int = DEFAULT_OFFSET) -> int | None:
    """The PSID whose set holds ``port``; None for the ports no set holds (A = 0)."""
    check_parameters(psid_length, offset)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port: {port!r} is not a port number (0-65535)")
    if offset and port >> (16 - offset) == 0:
        return None
    m = 16 - offset - psid_length
    return (port >> m) & ((1 << psid_length) - 1)


@dataclass(frozen=True)
class PsidLayout:
    """An address's ports cut into the ``2^k`` port sets of RFC 7597: block = PSID."""

    psid_length: int  # k
    offset: int = DEFAULT_OFFSET  # a
    kind: ClassVar[str] = "psid"

    def __post_init__(self) -> None:
        check_parameters(self.psid_length, self.offset)

    @property
    def blocks(self) -> int:
        return 1 << self.psid_length

    @property
    def ports_per_block(self) -> int:
        run = 1 << (16 - self.offset - self.psid_length)
        return run * ((1 << self.offset) - 1) if self.offset else run

    def ranges(self, block: int) -> tuple[tuple[int, int], ...]:
        return port_set(block, self.psid_length, self.offset)

    def block_of(self, port: int) -> int | None:
        return psid_of(port, self.psid_length, self.offset)

    def describe(self, block: int) -> dict[str, Any]:
        """What an allocation says about its ports, beside their runs."""
        return {"kind": self.kind, "psid": block, "psid_length": self.psid_length,
                "psid_offset": self.offset}

    def spec(self) -> dict[str, Any]:
        """The layout as the stores keep it (``pools.layout_from_spec`` reads it back)."""
        return {"kind": self.kind, "psid_length": self.psid_length, "psid_offset": self.offset}
