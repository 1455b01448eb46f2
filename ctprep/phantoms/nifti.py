"""Synthetic CT phantoms in the real raw layouts, for the demo and the tests.

The phantom is built on the canonical grid (z, y, x; x to the patient's left,
y posterior, z superior) with recognisable anatomy so orientation errors
show: the liver sits on the patient's right (small x), the spine posterior
(large y), the kidneys either side of the spine, and each tumour covers only
part of the slices. It is then written in any NIfTI orientation.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from ctprep.geometry import CANONICAL_AXCODES, Geometry
from lkbase.atomic import atomic_path
from lkbase.errors import ParameterError

BODY_HU, FAT_HU, AIR_HU, BONE_HU = 40, -100, -1000, 700
ORGAN_HU = {"liver": 60, "kidney": 150}
TUMOUR_HU = {"liver": 15, "kidney": 40}


def make_phantom(shape: tuple[int, int, int] = (40, 128, 128), spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
                 organ: str = "liver", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A canonical (z, y, x) phantom: int16 HU and a uint8 segmentation (0 background, 1 organ, 2 tumour)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    hu[body] = FAT_HU
    hu[(x / 0.78) ** 2 + (y / 0.58) ** 2 <= 1] = BODY_HU
    hu[(x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 <= 1] = BONE_HU
    seg = np.zeros(shape, dtype=np.uint8)
    if organ == "liver":
        organ_mask = ((x + 0.35) / 0.35) ** 2 + ((y + 0.05) / 0.4) ** 2 + (z / 0.9) ** 2 <= 1
        centres = [(-0.4, -0.1, 0.25)]
    elif organ == "kidney":
        organ_mask = np.zeros(shape, dtype=bool)
        for side in (-1, 1):
            organ_mask |= ((x - side * 0.35) / 0.13) ** 2 + ((y - 0.3) / 0.18) ** 2 + (z / 0.7) ** 2 <= 1
        centres = [(-0.37, 0.3, 0.2)]
    else:
        raise ParameterError(f"organ must be 'liver' or 'kidney', found {organ!r}")
    seg[organ_mask] = 1
    hu[organ_mask] = ORGAN_HU[organ]
    for cx, cy, cz in centres:
        jitter = rng.uniform(-0.04, 0.04, size=3)
        radius = rng.uniform(0.09, 0.13)
        tumour = (((x - cx - jitter[0]) ** 2 + (y - cy - jitter[1]) ** 2) / radius ** 2
                  + ((z - cz - jitter[2]) / (2.2 * radius)) ** 2 <= 1) & organ_mask
        seg[tumour] = 2
        hu[tumour] = TUMOUR_HU[organ]
    hu += rng.normal(0, 8, size=shape).astype(np.float32)
    return np.rint(hu).astype(np.int16), seg


def canonical_geometry(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                       origin: tuple[float, float, float] = (-100.0, -120.0, -300.0)) -> Geometry:
    return Geometry(shape=shape, spacing=spacing, origin=origin)


def to_nifti(canonical: np.ndarray, geometry: Geometry, axcodes: tuple[str, str, str]) -> nib.Nifti1Image:
    """A NIfTI image whose voxel axes point along ``axcodes`` (e.g. ("R", "A", "S")), same world grid."""
    xyz = canonical.transpose(2, 1, 0)
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine_lps()
    transform = orientations.ornt_transform(orientations.axcodes2ornt(CANONICAL_AXCODES),
                                            orientations.axcodes2ornt(axcodes))
    array = np.ascontiguousarray(orientations.apply_orientation(xyz, transform))
    # Fortran order on disk is NIfTI's; nibabel handles it. Keep the array's dtype.
    affine = affine_ras @ orientations.inv_ornt_aff(transform, xyz.shape)
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image


def write_lits_case(folder: Path, number: int, shape=(40, 128, 128), spacing=(2.5, 0.8, 0.8),
                    axcodes=("R", "A", "S"), gz: bool = False, seed: int | None = None) -> tuple[Path, Path]:
    """Write ``volume-N.nii`` and ``segmentation-N.nii`` (LiTS layout) for a liver phantom."""
    hu, seg = make_phantom(shape, spacing, organ="liver", seed=number if seed is None else seed)
    geometry = canonical_geometry(shape, spacing)
    suffix = ".nii.gz" if gz else ".nii"
    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / f"volume-{number}{suffix}", folder / f"segmentation-{number}{suffix}"
    _save(to_nifti(hu, geometry, axcodes), image_path)
    _save(to_nifti(seg, geometry, axcodes), label_path)
    return image_path, label_path


def write_kits19_case(root: Path, number: int, shape=(40, 128, 128), spacing=(2.5, 0.8, 0.8),
                      seed: int | None = None) -> Path:
    """Write ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` in KiTS19's slice-axis-first layout."""
    hu, seg = make_phantom(shape, spacing, organ="kidney", seed=number if seed is None else seed)
    geometry = canonical_geometry(shape, spacing)
    folder = root / f"case_{number:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    # KiTS19's own files: axis 0 runs inferior, axis 1 posterior, axis 2 to the left ("IPL").
    _save(to_nifti(hu, geometry, ("I", "P", "L")), folder / "imaging.nii.gz")
    _save(to_nifti(seg, geometry, ("I", "P", "L")), folder / "segmentation.nii.gz")
    return folder


def _save(image: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
