"""A phantom DeepLesion download (demo and tests): ``DL_info.csv`` + ``Images_png/`` in the real layout.

Three fabricated series of the synthetic body (ctprep.phantoms.nifti) with hypodense
ellipsoid lesions whose RECIST axes are known exactly: their key-slice
cross-section is an ellipse, so the long and short axes are its principal axes.
The rows use the official 18 columns and cover what the source must handle:
several lesions on one key slice, a key slice near the start of its released
slice range (context clamped), a Possibly_noisy lesion beside a clean one and a
key slice whose only lesion is noisy, and all three official splits.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ctprep.phantoms.nifti import ORGAN_HU, TUMOUR_HU, make_phantom
from ctprep.formats.deeplesion import COLUMNS, IMAGES_DIR, INFO_NAME, PNG_OFFSET
from lkbase.atomic import atomic_path
from lkbase.errors import ParameterError

LESION_HU = 0  # hypodense against the phantom's liver (60 HU) and body (40 HU)


@dataclass(frozen=True, kw_only=True)
class PhantomLesion:
    """One fabricated lesion: its row, key slice and exact RECIST geometry (pixels; mm for ``half_z``)."""

    case_id: str
    source_row: int
    centre: tuple[float, float]  # (x, y) pixels on the key slice
    half_axes: tuple[float, float]  # (long, short) semi-axes in pixels
    angle_deg: float  # long axis direction, from +x towards +y
    half_z_mm: float
    lesion_type: int
    noisy: bool

    @property
    def long_axis(self) -> tuple[tuple[float, float], tuple[float, float]]:
        u = np.array([np.cos(np.radians(self.angle_deg)), np.sin(np.radians(self.angle_deg))])
        return _endpoints(self.centre, u * self.half_axes[0])

    @property
    def short_axis(self) -> tuple[tuple[float, float], tuple[float, float]]:
        v = np.array([-np.sin(np.radians(self.angle_deg)), np.cos(np.radians(self.angle_deg))])
        return _endpoints(self.centre, v * self.half_axes[1])


@dataclass(frozen=True, kw_only=True)
class DeepLesionPhantom:
    """What was written: the folder, its DL_info.csv, the lesions and each key slice's true lesion mask."""

    root: Path
    info: Path
    case_ids: tuple[str, ...]  # cases discovered by default (noisy-only key slices excluded)
    noisy_only_case_ids: tuple[str, ...]
    lesions: tuple[PhantomLesion, ...]
    truth: Mapping[str, np.ndarray] = field(default_factory=dict)  # case id -> (y, x) uint8 lesion mask


@dataclass(frozen=True, kw_only=True)
class _Series:
    folder: str  # <patient>_<study>_<series>
    slices: int
    split: int  # Train_Val_Test
    window: str
    # (key slice, Slice_range, lesions: (dx, dy, long, short, angle, half_z_mm, type, noisy))
    keys: tuple[tuple[int, tuple[int, int], tuple[tuple[float, ...], ...]], ...]


_SERIES = (
    _Series(folder="000001_01_01", slices=24, split=1, window="-175, 275", keys=(
        (8, (3, 13), ((-0.36, -0.08, 16, 10, 20, 6.0, -1, False), (0.30, 0.10, 9, 7, -50, 4.0, -1, False))),
        (18, (15, 22), ((-0.30, 0.05, 12, 8, 75, 5.0, -1, False),)),
    )),
    _Series(folder="000002_01_01", slices=16, split=2, window="-175, 275", keys=(
        (2, (1, 7), ((-0.40, -0.15, 14, 9, 35, 5.0, 4, False),)),
    )),
    _Series(folder="000003_02_01", slices=20, split=3, window="-160, 240", keys=(
        (9, (4, 15), ((-0.38, 0.0, 15, 11, -20, 5.0, 4, False), (0.25, -0.2, 8, 6, 10, 4.0, 2, True))),
        (12, (4, 15), ((0.2, 0.25, 10, 7, 60, 4.0, 7, True),)),
    )),
)


def write_deeplesion_phantom(root: str | Path, *, size: int = 256, spacing_xy: float = 0.7,
                             slice_interval: float = 2.5, seed: int = 0) -> DeepLesionPhantom:
    """Write a phantom DeepLesion download into ``root`` (DL_info.csv + Images_png/) and describe it."""
    root = Path(root)
    rows, lesions, truth, noisy_only = [], [], {}, []
    for number, series in enumerate(_SERIES):
        hu, seg = make_phantom((series.slices, size, size), (slice_interval, spacing_xy, spacing_xy),
                               organ="liver", seed=seed + number)
        hu[seg == 2] += ORGAN_HU["liver"] - TUMOUR_HU["liver"]  # the phantom's own tumour: every lesion is annotated
        series_lesions = []
        for key, slice_range, specs in series.keys:
            case_id = f"{series.folder}_{key:03d}"
            for dx, dy, long_px, short_px, angle, half_z, kind, noisy in specs:
                centre = ((1 + dx) * (size - 1) / 2, (1 + dy) * (size - 1) / 2)
                lesion = PhantomLesion(case_id=case_id, source_row=len(rows) + 1, centre=centre,
                                       half_axes=(long_px / 2, short_px / 2), angle_deg=angle, half_z_mm=half_z,
                                       lesion_type=int(kind), noisy=bool(noisy))
                series_lesions.append((key, lesion))
                rows.append(_row(series, key, slice_range, lesion, size, spacing_xy, slice_interval))
            if all(spec[-1] for spec in specs):
                noisy_only.append(case_id)
        _draw_lesions(hu, series_lesions, slice_interval)
        truth.update(_truths(series_lesions, hu.shape, slice_interval))
        released = sorted({s for _, (lo, hi), _ in series.keys for s in range(lo, hi + 1)})
        for slice_number in released:  # slice s is canonical row nz - s (numbers grow towards the feet)
            write_png16(root / IMAGES_DIR / series.folder / f"{slice_number:03d}.png", hu[series.slices - slice_number])
        lesions += [lesion for _, lesion in series_lesions]
    info = root / INFO_NAME
    write_dl_info(info, rows)
    case_ids = tuple(sorted({lesion.case_id for lesion in lesions} - set(noisy_only)))
    return DeepLesionPhantom(root=root, info=info, case_ids=case_ids, noisy_only_case_ids=tuple(noisy_only),
                             lesions=tuple(lesions), truth={k: v for k, v in truth.items() if k in case_ids})


