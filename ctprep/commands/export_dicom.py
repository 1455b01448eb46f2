"""``ctprep export --format rtstruct|seg`` and ``--label image|hu``: stored data back in clinical formats.

* **RTSTRUCT / SEG** (DICOM-sourced cases): the chosen stored labels (ground truth or
  predictions ``pred_<run>``, thresholded at ``threshold`` when float) are brought back onto
  the source grid exactly as :mod:`ctprep.commands.export` does for NIfTI, then written by
  :mod:`ctprep.formats.dicom_outputs` (one ROI / one binary segment per label) referring to
  the original CT series. A store keeps no paths of the series' files, so the caller names
  the series folder (``--dicom DIR``); it is accepted only when it *is* the converted series:

  1. one CT series in the folder (else its series are listed);
  2. read without resampling (an irregular or tilted series cannot be referred to slice by slice);
  3. its grid equals the case's recorded source grid (shape; affine within ``AFFINE_TOLERANCE_MM``);
  4. when the case recorded its CT input (a DICOM source's ``ct`` entry: the sha256 of the
     series' ``sha256sum`` listing, ctprep.sources.dicom_source), the files hash to it.

  Any failure is one line naming the folder and what differs; nothing is written.
* **image / hu** (any case): the stored windowed image (one window, ``channel``) or the stored
  HU (stores converted with ``--keep-hu``) as NIfTI on the source grid with the source's affine.
  Resampled stores are resampled back linearly (then rounded); slices left out by ``--slices``
  are written as 0 (image) or -1024 HU (air).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.case import CaseRecord
from ctprep.commands.export import full_grid, label_on_source_grid, to_canonical_grid, to_source_layout, write_nifti
from ctprep.errors import CaseInputError
from ctprep.store import SliceStore
from lkbase.errors import ParameterError

DICOM_FORMATS = ("rtstruct", "seg")
IMAGE_LABELS = ("image", "hu")
AFFINE_TOLERANCE_MM = 1e-3
AIR_HU = -1024


@dataclass(frozen=True, kw_only=True)
class DicomExport:
    """What :func:`export_labels_dicom` wrote."""

    path: Path
    case_id: str
    format: str
    labels: tuple[str, ...]
    voxels: tuple[int, ...]
    missing_slices: int
    resampled: bool

    def __post_init__(self) -> None:
        if self.format not in DICOM_FORMATS:
            raise ParameterError(f"format must be one of {DICOM_FORMATS}, found {self.format!r}")

    def lines(self) -> list[str]:
        what = ", ".join(f"{name} ({n} voxels)" for name, n in zip(self.labels, self.voxels))
        lines = [f"wrote {self.path}: {self.case_id} {self.format.upper()} of {what}, referring to the source series"]
        if self.resampled:
            lines.append("  resampled back from the stored spacing (nearest neighbour): not voxel-exact")
        if self.missing_slices:
            lines.append(f"  {self.missing_slices} slices were not stored (converted with --slices): empty there")
        return lines


def series_files(dicom_dir: str | Path) -> list[Path]:
    """The files of the one CT series in ``dicom_dir``; refuses a folder of none or several."""
    from ctprep.formats.dicom_scan import scan_dicom_folder

    dicom_dir = Path(dicom_dir)
    found = scan_dicom_folder(dicom_dir).series
    if len(found) != 1:
        listing = "; ".join(f"{uid} ({len(s.files)} files)" for uid, s in found.items()) or "none"
        raise CaseInputError(dicom_dir, f"expected the one CT series the case was converted from, found "
                                        f"{len(found)}: {listing}")
    return list(next(iter(found.values())).files)


def series_problem(record: CaseRecord, ct, files: Sequence[Path], dicom_dir: Path,
                   recorded_inputs: Sequence[dict] = ()) -> str | None:
    """Why series ``ct`` (read from ``files``) is not the case's converted series; None when it is.

    ``recorded_inputs``: the case's inputs as the store's manifest lists them (the series'
    digest does not depend on its folder's name, which the manifest may keep only hashed)."""
    grid = record.source_grid
    source_shape = tuple(reversed(ct.native_shape))  # the DICOM source layout is (col, row, slice)
    if tuple(grid.shape) != source_shape:
        return f"series grid {'x'.join(map(str, source_shape))} differs from the case's recorded " \
               f"{'x'.join(map(str, grid.shape))}"
    worst = float(np.abs(np.asarray(grid.affine_ras) - np.asarray(ct.source_grid.affine_ras)).max())
    if worst > AFFINE_TOLERANCE_MM:
        return f"series position/orientation differs from the case's recorded affine by up to {worst:.3g} mm"
    recorded = [f for f in recorded_inputs if f.get("role") == "ct"]
    if len(recorded) == 1:
        from ctprep.sources.dicom_source import series_digest

        size, digest = series_digest(files)
        if digest != recorded[0].get("sha256"):
            return (f"the series' files ({size} bytes) are not the ones converted into case {record.case_id} "
                    "(sha256 of their listing differs from the record's)")
    return None


def read_case_series(record: CaseRecord, dicom_dir: str | Path, recorded_inputs: Sequence[dict] = ()):
    """The case's original CT series read from ``dicom_dir`` (checked: module docstring)."""
    from ctprep.formats.dicom import read_ct_series

    dicom_dir = Path(dicom_dir)
    files = series_files(dicom_dir)
    ct = read_ct_series(files, irregular="refuse")
    problem = series_problem(record, ct, files, dicom_dir, recorded_inputs)
    if problem:
        raise CaseInputError(dicom_dir, f"not the series of case {record.case_id}: {problem}")
    return ct


def export_labels_dicom(store: SliceStore | str | Path, case_id: str, labels: Sequence[str], dicom_dir: str | Path,
                        out_path: str | Path, fmt: str, *, threshold: float = 0.5) -> DicomExport:
    """Write ``labels`` of ``case_id`` as an RTSTRUCT or SEG referring to the series in ``dicom_dir``."""
    from ctprep.formats.dicom_outputs import write_rtstruct, write_seg

    if fmt not in DICOM_FORMATS:
        raise ParameterError(f"--format must be one of nifti, {', '.join(DICOM_FORMATS)}, found {fmt!r}")
    if not labels:
        raise ParameterError("--label: name at least one stored label")
    if not 0 < threshold < 1:
        raise ParameterError(f"threshold must be in (0, 1), found {threshold}")
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    record = store.record(case_id)
    for label in labels:  # refuse unknown labels before reading the series
        if label not in store.label_names(case_id):
            raise ParameterError(f"case {case_id} has no label {label!r} "
                                 f"(it has: {', '.join(store.label_names(case_id)) or 'none'})")
    entry = store.manifest().get("cases", {}).get(case_id, {})
    ct = read_case_series(record, dicom_dir, entry.get("inputs", ()) if isinstance(entry, dict) else ())
    masks, missing, resampled = {}, 0, False
    for label in labels:
        exported = label_on_source_grid(store, case_id, label)
        array = exported.array >= threshold if exported.array.dtype.kind == "f" else exported.array > 0
        masks[label] = np.ascontiguousarray(array.transpose(2, 1, 0))  # (slice, row, col), the native stack
        missing, resampled = exported.missing_slices, exported.resampled
    writer = write_rtstruct if fmt == "rtstruct" else write_seg
    path = writer(ct.files, masks, out_path, description=f"lesionkit {case_id}"[:64])
    return DicomExport(path=Path(path), case_id=case_id, format=fmt, labels=tuple(labels),
                       voxels=tuple(int(m.sum()) for m in masks.values()), missing_slices=missing,
                       resampled=resampled)


def image_on_source_grid(store: SliceStore, case_id: str, kind: str, channel: int = 0) -> tuple[np.ndarray, bool, int]:
    """The stored image (one window, uint8) or HU (int16) on the source grid; resampled?, missing slices."""
    record = store.record(case_id)
    if kind not in IMAGE_LABELS:
        raise ParameterError(f"expected one of {IMAGE_LABELS}, found {kind!r}")
    if kind == "hu" and not record.has_hu:
        raise ParameterError(f"case {case_id} has no stored HU: the store was converted without --keep-hu "
                             "(export --label image instead)")
    if kind == "image" and not 0 <= channel < len(record.windows):
        raise ParameterError(f"--channel must be in 0..{len(record.windows) - 1} "
                             f"({', '.join(w.name for w in record.windows)}), found {channel}")
    data = store.read_case(case_id, labels=[], hu=kind == "hu")
    stored = data.hu if kind == "hu" else data.image[:, channel]
    grid, missing = full_grid(np.asarray(stored), record, fill=AIR_HU if kind == "hu" else 0)
    back, resampled = to_canonical_grid(grid.astype(np.float32), record)
    info = np.iinfo(stored.dtype)
    canonical = np.clip(np.rint(back), info.min, info.max).astype(stored.dtype)
    return np.ascontiguousarray(to_source_layout(canonical, record)), resampled, missing


def export_image_nifti(store: SliceStore | str | Path, case_id: str, kind: str, out_path: str | Path, *,
                       channel: int = 0) -> list[str]:
    """Write the stored image or HU of ``case_id`` as NIfTI on the source grid; returns the summary lines."""
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    array, resampled, missing = image_on_source_grid(store, case_id, kind, channel)
    record = store.record(case_id)
    path = write_nifti(array, np.asarray(record.source_grid.affine_ras, dtype=np.float64).reshape(4, 4), out_path)
    what = "HU (int16)" if kind == "hu" else f"window {record.windows[channel].name} (uint8)"
    lines = [f"wrote {path}: {case_id} {what} {'x'.join(map(str, array.shape))} on the source grid"]
    if resampled:
        lines.append("  resampled back from the stored spacing (linear, rounded): not voxel-exact")
    if missing:
        lines.append(f"  {missing} slices were not stored (converted with --slices): written as "
                     + ("-1024 HU" if kind == "hu" else "0"))
    return lines
