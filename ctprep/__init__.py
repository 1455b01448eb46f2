"""ctprep: convert public CT tumour datasets into HU-windowed Zarr slice stores.

The Python API mirrors the CLI: :func:`ctprep.convert.convert_dataset` converts,
:class:`ctprep.store.SliceStore` reads and writes stores.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lesionkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