def write_png16(path: str | Path, hu: np.ndarray) -> Path:
    """Write a (y, x) int16 HU slice as a DeepLesion 16-bit PNG (value = HU + 32768), atomically."""
    import cv2

    hu = np.asarray(hu)
    if hu.dtype != np.int16 or hu.ndim != 2:
        raise ParameterError(f"write_png16 expects a 2-D int16 HU slice, found {hu.dtype} {hu.shape}")
    path = Path(path)
    # HU + 32768 as uint16 is the int16's bit pattern with its top bit flipped.
    values = hu.view(np.uint16) ^ np.uint16(PNG_OFFSET)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), values):
            raise OSError(f"{path}: OpenCV could not write the PNG")
    return path


def write_dl_info(path: str | Path, rows: Sequence[Mapping[str, object] | Sequence[object]]) -> Path:
    """Write rows (dicts by column name, or 18 values in order) as DL_info.csv with the official header."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row.get(c, "") for c in COLUMNS] if isinstance(row, Mapping) else list(row))
    return path


def numbers_text(values) -> str:
    """Numbers as DL_info.csv writes them: ``"1.5, 2, 3.25"`` (6 significant digits)."""
    return ", ".join(f"{float(v):.6g}" for v in values)


def _endpoints(centre, half) -> tuple[tuple[float, float], tuple[float, float]]:
    c = np.asarray(centre, dtype=np.float64)
    return (tuple(float(v) for v in c - half), tuple(float(v) for v in c + half))


def _row(series: _Series, key: int, slice_range, lesion: PhantomLesion, size: int, spacing_xy: float,
         slice_interval: float) -> dict:
    (x1, y1), (x2, y2) = lesion.long_axis
    (x3, y3), (x4, y4) = lesion.short_axis
    xs, ys = (x1, x2, x3, x4), (y1, y2, y3, y4)
    patient, study, series_id = (int(v) for v in series.folder.split("_"))
    return {
        "File_name": f"{series.folder}_{key:03d}.png", "Patient_index": patient, "Study_index": study,
        "Series_ID": series_id, "Key_slice_index": key,
        "Measurement_coordinates": numbers_text((x1, y1, x2, y2, x3, y3, x4, y4)),
        "Bounding_boxes": numbers_text((min(xs) - 5, min(ys) - 5, max(xs) + 5, max(ys) + 5)),
        "Lesion_diameters_Pixel_": numbers_text((2 * lesion.half_axes[0], 2 * lesion.half_axes[1])),
        "Normalized_lesion_location": numbers_text((lesion.centre[0] / size, lesion.centre[1] / size,
                                                    0.3 + 0.4 * key / series.slices)),
        "Coarse_lesion_type": lesion.lesion_type, "Possibly_noisy": int(lesion.noisy),
        "Slice_range": f"{slice_range[0]}, {slice_range[1]}",
        "Spacing_mm_px_": numbers_text((spacing_xy, spacing_xy, slice_interval)),
        "Image_size": f"{size}, {size}", "DICOM_windows": series.window,
        "Patient_gender": "F", "Patient_age": 60, "Train_Val_Test": series.split,
    }


def _inside(lesion: PhantomLesion, shape_yx: tuple[int, int], dz_mm: float) -> np.ndarray:
    """The (y, x) cross-section of the ellipsoid ``dz_mm`` away from its key slice."""
    scale = 1 - (dz_mm / lesion.half_z_mm) ** 2
    if scale <= 0:
        return np.zeros(shape_yx, dtype=bool)
    yy, xx = np.mgrid[0:shape_yx[0], 0:shape_yx[1]]
    theta = np.radians(lesion.angle_deg)
    dx, dy = xx - lesion.centre[0], yy - lesion.centre[1]
    s = dx * np.cos(theta) + dy * np.sin(theta)
    t = -dx * np.sin(theta) + dy * np.cos(theta)
    a, b = lesion.half_axes
    return (s / a) ** 2 + (t / b) ** 2 <= scale


def _draw_lesions(hu: np.ndarray, lesions, slice_interval: float) -> None:
    """Paint each ellipsoid at LESION_HU, keeping the phantom's noise around it."""
    nz = hu.shape[0]
    for key, lesion in lesions:
        for row in range(nz):
            inside = _inside(lesion, hu.shape[1:], (nz - row - key) * slice_interval)
            if inside.any():
                values = hu[row][inside]
                hu[row][inside] = values - int(np.median(values)) + LESION_HU


def _truths(lesions, shape, slice_interval: float) -> dict[str, np.ndarray]:
    """Per key slice, every lesion of the series that shows on it (not only the slice's own)."""
    truth: dict[str, np.ndarray] = {}
    for key, lesion in lesions:
        if lesion.case_id in truth:
            continue
        mask = np.zeros(shape[1:], dtype=np.uint8)
        for other_key, other in lesions:
            mask |= _inside(other, shape[1:], (key - other_key) * slice_interval).astype(np.uint8)
        truth[lesion.case_id] = mask
    return truth
