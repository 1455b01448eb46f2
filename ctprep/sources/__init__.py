"""The raw dataset layouts ctprep reads, registered by name.

Adding a source is one file here plus one line in ``SOURCES``. A source's module is imported
when its class is first asked for: a conversion imports only the source it reads.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Mapping

from ctprep.sources.base import Source
from lkbase.choices import unknown
from lkbase.errors import ParameterError


class _Registry(Mapping[str, type[Source]]):
    """Source name -> its class, from "module:Class" entries imported on first use."""

    def __init__(self, entries: Mapping[str, str]):
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type[Source]:
        module, _, cls = self._entries[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


SOURCES: Mapping[str, type[Source]] = _Registry({
    "lits": "ctprep.sources.lits:LitsSource",
    "kits19": "ctprep.sources.kits19:Kits19Source",
    "nsclc": "ctprep.sources.nsclc:NsclcSource",
    "lidc": "ctprep.sources.lidc:LidcSource",
    "deeplesion": "ctprep.sources.deeplesion:DeepLesionSource",
    "nifti": "ctprep.sources.nifti_generic:NiftiGenericSource",
    "dicom": "ctprep.sources.dicom_generic:DicomGenericSource",
})


def get_source(name: str, options: Mapping[str, Any] | None = None) -> Source:
    """The source registered as ``name``, configured with its ``options`` (validated by the source)."""
    try:
        source_type = SOURCES[name]
    except KeyError:
        raise ParameterError(unknown("source", name, sorted(SOURCES))) from None
    return source_type(options=options)


__all__ = ["SOURCES", "Source", "get_source"]
