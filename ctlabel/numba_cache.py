"""Where numba caches compiled kernels: one persistent folder per machine, set before numba loads.

The leaf both :mod:`ctlabel.matting` (before it loads the kernels) and
:mod:`ctlabel._pymatting` (as it loads them) call, so the imports point one way:
matting -> _pymatting -> numba_cache. Imports nothing heavy: numba is configured through the
environment (``NUMBA_CACHE_DIR``, inherited by child processes), or through its config
module when it is already imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_numba_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lesionkit/numba``, else ``~/.cache/lesionkit/numba``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lesionkit" / "numba"


def configure_numba_cache() -> Path:
    """Make numba cache compiled code in a persistent folder; returns the folder in use.

    Respects a ``NUMBA_CACHE_DIR`` already set. Must run before numba is imported to take
    effect through the environment; if numba is already imported without a cache folder,
    its configuration is updated too. Child processes inherit the setting.
    """
    folder = os.environ.get("NUMBA_CACHE_DIR")
    if not folder:
        folder = str(default_numba_cache_dir())
        os.environ["NUMBA_CACHE_DIR"] = folder
    config = sys.modules.get("numba.core.config")
    if config is not None and not getattr(config, "CACHE_DIR", ""):
        config.CACHE_DIR = folder
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)
