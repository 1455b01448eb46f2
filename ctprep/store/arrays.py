"""What goes into and comes out of a store's cases: CaseData, SliceBatch and the checks on arrays to write.

Convention: every array of a case lies on the grid its CaseRecord states (readers size
their buffers from the record): image uint8 (z, channel, y, x), labels (z, y, x) uint8
(float32 for labels added later), optional HU int16 (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ctprep.case import CaseRecord
from ctprep.lookup import LazySlices
from ctprep.store.layout import LABEL_DTYPES, validate_case_id
from lkbase.errors import ParameterError


@dataclass(frozen=True, kw_only=True)
class CaseData:
    """A whole case read back: image (z, channel, y, x) uint8, labels (z, y, x), optional HU."""

    record: CaseRecord
    image: np.ndarray
    labels: Mapping[str, np.ndarray]
    hu: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class Slab:
    """Stored slices ``start .. start + n`` of a case being written: image (n, channel, y, x) uint8,
    labels name -> (n, y, x) uint8, optional HU (n, y, x) int16; numpy arrays or LazySlices."""

    start: int
    image: np.ndarray | LazySlices
    labels: Mapping[str, np.ndarray | LazySlices]
    hu: np.ndarray | LazySlices | None = None

    def __post_init__(self) -> None:
        n = self.image.shape[0]
        lengths = {name: array.shape[0] for name, array in self.labels.items()}
        if self.hu is not None:
            lengths["hu"] = self.hu.shape[0]
        if self.start < 0 or any(length != n for length in lengths.values()):
            raise ParameterError(f"a slab must start at a slice >= 0 with as many slices in every array as in "
                                 f"its image ({n}), found start {self.start} and {lengths}")

    def __len__(self) -> int:
        return self.image.shape[0]


@dataclass(frozen=True, kw_only=True)
class SliceBatch:
    """Slices from any cases: image (n, channel, y, x) uint8, labels name -> (n, y, x)."""

    keys: tuple[tuple[str, int], ...]
    image: np.ndarray
    labels: Mapping[str, np.ndarray]


def check_case_arrays(record: CaseRecord, image: np.ndarray | LazySlices, labels: Mapping[str, np.ndarray],
                      hu: np.ndarray | LazySlices | None, n: int | None = None) -> None:
    """Raise unless the arrays of a case to write match its record (SliceStore.write_case); ``n``: the
    slices these arrays hold (a slab's), by default the record's."""
    validate_case_id(record.case_id)
    n = record.num_slices if n is None else n
    ny, nx = record.geometry.shape[1:]
    if image.dtype != np.uint8 or tuple(image.shape) != (n, len(record.windows), ny, nx):
        raise ParameterError(f"case {record.case_id}: image must be uint8 (z={n}, channel={len(record.windows)}, "
                             f"y={ny}, x={nx}), found {image.dtype} {image.shape}")
    if set(labels) != set(record.label_names):
        raise ParameterError(f"case {record.case_id}: labels {sorted(labels)} differ from the record's "
                             f"{sorted(record.label_names)}")
    # Readers size their buffers from the record, so every array must lie on its grid.
    for name, array in labels.items():
        if array.dtype != np.uint8 or tuple(array.shape) != (n, ny, nx):
            raise ParameterError(f"case {record.case_id}: label {name!r} must be uint8 (z={n}, y={ny}, x={nx}), "
                                 f"found {array.dtype} {tuple(array.shape)}")
    if (hu is not None) != record.has_hu:
        raise ParameterError(f"case {record.case_id}: record.has_hu is {record.has_hu} but hu "
                             f"{'was' if hu is not None else 'was not'} given")
    if hu is not None and (hu.dtype != np.int16 or tuple(hu.shape) != (n, ny, nx)):
        raise ParameterError(f"case {record.case_id}: hu must be int16 (z={n}, y={ny}, x={nx}), "
                             f"found {hu.dtype} {hu.shape}")


def check_label_array(case_id: str, name: str, array: np.ndarray | LazySlices, record: CaseRecord) -> None:
    """Raise unless ``array`` can be stored as ``labels/<name>`` of the case (SliceStore.write_label)."""
    expected = (record.num_slices, *record.geometry.shape[1:])
    if tuple(array.shape) != expected or np.dtype(array.dtype) not in LABEL_DTYPES:
        raise ParameterError(f"case {case_id}: label {name!r} must be uint8 or float32 with shape {expected}, "
                             f"found {array.dtype} {tuple(array.shape)}")
