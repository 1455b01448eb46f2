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
axes span (an approximation of the lesion, see :func:`recist_mask`).

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

import csv
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ctprep.case import CaseRef, CaseVolume, InputFile
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.geometry import Geometry, canonicalize
from ctprep.sources.base import Source
from ctprep.windowing import Window

log = logging.getLogger("ctprep")

INFO_NAME = "DL_info.csv"
IMAGES_DIR = "Images_png"
#: The official 18 columns of DL_info.csv, in order.
COLUMNS = ("File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
           "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
           "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
           "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
           "Train_Val_Test")
OFFICIAL_SPLIT = {"1": "train", "2": "val", "3": "test"}
LESION_TYPES = {-1: "unlabelled", 1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung",
                6: "kidney", 7: "soft tissue", 8: "pelvis"}
LABEL = "recist_ellipse"
DICOM_WINDOW_NAME = "dicom"
DEFAULT_CONTEXT = 2
PNG_OFFSET = 32768  # PNG value - 32768 = HU
# A CSV diameter may differ from the length of its axis by this much (px) plus 2 % before the row
# counts as inconsistent (the real rows agree to 0.001 px).
DIAMETER_TOLERANCE_PX = 1.0
SLICE_ORDER = "descending slice number (slice numbers grow towards the feet)"

_FILE = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.png$")


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
            raise ValueError(f"source 'deeplesion': context must be an integer >= 0, found {context!r}")
        self.context = context
        self.keep_noisy = bool(self.options.get("keep_noisy", False))
        self.dicom_window = bool(self.options.get("dicom_window", False))

    # ---- conversion parameters -------------------------------------------------------------
    def check_conversion(self, config) -> None:
        """Refuse z resampling (it would move the annotated key slice off a stored row)."""
        if config.spacing and config.spacing[0] > 0:
            raise ValueError("source 'deeplesion': --spacing must keep the z axis (e.g. --spacing 0,0.8,0.8): "
                             "a case is a key slice with a few context slices, and resampling in z would "
                             "move the annotated slice off a stored row")
        if self.dicom_window and any(w.name == DICOM_WINDOW_NAME for w in config.windows):
            raise ValueError(f"source 'deeplesion': the window name {DICOM_WINDOW_NAME!r} is taken by "
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
            match = _FILE.match(fields["File_name"].strip())
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
                                root=str(root), split=_split_of(rows),
                                files=(("info", str(info.relative_to(root))),
                                       ("image", str(key_png.relative_to(root)))),
                                rows=rows))
        return refs

    def header_problem(self, ref: CaseRef) -> str | None:
        """For ``ctprep check``: the rows agree and every slice the case reads is a 16-bit grey PNG
        of the row's Image_size (PNG headers only)."""
        info_path = ref.path("info")
        try:
            case = case_fields(info_path, ref.case_id, [parse_row(info_path, row) for row in ref.rows],
                               need_window=self.dicom_window)
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
        case = case_fields(info_path, ref.case_id, rows, need_window=self.dicom_window)
        requested, slices = context_slices(case.key_slice, case.slice_range, self.context)
        images_dir = ref.path("image").parent
        planes, inputs = read_slices(images_dir, sorted(set(slices)), case, root=Path(ref.root),
                                     key_slice=case.key_slice)
        lesions, rejected = [], []
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


