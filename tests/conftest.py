"""Puts this folder on ``sys.path`` so test modules in every sub-folder can import the shared helper
modules here (``killing``: subprocesses killed at chosen moments). pytest's default import mode
does this for a root conftest already; it is explicit so ``--import-mode=importlib`` works too."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
