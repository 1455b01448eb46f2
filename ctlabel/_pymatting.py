"""pymatting's closed-form kernels, loaded alone: importing this module compiles (or loads) them.

``import pymatting`` compiles every numba kernel of the package eagerly (KNN, LKM, random
walk, spectral, foreground estimators ...): about 75 s on two cores the first time. ctlabel
needs three of its files: ``laplacian/cf_laplacian.py`` (the matting Laplacian),
``preconditioner/ichol.py`` (incomplete Cholesky) and ``solver/cg.py`` (conjugate
gradients); each imports only numpy, scipy and numba. They are loaded here from the
installed package's files under private module names, which compiles ~5x less (~15 s once,
then numba's cache, in its own subfolder ``ctlabel-kernels``). The package ``pymatting``
itself is never put into ``sys.modules`` and its cache entries are never shared, so code that
imports it normally is unaffected. Should pymatting's layout change, the public package is
imported instead.

Imported only inside ctlabel.matting's functions (and as a forkserver preload), after
:func:`ctlabel.numba_cache.configure_numba_cache`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ctlabel.numba_cache import configure_numba_cache

CACHE_SUBFOLDER = "ctlabel-kernels"
_FILES = {"cf_laplacian": "laplacian/cf_laplacian.py", "ichol": "preconditioner/ichol.py", "cg": "solver/cg.py"}
_cache_folder = configure_numba_cache()  # before numba is imported by the kernels


def _load_alone() -> dict | None:
    """The three functions, from pymatting's files executed as private modules (None: files not found).

    numba keys its cache by source file, and a cached kernel records its module's name. These
    private modules therefore cache into a folder of their own: sharing pymatting's entries
    would make a later ``import pymatting`` look for a module named ``ctlabel._pymatting_*``.
    """
    import numba.core.config

    spec = importlib.util.find_spec("pymatting")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    if not all((root / relative).is_file() for relative in _FILES.values()):
        return None
    shared = numba.core.config.CACHE_DIR
    numba.core.config.CACHE_DIR = str(_cache_folder / CACHE_SUBFOLDER)  # read as each kernel is decorated
    try:
        functions = {}
        for name, relative in _FILES.items():
            module_name = f"ctlabel._pymatting_{name}"
            module_spec = importlib.util.spec_from_file_location(module_name, root / relative)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # numba's cache looks the module up by name
            module_spec.loader.exec_module(module)
            functions[name] = getattr(module, name)
        return functions
    finally:
        numba.core.config.CACHE_DIR = shared


_functions = _load_alone()
if _functions is None:  # pragma: no cover - another pymatting layout
    from pymatting import cf_laplacian, cg, ichol
else:
    cf_laplacian, ichol, cg = _functions["cf_laplacian"], _functions["ichol"], _functions["cg"]

__all__ = ["cf_laplacian", "ichol", "cg"]