# ---- DL_info.csv --------------------------------------------------------------------------------
def find_info(root: Path) -> Path | None:
    """``DL_info.csv`` in ``root`` or the shallowest one below it (None when there is none)."""
    if (root / INFO_NAME).is_file():
        return root / INFO_NAME
    found = sorted(root.rglob(INFO_NAME), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def read_info_rows(path: Path) -> list[tuple[str, ...]]:
    """Every data row as (row number, the 18 official fields as text); header = row 0."""
    try:
        return _read_info_rows(path)
    except UnicodeDecodeError as exc:
        raise CaseInputError(path, f"not a UTF-8 text file (byte {exc.start}: {exc.reason}); "
                                   "expected DeepLesion's DL_info.csv") from exc
    except csv.Error as exc:
        raise CaseInputError(path, f"malformed CSV ({exc})") from exc


def _read_info_rows(path: Path) -> list[tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise CaseInputError(path, f"not a DeepLesion DL_info.csv: columns {', '.join(missing)} missing "
                                       f"(expected the official 18: {', '.join(COLUMNS)})")
        where = [header.index(c) for c in COLUMNS]
        rows = []
        for number, values in enumerate(reader, start=1):
            if not any(v.strip() for v in values):
                continue  # blank line
            rows.append((str(number), *(values[i] if i < len(values) else "" for i in where)))
    return rows


def case_id_of(match: re.Match) -> str:
    return f"{match[1]}_{match[2]}_{match[3]}_{int(match[4]):03d}"


def _split_of(rows: Sequence[tuple[str, ...]]) -> str | None:
    values = {OFFICIAL_SPLIT.get(dict(zip(COLUMNS, row[1:]))["Train_Val_Test"].strip()) for row in rows}
    return values.pop() if len(values) == 1 and None not in values else None  # else load() says why


@dataclass(frozen=True, kw_only=True)
class InfoRow:
    """One DL_info.csv row: its number (header = 0) and fields by column name, as text."""

    number: int
    fields: Mapping[str, str]

    def numbers(self, path: Path, column: str, count: int | None = None, kind=float) -> list:
        text = self.fields[column].strip()
        try:
            values = [kind(v) for v in text.split(",")] if text else []
        except ValueError:
            raise CaseInputError(path, f"row {self.number}: {column} {text!r} is not a list of "
                                       f"{'integers' if kind is int else 'numbers'}") from None
        if kind is float and not all(math.isfinite(v) for v in values):
            raise CaseInputError(path, f"row {self.number}: {column} {text!r} has a non-finite value")
        if count is not None and len(values) != count:
            raise CaseInputError(path, f"row {self.number}: {column} needs {count} numbers, found "
                                       f"{len(values)} ({text!r})")
        return values


def parse_row(path: Path, raw: Sequence[str]) -> InfoRow:
    return InfoRow(number=int(raw[0]), fields=dict(zip(COLUMNS, raw[1:])))


@dataclass(frozen=True, kw_only=True)
class CaseFields:
    """What every row of one key slice must agree on."""

    info: Path
    key_slice: int
    slice_range: tuple[int, int]
    spacing_xy: tuple[float, float]
    slice_interval: float
    image_size: tuple[int, int]  # (width, height), as the CSV writes it
    split: str
    dicom_window: tuple[float, float] | None


def case_fields(path: Path, case_id: str, rows: Sequence[InfoRow], need_window: bool) -> CaseFields:
    """The per-key-slice fields, checked for consistency across the key slice's rows."""
    columns = ["Key_slice_index", "Slice_range", "Spacing_mm_px_", "Image_size", "Train_Val_Test"]
    columns += ["DICOM_windows"] if need_window else []
    for column in columns:
        values = {tuple(v.strip() for v in row.fields[column].split(",")) for row in rows}
        if len(values) > 1:
            numbers = ", ".join(str(r.number) for r in rows)
            raise CaseInputError(path, f"{case_id}: rows {numbers} disagree on {column} "
                                       f"({' vs '.join(sorted(', '.join(v) for v in values))})")
    row = rows[0]
    where = f"row {row.number}"
    key = row.numbers(path, "Key_slice_index", 1, int)[0]
    if key != int(case_id.rsplit("_", 1)[1]):
        raise CaseInputError(path, f"{where}: Key_slice_index {key} differs from File_name's slice "
                                   f"{row.fields['File_name'].strip()}")
    lo, hi = row.numbers(path, "Slice_range", 2, int)
    if not 1 <= lo <= key <= hi:
        raise CaseInputError(path, f"{where}: Slice_range {lo}, {hi} must contain the key slice {key} "
                                   "(slice numbers start at 1)")
    sx, sy, dz = row.numbers(path, "Spacing_mm_px_", 3)
    if min(sx, sy, dz) <= 0:
        raise CaseInputError(path, f"{where}: Spacing_mm_px_ must be 3 positive mm values, found {sx}, {sy}, {dz}")
    width, height = row.numbers(path, "Image_size", 2, int)
    if min(width, height) < 1:
        raise CaseInputError(path, f"{where}: Image_size must be 2 positive sizes, found {width}, {height}")
    split = OFFICIAL_SPLIT.get(row.fields["Train_Val_Test"].strip())
    if split is None:
        raise CaseInputError(path, f"{where}: Train_Val_Test must be 1 (train), 2 (val) or 3 (test), "
                                   f"found {row.fields['Train_Val_Test']!r}")
    window = None
    if need_window:
        lo_hu, hi_hu = row.numbers(path, "DICOM_windows", 2)
        if not hi_hu > lo_hu:
            raise CaseInputError(path, f"{where}: DICOM_windows max must exceed min, found {lo_hu}, {hi_hu}")
        window = (lo_hu, hi_hu)
    return CaseFields(info=path, key_slice=key, slice_range=(lo, hi), spacing_xy=(sx, sy), slice_interval=dz,
                      image_size=(width, height), split=split, dicom_window=window)


# ---- lesions --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Lesion:
    """One row's lesion, in key-slice pixel coordinates (x = column, y = row)."""

    row: int
    long_axis: tuple[tuple[float, float], tuple[float, float]]
    short_axis: tuple[tuple[float, float], tuple[float, float]]
    box: tuple[float, float, float, float]
    diameters_px: tuple[float, float]
    location: tuple[float, float, float]
    type: int
    noisy: bool

    def record(self, lesion_id: str, z: int, spacing_xy: tuple[float, float]) -> dict:
        """The lesion as stored in ``annotations["lesions"]`` (docs/store-format.md)."""
        return {
            "lesion_id": lesion_id, "z": z,
            "recist": {"long": [list(p) for p in self.long_axis], "short": [list(p) for p in self.short_axis]},
            "box": list(self.box), "diameters_px": list(self.diameters_px),
            "diameters_mm": [axis_length_mm(self.long_axis, spacing_xy), axis_length_mm(self.short_axis, spacing_xy)],
            "type": self.type, "type_name": LESION_TYPES[self.type], "location": list(self.location),
            "noisy": self.noisy, "source_row": self.row,
        }


def parse_lesion(row: InfoRow, case: CaseFields) -> Lesion:
    """The row's lesion; CaseInputError (naming the row) when it is malformed or off the image."""
    path = case.info
    coords = row.numbers(path, "Measurement_coordinates", 8)
    points = np.asarray(coords).reshape(4, 2)
    width, height = case.image_size
    outside = [(x, y) for x, y in points if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5)]
    if outside:
        shown = ", ".join(f"({x:g}, {y:g})" for x, y in outside)
        raise CaseInputError(path, f"row {row.number}: RECIST point(s) {shown} outside the "
                                   f"{width}x{height} image")
    long_axis = (tuple(points[0]), tuple(points[1]))
    short_axis = (tuple(points[2]), tuple(points[3]))
    diameters = row.numbers(path, "Lesion_diameters_Pixel_", 2)
    for name, axis, given in (("long", long_axis, diameters[0]), ("short", short_axis, diameters[1])):
        length = float(np.hypot(*np.subtract(axis[1], axis[0])))
        if length <= 0:
            raise CaseInputError(path, f"row {row.number}: the RECIST {name} axis has zero length")
        if abs(length - given) > DIAMETER_TOLERANCE_PX + 0.02 * length:
            raise CaseInputError(path, f"row {row.number}: Lesion_diameters_Pixel_ {name} {given:g} px differs "
                                       f"from its axis' length {length:.3f} px")
    lesion_type = row.numbers(path, "Coarse_lesion_type", 1, int)[0]
    if lesion_type not in LESION_TYPES:
        raise CaseInputError(path, f"row {row.number}: Coarse_lesion_type must be -1 or 1..8, found {lesion_type}")
    noisy = row.numbers(path, "Possibly_noisy", 1, int)[0]
    if noisy not in (0, 1):
        raise CaseInputError(path, f"row {row.number}: Possibly_noisy must be 0 or 1, found {noisy}")
    return Lesion(row=row.number, long_axis=long_axis, short_axis=short_axis,
                  box=tuple(row.numbers(path, "Bounding_boxes", 4)), diameters_px=tuple(diameters),
                  location=tuple(row.numbers(path, "Normalized_lesion_location", 3)),
                  type=lesion_type, noisy=bool(noisy))


def axis_length_mm(axis, spacing_xy: tuple[float, float]) -> float:
    (x1, y1), (x2, y2) = axis
    return float(np.hypot((x2 - x1) * spacing_xy[0], (y2 - y1) * spacing_xy[1]))


def recist_mask(long_axis, short_axis, shape: tuple[int, int]) -> np.ndarray:
    """A (y, x) uint8 0/1 mask of the region the RECIST axes span: an approximation of the lesion.

    Four quarter-ellipses joined at the axes' crossing point, each spanned by the two
    half-axes that bound it, so the outline passes through all four endpoints (an
    ellipse when the axes bisect each other, as they seldom exactly do). Written
    here rather than with cv2.ellipse, which draws one centred ellipse on an
    integer (fixed-point) grid. The pixel nearest the crossing point is always set,
    so even a sub-pixel lesion marks its slice.
    """
    p1, p2 = np.asarray(long_axis, dtype=np.float64)
    q1, q2 = np.asarray(short_axis, dtype=np.float64)
    u = (p2 - p1) / np.linalg.norm(p2 - p1)
    v = np.array([-u[1], u[0]])
    centre = _crossing(p1, p2, q1, q2)
    a_pos, a_neg = (p2 - centre) @ u, (centre - p1) @ u
    b_q1, b_q2 = (q1 - centre) @ v, (q2 - centre) @ v
    b_pos, b_neg = max(b_q1, b_q2), -min(b_q1, b_q2)
    if min(a_pos, a_neg, b_pos, b_neg) <= 0:  # the axes do not cross: one ellipse on the long axis' midpoint
        centre = (p1 + p2) / 2
        a_pos = a_neg = float(np.linalg.norm(p2 - p1)) / 2
        b_pos = b_neg = float(np.linalg.norm(q2 - q1)) / 2
    height, width = shape
    reach = max(a_pos, a_neg, b_pos, b_neg)  # a rotated quarter-ellipse may bulge past its endpoints
    x0, y0 = np.maximum(np.floor(centre - reach).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(centre + reach).astype(int) + 1, [width - 1, height - 1])
    mask = np.zeros(shape, dtype=np.uint8)
    yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    dx, dy = xx - centre[0], yy - centre[1]
    s, t = dx * u[0] + dy * u[1], dx * v[0] + dy * v[1]
    a = np.where(s >= 0, a_pos, a_neg)
    b = np.where(t >= 0, b_pos, b_neg)
    mask[y0:y1 + 1, x0:x1 + 1] = (s / a) ** 2 + (t / b) ** 2 <= 1
    cx, cy = int(np.clip(np.rint(centre[0]), 0, width - 1)), int(np.clip(np.rint(centre[1]), 0, height - 1))
    mask[cy, cx] = 1
    return mask


def _crossing(p1, p2, q1, q2) -> np.ndarray:
    """Where the lines through the two axes cross (the long axis' midpoint if they are parallel)."""
    d1, d2 = p2 - p1, q2 - q1
    det = d1[0] * (-d2[1]) - d1[1] * (-d2[0])
    if abs(det) < 1e-9 * np.linalg.norm(d1) * np.linalg.norm(d2):
        return (p1 + p2) / 2
    rhs = q1 - p1
    t = (rhs[0] * (-d2[1]) - rhs[1] * (-d2[0])) / det
    return p1 + t * d1


# ---- slices ------------------------------------------------------------------------------------
def context_slices(key: int, slice_range: tuple[int, int], context: int) -> tuple[list[int], list[int]]:
    """Per stored row (descending slice number): the slice asked for and the released slice used."""
    lo, hi = slice_range
    requested = [key + context - row for row in range(2 * context + 1)]
    return requested, [min(max(s, lo), hi) for s in requested]


def read_png_hu(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A DeepLesion slice as int16 HU; CaseInputError unless it is a 16-bit grey PNG of ``size`` (w, h)."""
    import cv2  # slow to import: only when slices are read

    if not path.is_file():
        raise MissingInputError(path, "slice PNG not found (its slice lies within the row's Slice_range, "
                                      "so it should have been released)")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CaseInputError(path, "not a readable PNG")
    if image.dtype != np.uint16:
        raise CaseInputError(path, f"{image.dtype.itemsize * 8}-bit PNG; DeepLesion slices are 16-bit "
                                   "(value = HU + 32768)")
    if image.ndim != 2:
        raise CaseInputError(path, f"expected a grey-level slice, found {image.shape[2]} channels")
    width, height = size
    if image.shape != (height, width):
        raise CaseInputError(path, f"slice is {image.shape[1]}x{image.shape[0]} (width x height) but the row's "
                                   f"Image_size says {width}x{height}")
    # value - 32768 in int16 is the value with its top bit flipped, read as int16: no int32 copy.
    return (image ^ np.uint16(0x8000)).view(np.int16)


def check_png_header(path: Path, size: tuple[int, int]) -> None:
    """Raise unless ``path`` starts like a 16-bit grey PNG of ``size`` (width, height): reads 26 bytes."""
    if not path.is_file():
        raise MissingInputError(path, "slice PNG not found")
    with open(path, "rb") as handle:
        head = handle.read(26)
    # PNG signature, then the IHDR chunk: length, b"IHDR", width, height, bit depth, colour type.
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise CaseInputError(path, "not a PNG")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour = head[24], head[25]
    if depth != 16 or colour != 0:
        raise CaseInputError(path, f"{depth}-bit PNG of colour type {colour}; DeepLesion slices are 16-bit "
                                   "grey (colour type 0, value = HU + 32768)")
    if (width, height) != tuple(size):
        raise CaseInputError(path, f"slice is {width}x{height} (width x height) but the row's Image_size "
                                   f"says {size[0]}x{size[1]}")


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
