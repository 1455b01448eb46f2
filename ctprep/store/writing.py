"""Writing a case's arrays slab by slab: the arrays on the record's grid, each slab's chunks, the completion marker.

Convention: a case's arrays are created with its first slab (image, hu, then labels in the
slab's order), every slab's chunks are written through one thread pool per case, and the
case's marker (``lesionkit_case``: complete, record, chunk checksums) is written last, only
once every stored slice was written exactly once and every recorded chunk is on disk.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np
import zarr

from ctprep.case import CaseRecord
from ctprep.errors import StoreError
from ctprep.store.arrays import Slab, check_case_arrays
from ctprep.store.chunks import _REMOTE_THREADS, _WRITE_THREADS, create_slice_array
from ctprep.store.files import _Files
from ctprep.store.integrity import missing_chunks
from ctprep.store.layout import _CASE_KEY
from lkbase.errors import ParameterError


def write_case_arrays(group: zarr.Group, files: _Files, store_path: str, record: CaseRecord, slabs: Iterable[Slab],
                      final: Callable[[], CaseRecord] | None, write_slab: Callable) -> None:
    """Write a case's arrays into its (new) ``group`` from ``slabs``, then its completion marker.

    ``write_slab(array, start, data, put=, pool=)`` writes one slab of one array (chunks.write_slab,
    or a test's wrapper of it). Raises before the marker when the slabs do not hold each stored
    slice once, when a chunk is missing afterwards, or when ``final()`` changes the grid.
    """
    group.attrs.update({_CASE_KEY: {"complete": False}})
    arrays: dict[str, zarr.Array] = {}
    written: dict[str, dict[str, str]] = {}
    hashed: set[str] = set()  # arrays whose chunks zarr wrote: their files are hashed at the end
    covered = np.zeros(record.num_slices, dtype=np.int64)
    threads = _WRITE_THREADS if files.local is not None else _REMOTE_THREADS
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for slab in slabs:
            check_case_arrays(record, slab.image, slab.labels, slab.hu, n=len(slab))
            if not arrays:  # created with the first slab: the labels in its order
                arrays = _create_case_arrays(group, record, list(slab.labels))
            parts = {"image": slab.image, **({"hu": slab.hu} if slab.hu is not None else {}),
                     **{f"labels/{name}": data for name, data in slab.labels.items()}}
            for name, data in parts.items():
                sums = write_slab(arrays[name], slab.start, data, put=files.put, pool=pool)
                if sums is None:
                    hashed.add(name)
                else:
                    written.setdefault(name, {}).update(sums)
            covered[slab.start:slab.start + len(slab)] += 1
    if (covered != 1).any():
        wrong = int(np.flatnonzero(covered != 1)[0])
        raise ParameterError(f"case {record.case_id}: slabs must hold each of its {record.num_slices} slices "
                             f"once, found slice {wrong} {covered[wrong]} times")
    checksums = {name: files.checksums(f"{group.path}/{name}") if name in hashed
                 else dict(sorted(written.get(name, {}).items())) for name in arrays}
    stored = final() if final is not None else record
    if _layout(stored) != _layout(record):
        raise ParameterError(f"case {record.case_id}: the final record's grid {_layout(stored)} differs from "
                             f"the one written {_layout(record)}")
    complete_case(group, files, store_path, stored, checksums)


def complete_case(group: zarr.Group, files: _Files, store_path: str, record: CaseRecord, checksums: dict,
                  **marker) -> None:
    """Check every written array is whole on disk, then write the completion marker (last), with ``marker``'s
    extra keys (a predictions store's dataset digest)."""
    for name, chunks in checksums.items():  # never marked complete unless whole on disk
        if problem := missing_chunks(files, store_path, record.case_id, name, f"{group.path}/{name}", chunks):
            raise StoreError(f"{problem} after writing it (removed by another writer?)")
    # The completion marker is the last write: before it the case does not exist for readers.
    group.attrs.update({_CASE_KEY: {"complete": True, "record": record.to_dict(), "checksums": checksums, **marker}})


def _create_case_arrays(group: zarr.Group, record: CaseRecord, label_names: list[str]) -> dict[str, zarr.Array]:
    """The empty arrays of a case on its record's grid: image, hu (when kept), then labels/<name>."""
    n, ny, nx = record.num_slices, *record.geometry.shape[1:]
    arrays = {"image": create_slice_array(group, "image", (n, len(record.windows), ny, nx), np.uint8,
                                          ("z", "channel", "y", "x"))}
    if record.has_hu:
        arrays["hu"] = create_slice_array(group, "hu", (n, ny, nx), np.int16, ("z", "y", "x"))
    labels = group.create_group("labels")
    for name in label_names:
        arrays[f"labels/{name}"] = create_slice_array(labels, name, (n, ny, nx), np.uint8, ("z", "y", "x"))
    return arrays


def _layout(record: CaseRecord) -> tuple:
    """What fixes a case's arrays: slices, grid, channels, labels, whether HU is kept."""
    return (record.num_slices, record.geometry.shape, len(record.windows), sorted(record.label_names), record.has_hu)
