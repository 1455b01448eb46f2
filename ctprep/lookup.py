"""Table lookup over large integer arrays: ``out[i] = table[keys[i]]``, fast and without big temporaries.

Windowing (int16 HU -> uint8) and label extraction (label value -> 0/1) are both one
lookup per voxel.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from lkbase.errors import ParameterError

# Voxels looked up per np.take call (its intp index buffer is 8x this in bytes: cache-sized).
_BLOCK_VOXELS = 1 << 18


def lookup(table: np.ndarray, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write ``table[keys]`` into ``out`` (same shape as ``keys``, any strides); keys must be unsigned ints.

    np.take first converts all keys into a new intp array (8 bytes a voxel) and
    only then gathers. On a volume that conversion goes through main memory and
    costs more than the gather; feeding it a cache-sized block at a time through
    one reused buffer is ~3x faster on CT volumes (benchmarks/bench_convert.py).
    """
    if keys.dtype.kind != "u":
        raise TypeError(f"lookup keys must be unsigned integers, found {keys.dtype}")
    if out.shape != keys.shape:
        raise ParameterError(f"lookup: out has shape {out.shape}, keys {keys.shape}")
    rows = _BLOCK_VOXELS // max(1, int(np.prod(keys.shape[1:], dtype=np.int64))) if keys.ndim > 1 else 0
    if rows < 1 or rows >= keys.shape[0]:
        _take(table, keys, out)
        return out
    buffer = np.empty((rows, *keys.shape[1:]), dtype=np.intp)
    for start in range(0, keys.shape[0], rows):
        part = keys[start:start + rows]
        indices = buffer[:len(part)]
        np.copyto(indices, part)  # widening, in cache
        _take(table, indices, out[start:start + rows])
    return out


def _take(table: np.ndarray, indices: np.ndarray, out: np.ndarray) -> None:
    # mode="clip" makes np.take write straight into a strided `out` (no buffering);
    # callers' tables cover every key, so clipping never changes a value.
    np.take(table, indices, out=out, mode="clip")


class LazySlices:
    """A (z, ...) volume computed one slice at a time, on demand.

    The store's writer pulls slice after slice from several threads, so a derived
    volume (a windowed image, a binary label) never exists in full: no large
    allocation (slow on virtual machines: every fresh page faults) and the work
    runs in parallel with compression. ``np.asarray`` materialises it when needed.
    """

    def __init__(self, shape: tuple[int, ...], dtype, make_slice: Callable[[int], np.ndarray]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._make_slice = make_slice

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            z = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= z < self.shape[0]:
                raise IndexError(f"slice {key} out of range for {self.shape[0]} slices")
            return self._make_slice(z)
        if isinstance(key, slice) and key.step in (None, 1):  # a slab: still lazy
            return self.take(range(*key.indices(self.shape[0])))
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, dtype=self.dtype)
        for z in range(self.shape[0]):
            out[z] = self._make_slice(z)
        return out if dtype is None else out.astype(dtype)

    def take(self, indices: Sequence[int]) -> "LazySlices":
        """The slices ``indices`` (in that order), still lazy."""
        picked = [int(i) for i in indices]
        return LazySlices((len(picked), *self.shape[1:]), self.dtype, lambda z: self._make_slice(picked[z]))


def lookup_slices(table: np.ndarray, keys: np.ndarray) -> LazySlices:
    """``table[keys]`` for a (z, ...) ``keys`` volume, computed slice by slice."""
    return LazySlices(keys.shape, table.dtype,
                      lambda z: lookup(table, keys[z], np.empty(keys.shape[1:], dtype=table.dtype)))


def nonzero_per_slice(volume: np.ndarray | LazySlices, threads: int = 2) -> np.ndarray:
    """Count of non-zero voxels in each slice of a (z, ...) volume, slices counted in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return np.fromiter(pool.map(lambda z: np.count_nonzero(volume[z]), range(volume.shape[0])),
                           dtype=np.int64, count=volume.shape[0])
