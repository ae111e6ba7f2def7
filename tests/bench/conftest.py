"""Make the top-level ``bench`` package importable however pytest is started.

An editable install that lists ``bench*`` in pyproject's package find makes
this a no-op; it only matters for a bare ``pytest`` from a checkout.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
