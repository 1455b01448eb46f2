"""ctprep: convert public CT tumour datasets into HU-windowed Zarr slice stores.

The Python API mirrors the CLI: :func:`ctprep.convert.convert_dataset` converts,
:class:`ctprep.store.SliceStore` reads and writes stores. Folders by role: ``formats/``
(file formats: NIfTI, DICOM series, RTSTRUCT, LIDC XML, DeepLesion CSV/PNG, RECIST),
``sources/`` (one adapter per dataset layout), ``store/`` (the on-disk format),
``commands/`` (check, info, verify, audit, rebuild, export, preview), ``phantoms/``
(fabricated downloads for the demo and the tests); the core (case, geometry, windowing,
lookup, resample, datasets, convert) sits at the top. ctprep imports neither ctlabel
nor ctseg (docs/architecture.md).
"""

from lkbase import __version__

__all__ = ["__version__"]
