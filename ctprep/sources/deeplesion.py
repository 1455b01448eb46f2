"""DeepLesion: ``Images_png/<patient>_<study>_<series>/<slice>.png`` + ``DL_info.csv``.

A case is one *key slice* (``DL_info.csv``'s ``File_name`` without ``.png``,
e.g. ``000089_01_01_037``): the key slice with ``context`` neighbouring slices on
each side (2K + 1 stored rows, the key slice in the middle), and every lesion
measured on it in ``annotations["lesions"]`` (lesion_id, z, recist long/short
endpoints in stored pixels, box, diameters_px, diameters_mm, type, type_name,
location, noisy, source_row). Case-level annotations: key_slice, key_z,
slice_range, context, slice_order, slice_numbers / requested_slices (per stored
row), clamped_rows, dicom_window and rejected_lesions (malformed rows, with why).
The label ``recist_ellipse`` marks, on the key slice only, the region the RECIST
axes span (an approximation of the lesion, see :func:`ctprep.formats.recist.recist_mask`).
The file formats (DL_info.csv, PNG slices) are read by :mod:`ctprep.formats.deeplesion`.

Meanings follow the dataset's official notes (its README):

* PNGs are 16-bit, HU = value - 32768; slice file names are the slice number
  (``%03d.png``, counted from 1) and only slices in the row's ``Slice_range``
  were released (about 30 mm either side of the key slice).
* ``Measurement_coordinates``: the RECIST long axis (x11, y11, x12, y12) then the
  short axis (x21, y21, x22, y22), in pixels (x = column, y = row).
* ``Spacing_mm_px_``: x, y pixel spacing and, third, the slice *interval* (mm).
* ``Coarse_lesion_type``: 1-8 = bone, abdomen, mediastinum, liver, lung, kidney,
  soft tissue, pelvis; -1 = not labelled (the whole training split).
* ``Possibly_noisy`` = 1: annotation flagged noisy by a manual check; left out
  unless the ``keep_noisy`` option is set.
* ``Train_Val_Test`` 1/2/3: the official patient-level split, honoured as is.

Orientation: the PNGs are axial slices as displayed (rows anterior to posterior,
columns patient right to left), which is already the canonical in-plane layout,
so RECIST coordinates need no in-plane transform. Slice numbers increase towards
the feet (the rows' ``Normalized_lesion_location`` z, which the body-part
regressor makes grow from head to feet, grows with the slice number), so the
stored rows run in descending slice number; the key slice is the middle row
whatever the order. DeepLesion gives no patient position: positions are relative,
slice ``s`` lying at z = -(s - 1) x interval mm and pixel (0, 0) at x = y = 0.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ctprep.case import CaseRef, CaseVolume, InputFile
from ctprep.errors import CaseInputError
from ctprep.formats.deeplesion import (COLUMNS, FILE_NAME, IMAGES_DIR, CaseFields, case_fields, case_id_of,
                                       split_incomplete, check_png_header, find_info, parse_lesion, parse_row, read_info_rows,
                                       read_png_hu, split_of)
from ctprep.formats.recist import recist_mask
from ctprep.geometry import Geometry, canonicalize
from ctprep.sources.base import Source
from ctprep.windowing import Window
from lkbase.errors import ParameterError

log = logging.getLogger("ctprep")

LABEL = "recist_ellipse"
DICOM_WINDOW_NAME = "dicom"
DEFAULT_CONTEXT = 2
SLICE_ORDER = "descending slice number (slice numbers grow towards the feet)"


class DeepLesionSource(Source):
    name = "deeplesion"
    description = ("DeepLesion key slices: DL_info.csv with Images_png/<patient>_<study>_<series>/<slice>.png "
                   "(16-bit PNG, HU + 32768) beside it, anywhere below the input folder")
    options_help = {
        "context": "neighbouring slices stored each side of the key slice (default 2); slices outside "
                   "the row's Slice_range are clamped to the nearest released slice and recorded",
        "keep_noisy": "keep lesions flagged Possibly_noisy (left out by default)",
        "dicom_window": "add a channel 'dicom' windowed by each row's own DICOM_windows (min, max)",
    }

    def __init__(self, manifest=None, options: Mapping[str, Any] | None = None):
        super().__init__(manifest, options)
        context = self.options.get("context", DEFAULT_CONTEXT)
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ParameterError(f"source 'deeplesion': context must be an integer >= 0, found {context!r}")
        self.context = context
        self.keep_noisy = bool(self.options.get("keep_noisy", False))
        self.dicom_window = bool(self.options.get("dicom_window", False))

    # ---- conversion parameters -------------------------------------------------------------
    def check_conversion(self, config) -> None:
        """Refuse z resampling (it would move the annotated key slice off a stored row)."""
        if config.spacing and config.spacing[0] > 0:
            raise ParameterError("source 'deeplesion': --spacing must keep the z axis (e.g. --spacing 0,0.8,0.8): "
                             "a case is a key slice with a few context slices, and resampling in z would "
                             "move the annotated slice off a stored row")
        if self.dicom_window and any(w.name == DICOM_WINDOW_NAME for w in config.windows):
            raise ParameterError(f"source 'deeplesion': the window name {DICOM_WINDOW_NAME!r} is taken by "
                             "--dicom-window; name your --window otherwise")

    def adapt_annotations(self, annotations: Mapping[str, Any], *, before: Geometry, after: Geometry,
                          rows: Sequence[int]) -> dict:
        """Move RECIST pixel coordinates onto a resampled grid and slice rows onto the stored rows."""
        return adapt_annotations(annotations, before=before, after=after, rows=rows)

    # ---- discover ---------------------------------------------------------------------------
    def discover(self, root: Path) -> list[CaseRef]:
        info = find_info(root)
        if info is None:
            return []
        groups: dict[str, list[tuple[str, ...]]] = {}
        noisy = 0
        for row in read_info_rows(info):
            number, fields = int(row[0]), dict(zip(COLUMNS, row[1:]))
            match = FILE_NAME.fullmatch(fields["File_name"].strip())
            if not match:
                log.warning("%s row %d: File_name %r is not <patient>_<study>_<series>_<slice>.png; row ignored",
                            info, number, fields["File_name"])
                continue
            if fields["Possibly_noisy"].strip() == "1" and not self.keep_noisy:
                noisy += 1
                continue
            groups.setdefault(case_id_of(match), []).append(row)
        if noisy:
            log.info("deeplesion: %d lesion(s) flagged Possibly_noisy left out (--keep-noisy keeps them)", noisy)
        images = info.parent / IMAGES_DIR
        refs = []
        for case_id in sorted(groups):
            rows = tuple(groups[case_id])
            series, slice_number = case_id.rsplit("_", 1)
            key_png = images / series / f"{int(slice_number):03d}.png"
            refs.append(CaseRef(source=self.name, case_id=case_id, patient_id=case_id.split("_", 1)[0],
                                root=str(root), split=split_of(rows),
                                files=(("info", str(info.relative_to(root))),
                                       ("image", str(key_png.relative_to(root)))),
                                rows=rows))
        return refs

    def header_problem(self, ref: CaseRef) -> str | None:
        """For ``ctprep check``: the rows agree and every slice the case reads is a 16-bit grey PNG
        of the row's Image_size (PNG headers only)."""
        info_path = ref.path("info")
        try:
            rows, _ = split_incomplete(info_path, ref.case_id, [parse_row(info_path, row) for row in ref.rows],
                                       self.dicom_window)
            case = case_fields(info_path, ref.case_id, rows, need_window=self.dicom_window)
            _, slices = context_slices(case.key_slice, case.slice_range, self.context)
            for number in sorted(set(slices)):
                check_png_header(ref.path("image").with_name(f"{number:03d}.png"), case.image_size)
        except CaseInputError as exc:
            return str(exc)
        return None

    # ---- load ------------------------------------------------------------------------------
    def load(self, ref: CaseRef) -> CaseVolume:
        info_path = ref.path("info")
        rows = [parse_row(info_path, row) for row in ref.rows]
        if not rows:
            raise CaseInputError(info_path, f"{ref.case_id}: no DL_info.csv rows for this key slice")
        rows, rejected = split_incomplete(info_path, ref.case_id, rows, self.dicom_window)
        for entry in rejected:
            log.warning("%s: lesion skipped: %s: %s", ref.case_id, info_path, entry["reason"])
        case = case_fields(info_path, ref.case_id, rows, need_window=self.dicom_window)
        requested, slices = context_slices(case.key_slice, case.slice_range, self.context)
        images_dir = ref.path("image").parent
        planes, inputs = read_slices(images_dir, sorted(set(slices)), case, root=Path(ref.root),
                                     key_slice=case.key_slice)
        lesions = []
        for row in rows:
            try:
                lesions.append(parse_lesion(row, case))
            except CaseInputError as exc:
                rejected.append({"source_row": row.number, "reason": exc.reason})
                log.warning("%s: lesion skipped: %s", ref.case_id, exc)
        if not lesions:
            reasons = "; ".join(r["reason"] for r in rejected)
            raise CaseInputError(info_path, f"{ref.case_id}: no usable lesion ({reasons})")
        # Source array: NIfTI-style voxel axes (column, row, slice in ascending slice number).
        ascending = np.stack([planes[s] for s in slices[::-1]]).transpose(2, 1, 0)
        hu, geometry, source_grid = canonicalize(ascending, source_affine_ras(case, requested[-1]))
        key_row = self.context
        lesion_records = [lesion.record(f"row{lesion.row}", key_row, case.spacing_xy) for lesion in lesions]
        mask = np.zeros(hu.shape, dtype=np.uint8)
        for lesion in lesions:
            mask[key_row] |= recist_mask(lesion.long_axis, lesion.short_axis, hu.shape[1:])
        windows = (Window.from_range(DICOM_WINDOW_NAME, *case.dicom_window),) if self.dicom_window else ()
        annotations = {
            "lesions": lesion_records,
            "key_slice": case.key_slice,
            "key_z": key_row,
            "slice_range": list(case.slice_range),
            "context": self.context,
            "slice_order": SLICE_ORDER,
            "slice_numbers": list(slices),  # per stored row: the released slice read
            "requested_slices": list(requested),  # per stored row: the slice asked for
            "clamped_rows": [r for r, (a, b) in enumerate(zip(requested, slices)) if a != b],
            "dicom_window": list(case.dicom_window) if case.dicom_window else None,
            "rejected_lesions": rejected,
        }
        csv_entry = _input_of(info_path, Path(ref.root), "info")
        return CaseVolume(ref=ref, hu=hu, labels={LABEL: mask}, label_specs=self.manifest.labels,
                          geometry=geometry, source_grid=source_grid, inputs=(csv_entry, *inputs),
                          annotations=annotations, windows=windows)


