"""The canonical grid every source is brought onto, and the way back to the source grid.

Canonical orientation (docs/store-format.md): arrays are indexed ``(z, y, x)`` with

* x increasing towards the patient's **left**,
* y increasing towards **posterior**,
* z increasing towards **superior** (slices in ascending z),

i.e. DICOM's LPS patient system, the way an axial slice is shown on a
radiology workstation (patient's right on the image's left, anterior at the
top). World coordinates (origin, direction) are LPS millimetres, as in DICOM
and SimpleITK. NIfTI affines (RAS) are converted on the way in.

Reorientation uses only flips and an axis permutation chosen from the affine
(nibabel's ``io_orientation``), so the canonical array is a *view* of the
source array; any residual obliquity stays in ``direction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctprep.errors import GeometryError

# Array axes (x, y, z) point to L, P, S; nibabel names axes by the RAS end they point to.
CANONICAL_AXCODES = ("L", "P", "S")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _tuple3(values) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """Where a canonical ``(z, y, x)`` voxel grid lies in LPS world space.

    ``spacing`` is (z, y, x) in mm; ``origin`` is the LPS position (mm) of
    voxel (0, 0, 0); ``direction`` is row-major 3x3 whose columns are the unit
    LPS directions of the x, y and z array axes (SimpleITK's convention).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"geometry shape must be 3 positive sizes (z, y, x), found {self.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise GeometryError(f"geometry spacing must be 3 positive finite mm values, found {self.spacing}")
        if len(self.direction) != 9:
            raise GeometryError(f"geometry direction must have 9 values, found {len(self.direction)}")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def affine_lps(self) -> np.ndarray:
        """4x4 map from voxel (x, y, z) index to LPS mm."""
        spacing_xyz = np.asarray(self.spacing[::-1])
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix * spacing_xyz
        affine[:3, 3] = self.origin
        return affine

    def z_positions(self) -> list[float]:
        """Superior coordinate (mm) of the first voxel of every slice, ascending."""
        affine = self.affine_lps()
        k = np.arange(self.shape[0])
        return [float(v) for v in affine[2, 3] + k * affine[2, 2]]

    @classmethod
    def from_affine_lps(cls, affine: np.ndarray, shape_zyx: tuple[int, int, int]) -> "Geometry":
        columns = np.asarray(affine, dtype=np.float64)[:3, :3]
        spacing_xyz = np.linalg.norm(columns, axis=0)
        if np.any(spacing_xyz <= 0) or not np.all(np.isfinite(spacing_xyz)):
            raise GeometryError(f"affine has a zero or non-finite voxel size: {spacing_xyz.tolist()}")
        direction = columns / spacing_xyz
        return cls(
            shape=tuple(int(s) for s in shape_zyx),  # type: ignore[arg-type]
            spacing=_tuple3(spacing_xyz[::-1]),
            origin=_tuple3(np.asarray(affine)[:3, 3]),
            direction=tuple(float(v) for v in direction.ravel()),
        )

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
                   spacing=_tuple3(data["spacing"]), origin=_tuple3(data["origin"]),
                   direction=tuple(float(v) for v in data["direction"]))


@dataclass(frozen=True, kw_only=True)
class SourceGrid:
    """How the source file's array maps onto the canonical array, to export results back.

    ``axes`` has one ``(canonical_axis, flip)`` pair per source array axis, with
    canonical axes numbered nibabel-style (0 = x, 1 = y, 2 = z) and ``flip`` -1
    where that axis runs the other way.
    """

    shape: tuple[int, ...]
    affine_ras: tuple[float, ...]
    axcodes: str
    axes: tuple[tuple[int, int], ...]

    def to_source(self, canonical_zyx: np.ndarray) -> np.ndarray:
        """Bring a canonical ``(z, y, x)`` array (same grid) back to the source array layout (a view)."""
        from nibabel import orientations  # here, not at import: `import ctprep.convert` stays light

        xyz = canonical_zyx.transpose(2, 1, 0)
        back = orientations.ornt_transform(orientations.axcodes2ornt(CANONICAL_AXCODES),
                                           self._source_ornt())
        return orientations.apply_orientation(xyz, back)

    def _source_ornt(self) -> np.ndarray:
        from nibabel import orientations

        return orientations.io_orientation(np.asarray(self.affine_ras).reshape(4, 4))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "affine_ras": list(self.affine_ras),
                "axcodes": self.axcodes, "axes": [list(a) for a in self.axes]}

    @classmethod
    def from_dict(cls, data: dict) -> "SourceGrid":
        return cls(shape=tuple(int(v) for v in data["shape"]),
                   affine_ras=tuple(float(v) for v in data["affine_ras"]),
                   axcodes=str(data["axcodes"]),
                   axes=tuple((int(a), int(f)) for a, f in data["axes"]))


def reorient(array: np.ndarray, grid: SourceGrid) -> np.ndarray:
    """A source-layout array (a volume, or a slab of it along the slice axis) as a canonical ``(z, y, x)`` view,
    by ``grid``'s axes (as :func:`canonicalize` found them for the whole file)."""
    from nibabel import orientations

    return orientations.apply_orientation(array, np.asarray(grid.axes, dtype=np.float64)).transpose(2, 1, 0)


def canonicalize(array: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, Geometry, SourceGrid]:
    """Reorient a NIfTI-style array (voxel axes mapped to RAS mm by ``affine_ras``) to canonical.

    Returns a ``(z, y, x)`` view of ``array`` (no copy), its geometry and the source grid.
    """
    if array.ndim != 3:
        raise GeometryError(f"expected a 3-D volume, found shape {array.shape}")
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4) or not np.all(np.isfinite(affine_ras)):
        raise GeometryError("affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(affine_ras[:3, :3])) < 1e-12:
        raise GeometryError("affine is singular (a voxel axis has no direction)")
    from nibabel import orientations

    source_ornt = orientations.io_orientation(affine_ras)
    transform = orientations.ornt_transform(source_ornt, orientations.axcodes2ornt(CANONICAL_AXCODES))
    xyz = orientations.apply_orientation(array, transform)
    new_affine = affine_ras @ orientations.inv_ornt_aff(transform, array.shape)
    zyx = xyz.transpose(2, 1, 0)
    geometry = Geometry.from_affine_lps(_RAS_TO_LPS @ new_affine, zyx.shape)
    source = SourceGrid(
        shape=tuple(int(s) for s in array.shape),
        affine_ras=tuple(float(v) for v in affine_ras.ravel()),
        axcodes="".join(orientations.aff2axcodes(affine_ras)),
        axes=tuple((int(a), int(f)) for a, f in transform),
    )
    return zyx, geometry, source
