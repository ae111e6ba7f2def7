"""The L2 stage tests share ``l2net.py`` (a network and a datapath over it): importable here.

The suite runs with ``--import-mode=importlib``, which puts no test directory on
``sys.path``; this one is added so that ``from l2net import ...`` works.
"""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
