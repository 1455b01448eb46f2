"""The slice index of a store: one row per stored slice (case, z, z_mm, lesion_pixels, split).

Convention: ``z`` is the stored slice row of the case (not the source slice number).
Stored under ``index/`` as one column array each (case ids as codes into the group's
``case_ids`` attribute, splits as codes into ``splits``); it is a cache of the case
records, dropped when a case changes and rebuilt at the end of every conversion.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from ctprep.case import SPLITS, CaseRecord
from lkbase.errors import ParameterError

INDEX_DTYPE = np.dtype([("case", "U64"), ("z", "i4"), ("z_mm", "f4"),
                        ("lesion_pixels", "i8"), ("split", "U5")])


class SliceIndex:
    """The store-level slice table (case, z, z_mm, lesion_pixels, split); ``z`` is the stored slice row."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.keys())

    @property
    def has_lesion(self) -> np.ndarray:
        return self.rows["lesion_pixels"] > 0

    def keys(self) -> list[tuple[str, int]]:
        return [(str(c), int(z)) for c, z in zip(self.rows["case"], self.rows["z"])]

    def filter(self, *, split: str | None = None, lesion_only: bool = False,
               cases: Iterable[str] | None = None) -> "SliceIndex":
        mask = np.ones(len(self.rows), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ParameterError(f"split must be one of {SPLITS}, found {split!r}")
            mask &= self.rows["split"] == split
        if lesion_only:
            mask &= self.has_lesion
        if cases is not None:
            mask &= np.isin(self.rows["case"], list(cases))
        return SliceIndex(self.rows[mask])

    @classmethod
    def from_records(cls, records: Iterable[CaseRecord]) -> "SliceIndex":
        parts = []
        for rec in records:
            part = np.zeros(rec.num_slices, dtype=INDEX_DTYPE)
            part["case"] = rec.case_id
            part["z"] = np.arange(rec.num_slices)
            part["z_mm"] = rec.z_positions
            part["lesion_pixels"] = rec.lesion_pixels
            part["split"] = rec.split
            parts.append(part)
        return cls(np.concatenate(parts) if parts else np.zeros(0, dtype=INDEX_DTYPE))



def write_index(root: zarr.Group, index: SliceIndex) -> None:
    """Store ``index`` as the columns of ``root/index``."""
    group = root.require_group("index")
    rows = index.rows
    case_ids = sorted(set(rows["case"].tolist()))
    codes = np.searchsorted(np.asarray(case_ids, dtype=INDEX_DTYPE["case"]), rows["case"]).astype(np.int32)
    columns = {
        "case": codes,
        "z": rows["z"],
        "z_mm": rows["z_mm"],
        "lesion_pixels": rows["lesion_pixels"],
        "split": np.asarray([SPLITS.index(s) for s in rows["split"]], dtype=np.uint8),
    }
    for name, values in columns.items():
        array = group.create_array(name, shape=values.shape, dtype=values.dtype,
                                   chunks=(max(len(values), 1),), compressors=ZstdCodec(level=3),
                                   fill_value=0, overwrite=True)
        if len(values):
            array[...] = values
    group.attrs.update({"case_ids": case_ids, "splits": list(SPLITS), "num_slices": int(len(rows))})


def read_index(root: zarr.Group) -> SliceIndex | None:
    """The index stored in ``root/index`` (None if absent)."""
    if "index" not in root:
        return None
    group = root["index"]
    case_ids = list(group.attrs.get("case_ids", []))
    n = int(group.attrs.get("num_slices", 0))
    rows = np.zeros(n, dtype=INDEX_DTYPE)
    if n:
        rows["case"] = np.asarray(case_ids, dtype=INDEX_DTYPE["case"])[group["case"][...]]
        rows["z"] = group["z"][...]
        rows["z_mm"] = group["z_mm"][...]
        rows["lesion_pixels"] = group["lesion_pixels"][...]
        rows["split"] = np.asarray(SPLITS)[group["split"][...]]
    return SliceIndex(rows)
