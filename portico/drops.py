"""Drop reasons: each stage declares its own, this registry names and counts them.

A stage declares its reasons as an ``IntEnum`` at the top of its file, with codes
in a range of its own, and registers it here. The codes are fixed in the
declaration, not handed out at import, because Numba kernels compile them in as
constants and cache the machine code on disk. The ranges taken so far:

========  ==========================================================
1..63     parse (``datapath/stages/parse.py``; "inner-" reasons at +32)
64..79    actions (``datapath/actions.py``)
80..95    NAT (``datapath/nat.py``)
96..103   ingress (``datapath/stages/ingress.py``)
104..111  switch (``datapath/stages/switch.py``)
112..119  output (``datapath/stages/output.py``)
120..127  replies (``datapath/replies.py``: answers built in place)
128..135  route (``datapath/stages/route.py``)
136..139  the datapath itself (``datapath/datapath.py``, ``datapath/icmp_quote.py``)
140..147  firewall (``datapath/stages/firewall.py``)
148..155  port-range NAT of NaaS (``datapath/stages/portnat.py``)
240..255  tests' toy stages
========  ==========================================================

``drop`` is a ``uint8`` column: 0 means "not dropped", so a reason is never 0.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

_NAMES: dict[int, str] = {}
_OWNER: dict[int, str] = {}


def register(stage: str, reasons: type[IntEnum], *, names: dict[int, str] | None = None) -> None:
    """Claim the codes of ``reasons`` for ``stage``; refuse a code another stage holds.

    ``names`` may add codes the enum does not list (parse derives "inner-..." reasons).
    """
    table = {int(r): r.name.lower().replace("_", "-") for r in reasons}
    table.update(names or {})
    for code, name in table.items():
        if not 0 < code < 256:
            raise ValueError(f"{stage}: drop reason {name} has code {code}, outside 1..255")
        owner = _OWNER.get(code)
        if owner is not None and owner != stage:
            raise ValueError(f"{stage}: drop code {code} ({name}) is already {owner}'s")
    for code, name in table.items():
        _NAMES[code] = name
        _OWNER[code] = stage


def name(code: int) -> str:
    return _NAMES.get(int(code), f"unknown-{int(code)}")


def stage_of(code: int) -> str:
    return _OWNER.get(int(code), "?")


def count(drop_column: np.ndarray) -> dict[str, int]:
    """Packets dropped per reason name, for the rows given (0 = not dropped is left out)."""
    tally = np.bincount(drop_column.astype(np.intp), minlength=256)
    return {name(code): int(n) for code, n in enumerate(tally) if code and n}
