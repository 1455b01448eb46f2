"""lkbase: what ctprep, ctlabel and ctseg share, and nothing else.

It imports none of the three tools (a test enforces it): the error root
(:mod:`lkbase.errors`), the one atomic-write helper every writer uses
(:mod:`lkbase.atomic`), the per-case runner (:mod:`lkbase.runner`, local process pool
or dask via :mod:`lkbase.executor`) and the CLI's one-line error wrapper
(:mod:`lkbase.cli`). The demo, which uses all three tools, lives above them in
:mod:`lesionkit`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lesionkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
