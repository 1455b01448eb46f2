"""DeepLesion's own files: ``DL_info.csv`` (rows, per-key-slice fields, RECIST lesions) and its 16-bit PNG slices.

Convention: meanings follow the dataset's official notes (docs in
:mod:`ctprep.sources.deeplesion`, the dataset adapter that uses this module): a row
number counts data rows from 1 (the header is row 0); coordinates are (x, y) =
(column, row) pixels of the key slice; PNG value - 32768 = HU. Every problem is a
:class:`~ctprep.errors.CaseInputError` naming the file and the row.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ctprep.errors import CaseInputError, MissingInputError

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
PNG_OFFSET = 32768  # PNG value - 32768 = HU
# A CSV diameter may differ from the length of its axis by this much (px) plus 2 % before the row
# counts as inconsistent (the real rows agree to 0.001 px).
DIAMETER_TOLERANCE_PX = 1.0
#: A key slice's File_name: <patient>_<study>_<series>_<slice>.png
FILE_NAME = re.compile(r"([0-9]+)_([0-9]+)_([0-9]+)_([0-9]+)\.png")  # fullmatch, ASCII digits


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
    """The case id of a FILE_NAME match: ``<patient>_<study>_<series>_<slice, 3 digits>``."""
    return f"{match[1]}_{match[2]}_{match[3]}_{int(match[4]):03d}"


def split_of(rows: Sequence[tuple[str, ...]]) -> str | None:
    """The official split all of a key slice's raw rows agree on (None if they do not)."""
    given = [dict(zip(COLUMNS, row[1:]))["Train_Val_Test"].strip() for row in rows]
    values = {OFFICIAL_SPLIT.get(v) for v in given if v}  # a row missing it is rejected by load()
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
    """A raw row of :func:`read_info_rows` by column name."""
    return InfoRow(number=int(raw[0]), fields=dict(zip(COLUMNS, raw[1:])))


#: The fields a lesion row needs (the patient's gender and age are never read).
NEEDED = ("Key_slice_index", "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
          "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range", "Spacing_mm_px_",
          "Image_size", "Train_Val_Test")


def split_incomplete(path: Path, case_id: str, rows: Sequence[InfoRow],
                     need_window: bool) -> tuple[list[InfoRow], list[dict]]:
    """The rows with every needed field, and ``{"source_row", "reason"}`` for each row lacking some:
    a short or partly empty row loses its own lesion, never its key slice's other rows. No complete
    row: CaseInputError naming ``path`` ("no usable lesion")."""
    needed = NEEDED + (("DICOM_windows",) if need_window else ())
    complete, rejected = [], []
    for row in rows:
        if missing := [c for c in needed if not row.fields.get(c, "").strip()]:
            rejected.append({"source_row": row.number, "reason": f"row {row.number}: fields missing: "
                                                                  f"{', '.join(missing)}"})
        else:
            complete.append(row)
    if not complete:
        raise CaseInputError(path, f"{case_id}: no usable lesion ({'; '.join(r['reason'] for r in rejected)})")
    return complete, rejected


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
class RecistLesion:
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


def parse_lesion(row: InfoRow, case: CaseFields) -> RecistLesion:
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
    return RecistLesion(row=row.number, long_axis=long_axis, short_axis=short_axis,
                  box=tuple(row.numbers(path, "Bounding_boxes", 4)), diameters_px=tuple(diameters),
                  location=tuple(row.numbers(path, "Normalized_lesion_location", 3)),
                  type=lesion_type, noisy=bool(noisy))


def axis_length_mm(axis, spacing_xy: tuple[float, float]) -> float:
    """The length of an axis ``((x1, y1), (x2, y2))`` in mm, at pixel spacing (x, y)."""
    (x1, y1), (x2, y2) = axis
    return float(np.hypot((x2 - x1) * spacing_xy[0], (y2 - y1) * spacing_xy[1]))


# ---- PNG slices ---------------------------------------------------------------------------------
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
