"""Reading stored slices into batches: the part of :class:`~ctprep.store.SliceStore` behind ``read_slices``.

Convention: a mixin of SliceStore (it uses the store's ``record``, ``recorded_checksums``,
``_array``, ``_files`` and ``_chunk_files``); a local array with bytes + zstd one-slice chunks is read straight from its
chunk files (chunks._ChunkFiles), any other through zarr.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import zarr

from ctprep.store.arrays import SliceBatch
from ctprep.store.chunks import _ChunkFiles, read_slices_into
from lkbase.errors import ParameterError


class SliceReading:
    """``read_slices`` and its per-array readers, for SliceStore."""

    def _reader(self, case_id: str, name: str) -> _ChunkFiles | zarr.Array:
        key = (case_id, name)
        if key not in self._chunk_files:
            array = self._array(case_id, name)
            local = self._files.local
            # Chunk files are read directly (fast path; on object stores a batch's at once), others through zarr.
            if not _ChunkFiles.usable(array):
                self._chunk_files[key] = array
            elif local is not None:
                self._chunk_files[key] = _ChunkFiles(array, local / array.path)
            else:  # only the recorded chunks are requested (None: not recorded, ask for all)
                recorded = self.recorded_checksums(case_id).get(name)
                stored = frozenset(recorded) if recorded is not None else None
                self._chunk_files[key] = _ChunkFiles(array, self._files.path(array.path), stored)
        return self._chunk_files[key]

    def read_slices(self, keys: Sequence[tuple[str, int]], labels: Sequence[str] = ()) -> SliceBatch:
        """Read stored slices ``(case_id, z)`` with the named labels into one batch.

        All slices must share one in-plane size (convert with ``--size`` for mixed datasets).
        """
        keys = tuple((str(c), int(z)) for c, z in keys)
        if not keys:
            raise ParameterError("read_slices needs at least one (case_id, z) key")
        shapes = set()
        for case_id, z in keys:
            record = self.record(case_id)
            if not 0 <= z < record.num_slices:
                raise IndexError(f"case {case_id!r} has {record.num_slices} stored slices, asked z={z}")
            shapes.add((len(record.windows), *record.geometry.shape[1:]))
        if len(shapes) != 1:
            raise ParameterError(f"slices of different shapes in one batch: {sorted(shapes)}; convert with --size")
        channels, height, width = shapes.pop()
        image = np.empty((len(keys), channels, height, width), dtype=np.uint8)
        dtypes = {name: self._label_dtype(keys[0][0], name) for name in labels}
        out_labels = {name: np.empty((len(keys), height, width), dtype=dtypes[name]) for name in labels}
        jobs = [(self._reader(case_id, array), z, out[i]) for i, (case_id, z) in enumerate(keys)
                for array, out in (("image", image), *((f"labels/{n}", t) for n, t in out_labels.items()))]
        read_slices_into(jobs, self._files.fs if self._files.local is None else None)
        return SliceBatch(keys=keys, image=image, labels=out_labels)

    def _label_dtype(self, case_id: str, name: str) -> np.dtype:
        reader = self._reader(case_id, f"labels/{name}")
        return np.dtype(reader.dtype if isinstance(reader, _ChunkFiles) else reader.dtype)