# ---- slices ------------------------------------------------------------------------------------
def context_slices(key: int, slice_range: tuple[int, int], context: int) -> tuple[list[int], list[int]]:
    """Per stored row (descending slice number): the slice asked for and the released slice used."""
    lo, hi = slice_range
    requested = [key + context - row for row in range(2 * context + 1)]
    return requested, [min(max(s, lo), hi) for s in requested]


def read_slices(folder: Path, numbers: Sequence[int], case: CaseFields, root: Path,
                key_slice: int) -> tuple[dict[int, np.ndarray], tuple[InputFile, ...]]:
    """Each slice once, as HU, with its input record."""
    planes, inputs = {}, []
    for number in numbers:
        path = folder / f"{number:03d}.png"
        planes[number] = read_png_hu(path, case.image_size)
        inputs.append(_input_of(path, root, "image" if number == key_slice else "context"))
    return planes, tuple(inputs)


def source_affine_ras(case: CaseFields, first_slice: int) -> np.ndarray:
    """RAS affine of the (column, row, ascending slice) array whose first slice is ``first_slice``.

    Columns run to the patient's left, rows posterior, slice numbers inferior;
    slice s lies at z = -(s - 1) x interval (relative: DeepLesion gives no position).
    """
    sx, sy = case.spacing_xy
    dz = case.slice_interval
    affine = np.diag([-sx, -sy, -dz, 1.0])  # RAS: left, posterior and inferior are negative
    affine[2, 3] = -(first_slice - 1) * dz
    return affine


