"""The raw dataset layouts ctprep reads, registered by name.

Adding a source is one file here plus one line in ``SOURCES``.
"""

from __future__ import annotations

from ctprep.sources.base import Source
from ctprep.sources.kits19 import Kits19Source
from ctprep.sources.lits import LitsSource

SOURCES: dict[str, type[Source]] = {
    LitsSource.name: LitsSource,
    Kits19Source.name: Kits19Source,
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]()
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}") from None


__all__ = ["SOURCES", "Source", "get_source"]
