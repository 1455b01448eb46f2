"""The raw dataset layouts ctprep reads, registered by name.

Adding a source is one file here plus one line in ``SOURCES``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ctprep.sources.base import Source
from ctprep.sources.deeplesion import DeepLesionSource
from ctprep.sources.dicom_generic import DicomGenericSource
from ctprep.sources.kits19 import Kits19Source
from ctprep.sources.lidc import LidcSource
from ctprep.sources.lits import LitsSource
from ctprep.sources.nifti_generic import NiftiGenericSource
from ctprep.sources.nsclc import NsclcSource
from lkbase.choices import unknown
from lkbase.errors import ParameterError

SOURCES: dict[str, type[Source]] = {
    LitsSource.name: LitsSource,
    Kits19Source.name: Kits19Source,
    NsclcSource.name: NsclcSource,
    LidcSource.name: LidcSource,
    DeepLesionSource.name: DeepLesionSource,
    NiftiGenericSource.name: NiftiGenericSource,
    DicomGenericSource.name: DicomGenericSource,
}


def get_source(name: str, options: Mapping[str, Any] | None = None) -> Source:
    """The source registered as ``name``, configured with its ``options`` (validated by the source)."""
    try:
        source_type = SOURCES[name]
    except KeyError:
        raise ParameterError(unknown("source", name, sorted(SOURCES))) from None
    return source_type(options=options)


__all__ = ["SOURCES", "Source", "get_source"]