def _input_of(path: Path, root: Path, role: str) -> InputFile:
    stat = path.stat()
    return InputFile(role=role, path=str(path.relative_to(root)), size=stat.st_size,
                     sha256=_sha256(str(path), stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime so that DL_info.csv (one file for all cases, megabytes) is hashed
    # once per process rather than once per case; PNGs are hashed once anyway.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- after resampling / slice selection ---------------------------------------------------------
def adapt_annotations(annotations: Mapping[str, Any], *, before: Geometry, after: Geometry,
                      rows: Sequence[int]) -> dict:
    """DeepLesion annotations on the stored grid: pixels mapped from ``before`` to ``after``
    (a resampled grid, same world space) and grid rows to positions in the stored ``rows``."""
    out = dict(annotations)
    rows = [int(r) for r in rows]
    position = {row: i for i, row in enumerate(rows)}
    scale = None if before == after else _pixel_map(before, after)
    lesions, dropped = [], []
    for lesion in annotations.get("lesions", []):
        lesion = dict(lesion)
        if lesion["z"] not in position:
            dropped.append(lesion["lesion_id"])
            continue
        lesion["z"] = position[lesion["z"]]
        if scale is not None:
            lesion = _map_lesion(lesion, scale)
        lesions.append(lesion)
    out["lesions"] = lesions
    if dropped:
        out["lesions_not_stored"] = dropped
    if "key_z" in out:
        out["key_z"] = position.get(out["key_z"])
    for name in ("slice_numbers", "requested_slices"):
        if name in out:
            out[name] = [out[name][r] for r in rows]
    if "clamped_rows" in out:
        out["clamped_rows"] = [position[r] for r in out["clamped_rows"] if r in position]
    return out


def _pixel_map(before: Geometry, after: Geometry):
    """(x, y) pixel of ``before`` -> (x, y) pixel of ``after``, through world space."""
    to_world, from_world = before.affine_lps(), np.linalg.inv(after.affine_lps())
    combined = from_world @ to_world

    def apply(points: np.ndarray) -> np.ndarray:
        xyz1 = np.column_stack([points, np.zeros(len(points)), np.ones(len(points))])
        return (xyz1 @ combined.T)[:, :2]

    return apply


def _map_lesion(lesion: dict, apply) -> dict:
    long_axis = apply(np.asarray(lesion["recist"]["long"], dtype=np.float64))
    short_axis = apply(np.asarray(lesion["recist"]["short"], dtype=np.float64))
    x0, y0, x1, y1 = lesion["box"]
    corners = apply(np.array([[x0, y0], [x1, y1]], dtype=np.float64))
    lesion["recist"] = {"long": long_axis.tolist(), "short": short_axis.tolist()}
    lesion["box"] = [*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist()]
    lesion["diameters_px"] = [float(np.linalg.norm(long_axis[1] - long_axis[0])),
                              float(np.linalg.norm(short_axis[1] - short_axis[0]))]
    return lesion
