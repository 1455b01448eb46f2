"""Putting a gantry-tilted or irregularly spaced DICOM series on a regular grid (ctprep.formats.dicom).

Convention: native stacked slices (slice, row, col), ascending along the slice normal, are
first shifted in-plane (tilt), then interpolated in z; linear for HU and float arrays
(rounded back to integer dtypes), nearest-neighbour for masks, ``fill`` outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True, eq=False)
class Resampling:
    """How native stacked slices become the regular grid: in-plane shifts, then z interpolation."""

    shifts: np.ndarray | None      # (n_native, 2) row, col shift in pixels (gantry tilt), or None
    lower: np.ndarray | None       # (n_out,) native index below each output slice, or None
    weight: np.ndarray | None      # (n_out,) weight of native slice lower + 1



def _shift_slice(image: np.ndarray, dr: float, dc: float, linear: bool, fill) -> np.ndarray:
    """``out[r, c] = image[r - dr, c - dc]`` (bilinear or nearest), ``fill`` outside."""
    rows, cols = image.shape
    if not linear:
        dr, dc = round(dr), round(dc)
    r0, c0 = math.floor(dr), math.floor(dc)
    fr, fc = dr - r0, dc - c0

    def shifted(a: np.ndarray, sr: int, sc: int) -> np.ndarray:
        out = np.full((rows, cols), fill, dtype=np.float32 if linear else image.dtype)
        src_r = slice(max(0, -sr), min(rows, rows - sr))
        dst_r = slice(max(0, sr), min(rows, rows + sr))
        src_c = slice(max(0, -sc), min(cols, cols - sc))
        dst_c = slice(max(0, sc), min(cols, cols + sc))
        if src_r.start < src_r.stop and src_c.start < src_c.stop:
            out[dst_r, dst_c] = a[src_r, src_c]
        return out

    if not linear or (fr == 0 and fc == 0):
        return shifted(image, r0, c0).astype(image.dtype, copy=False) if not linear else shifted(image, r0, c0)
    return ((1 - fr) * (1 - fc) * shifted(image, r0, c0) + (1 - fr) * fc * shifted(image, r0, c0 + 1)
            + fr * (1 - fc) * shifted(image, r0 + 1, c0) + fr * fc * shifted(image, r0 + 1, c0 + 1))


def apply_resampling(native: np.ndarray, plan: Resampling, linear: bool, fill) -> np.ndarray:
    """Apply in-plane shifts then z interpolation. Linear results are rounded back to integer dtypes."""
    n = native.shape[0]
    dtype = native.dtype

    def native_slice(i: int) -> np.ndarray:
        if plan.shifts is None:
            return native[i].astype(np.float32) if linear else native[i]
        return _shift_slice(native[i], plan.shifts[i, 0], plan.shifts[i, 1], linear, fill)

    if plan.lower is None:
        out = np.empty(native.shape, dtype=dtype)
        for i in range(n):
            out[i] = _finish(native_slice(i), dtype, linear)
        return out
    out = np.empty((len(plan.lower),) + native.shape[1:], dtype=dtype)
    for k, (i, w) in enumerate(zip(plan.lower, plan.weight)):
        i, w = int(i), float(w)
        if not linear:
            out[k] = native_slice(i + 1 if w >= 0.5 else i)
        elif w == 0.0 or i + 1 >= n:
            out[k] = _finish(native_slice(i), dtype, linear)
        else:
            out[k] = _finish((1 - w) * native_slice(i) + w * native_slice(i + 1), dtype, linear)
    return out


def _finish(values: np.ndarray, dtype: np.dtype, linear: bool) -> np.ndarray:
    if linear and dtype.kind in "iub":
        return np.rint(values).astype(dtype)
    return values
