"""Resampling a canonical case onto a new spacing or in-plane size (SimpleITK).

Images use linear interpolation (rounded back to integer HU), labels nearest
neighbour; the field of view, origin and direction are kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ctprep.case import CaseVolume
from ctprep.geometry import Geometry

AIR_HU = -1024


def target_geometry(geometry: Geometry, spacing: tuple[float, float, float] | None = None,
                    size: tuple[int, int] | None = None) -> Geometry:
    """The grid after resampling: ``spacing`` (z, y, x; 0 keeps an axis), then ``size`` (y, x) in-plane."""
    new_spacing = list(geometry.spacing)
    new_shape = list(geometry.shape)
    if spacing is not None:
        for axis, value in enumerate(spacing):
            if value > 0:
                new_spacing[axis] = float(value)
                extent = geometry.shape[axis] * geometry.spacing[axis]
                new_shape[axis] = max(1, int(round(extent / value)))
    if size is not None:
        for axis, value in zip((1, 2), size):
            extent = new_shape[axis] * new_spacing[axis]
            new_shape[axis] = int(value)
            new_spacing[axis] = extent / value
    # Keep the outer edges of the field of view: voxel centres move by half the change in size.
    shift_zyx = (np.asarray(new_spacing) - np.asarray(geometry.spacing)) / 2
    origin = np.asarray(geometry.origin) + geometry.direction_matrix @ shift_zyx[::-1]
    return dataclasses.replace(geometry, shape=tuple(new_shape), spacing=tuple(new_spacing),
                               origin=tuple(float(v) for v in origin))


def resample_case(volume: CaseVolume, spacing: tuple[float, float, float] | None = None,
                  size: tuple[int, int] | None = None) -> CaseVolume:
    """Resample HU (linear) and labels (nearest) onto :func:`target_geometry`."""
    target = target_geometry(volume.geometry, spacing, size)
    if target == volume.geometry:
        return volume
    hu = _resample(volume.hu, volume.geometry, target, linear=True, default=AIR_HU)
    hu = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    labels = {name: _resample(label, volume.geometry, target, linear=False, default=0).astype(np.uint8)
              for name, label in volume.labels.items()}
    return dataclasses.replace(volume, hu=hu, labels=labels, geometry=target)


def _resample(array: np.ndarray, source: Geometry, target: Geometry, *, linear: bool, default: float) -> np.ndarray:
    import SimpleITK as sitk  # heavy: imported only when resampling is asked for

    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.float32) if linear else array))
    _set_geometry(image, source)
    reference = sitk.Image([int(s) for s in target.shape[::-1]], image.GetPixelID())
    _set_geometry(reference, target)
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default))
    return sitk.GetArrayFromImage(out)


def _set_geometry(image, geometry: Geometry) -> None:
    image.SetSpacing([float(s) for s in geometry.spacing[::-1]])
    image.SetOrigin([float(o) for o in geometry.origin])
    image.SetDirection([float(d) for d in geometry.direction])
