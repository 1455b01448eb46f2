"""Export a stored label (ground truth or a prediction) as NIfTI on the case's original source grid.

A stored case lies on the canonical ``(z, y, x)`` grid, possibly resampled
(``--spacing``/``--size``) and possibly with only some slices kept
(``--slices lesion``). Export undoes all three, in reverse order:

1. put the stored rows back at their ``slice_indices`` on ``record.geometry``;
   slices that were not stored are written as 0 (counted and reported);
2. resample ``record.geometry`` back onto ``record.canonical_geometry`` when the
   conversion resampled (SimpleITK, as ctprep.resample: nearest neighbour for
   uint8 masks, linear for float32 probabilities);
3. undo the canonical reorientation with ``record.source_grid`` (flips and an
   axis permutation only, see ctprep.geometry) and write the array with the
   source file's affine, so it overlays the source image in ITK-SNAP or 3D Slicer.

Without resampling, exporting a ground-truth label gives back exactly the voxels
of the source segmentation mapped through the label's values. No torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctprep.case import CaseRecord
from ctprep.store import SliceStore, WithPredictions, open_for_reading
from lkbase.atomic import atomic_path
from lkbase.errors import FileFormatError, ParameterError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True, kw_only=True, eq=False)
class SourceLabel:
    """A label brought back onto the source grid: the array in the source file's layout and its affine."""

    array: np.ndarray
    affine_ras: np.ndarray
    missing_slices: int  # slices of the stored grid that were not stored (filled with 0)
    grid_slices: int
    resampled: bool


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What :func:`export_label_nifti` wrote."""

    path: Path
    case_id: str
    label: str
    shape: tuple[int, ...]
    dtype: str
    missing_slices: int
    grid_slices: int
    resampled: bool

    def lines(self) -> list[str]:
        lines = [f"wrote {self.path}: {self.case_id} label {self.label!r}, {self.dtype} "
                 f"{'x'.join(map(str, self.shape))} on the source grid"]
        if self.resampled:
            lines.append("  resampled back from the stored spacing (nearest neighbour for masks, "
                         "linear for probabilities): not voxel-exact")
        if self.missing_slices:
            lines.append(f"  {self.missing_slices} of {self.grid_slices} slices were not stored "
                         "(converted with --slices): written as 0")
        return lines


def full_grid(stored: np.ndarray, record: CaseRecord, fill: float = 0) -> tuple[np.ndarray, int]:
    """The stored rows placed at their ``slice_indices`` on ``record.geometry``; missing slices ``fill``.

    Returns the array and how many slices were missing.
    """
    shape = record.geometry.shape
    if stored.shape != (record.num_slices, *shape[1:]):
        raise FileFormatError(f"case {record.case_id}: label shape {stored.shape} does not match the record's "
                              f"{record.num_slices} stored slices of {shape[1]}x{shape[2]}")
    if record.num_slices == shape[0]:
        return stored, 0
    grid = np.full(shape, fill, dtype=stored.dtype)
    grid[list(record.slice_indices)] = stored
    return grid, shape[0] - record.num_slices


def to_canonical_grid(array: np.ndarray, record: CaseRecord) -> tuple[np.ndarray, bool]:
    """Undo the conversion's resampling (if any): ``record.geometry`` -> ``record.canonical_geometry``."""
    if record.geometry == record.canonical_geometry:
        return array, False
    # ctprep.resample's SimpleITK helper, so export uses the same grid conventions as the conversion.
    from ctprep.resample import _resample

    linear = array.dtype.kind == "f"
    back = _resample(array, record.geometry, record.canonical_geometry, linear=linear, default=0)
    return back.astype(array.dtype, copy=False), True


def to_source_layout(canonical: np.ndarray, record: CaseRecord) -> np.ndarray:
    """Undo the canonical reorientation: the array in the source file's axis order and directions."""
    source = record.source_grid.to_source(canonical)
    if tuple(source.shape) != tuple(record.source_grid.shape):
        raise FileFormatError(f"case {record.case_id}: reoriented label has shape {source.shape}, "
                              f"the source grid is {tuple(record.source_grid.shape)}")
    return source


def label_on_source_grid(store: SliceStore, case_id: str, label: str) -> SourceLabel:
    """A stored label of ``case_id`` on the case's original source grid (see the module docstring)."""
    record = store.record(case_id)
    grid, missing = full_grid(store.read_label(case_id, label), record)
    canonical, resampled = to_canonical_grid(grid, record)
    return SourceLabel(array=to_source_layout(canonical, record),
                       affine_ras=np.asarray(record.source_grid.affine_ras, dtype=np.float64).reshape(4, 4),
                       missing_slices=missing, grid_slices=record.geometry.shape[0], resampled=resampled)


def write_nifti(array: np.ndarray, affine_ras: np.ndarray, out_path: str | Path) -> Path:
    """Write ``array`` with ``affine_ras`` (sform and qform, mm) as NIfTI-1, atomically."""
    import nibabel as nib

    out_path = Path(out_path)
    suffix = ".nii.gz" if out_path.name.endswith(".nii.gz") else out_path.suffix
    if suffix not in NIFTI_SUFFIXES:
        raise ParameterError(f"{out_path}: expected a .nii or .nii.gz file name, found {suffix or 'no suffix'!r}")
    image = nib.Nifti1Image(np.asarray(array), affine_ras)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine_ras, code=1)
    image.set_qform(affine_ras, code=1)
    with atomic_path(out_path) as tmp:
        nib.save(image, tmp)
    return out_path


def export_label_nifti(store: SliceStore | WithPredictions | str | Path, case_id: str, label: str,
                       out_path: str | Path) -> ExportResult:
    """Write label ``label`` of ``case_id`` as NIfTI on the case's original grid with the source's affine.

    uint8 labels are written as uint8, float32 (probabilities) as float32. A predictions store
    path reads its labels with the dataset store it refers to.
    """
    if isinstance(store, (str, Path)):
        store = open_for_reading(store)
    exported = label_on_source_grid(store, case_id, label)
    path = write_nifti(exported.array, exported.affine_ras, out_path)
    if exported.missing_slices:
        log.warning("%s: %d of %d slices of %s were not stored (--slices); written as 0",
                    path, exported.missing_slices, exported.grid_slices, case_id)
    return ExportResult(path=path, case_id=case_id, label=label, shape=tuple(exported.array.shape),
                        dtype=str(exported.array.dtype), missing_slices=exported.missing_slices,
                        grid_slices=exported.grid_slices, resampled=exported.resampled)
