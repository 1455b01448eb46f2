"""A phantom NSCLC-Radiomics download (demo and tests): CT series + RTSTRUCT in the TCIA layout.

``<root>/LUNG1-xxx/<study>/<series>/<random>.dcm``: a synthetic chest (body,
two lungs, spine, a tumour in the right lung and optionally a second one in
the left) written as a CT series with ctprep.phantoms.dicom, and an RTSTRUCT
written with rt-utils from the known masks (``GTV-1``, ``GTV-2``,
``Lung-Left``, ``Lung-Right``), so that a conversion can be checked voxel for
voxel. Only synthetic, PHI-free header values are written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ctprep.formats.dicom_outputs import quiet_pydicom
from ctprep.phantoms.dicom import write_ct_series
from lkbase.atomic import atomic_path

AIR_HU, FAT_HU, BODY_HU, LUNG_HU, BONE_HU, TUMOUR_HU = -1000, -100, 40, -850, 700, 30
SHAPE, SPACING = (20, 96, 96), (2.5, 0.8, 0.8)
ORIGIN = (-38.0, -38.0, -200.0)  # LPS mm of canonical voxel (0, 0, 0)


@dataclass(frozen=True, kw_only=True)
class NsclcPhantom:
    """What was written for one patient: files, and the canonical (z, y, x) HU and ROI masks."""

    patient: str
    ct_files: tuple[Path, ...]
    rtstruct: Path | None
    hu: np.ndarray
    rois: Mapping[str, np.ndarray]


def make_chest_phantom(shape: tuple[int, int, int] = SHAPE, seed: int = 0,
                       tumours: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Canonical (z, y, x) int16 HU and bool ROI masks: GTV-1 (right lung), GTV-2 (left), the lungs."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1] = FAT_HU
    hu[(x / 0.84) ** 2 + (y / 0.64) ** 2 <= 1] = BODY_HU
    rois: dict[str, np.ndarray] = {}
    # x grows to the patient's left: the right lung has small x.
    for name, side in (("Lung-Right", -1), ("Lung-Left", 1)):
        rois[name] = ((x - side * 0.4) / 0.3) ** 2 + ((y + 0.05) / 0.45) ** 2 + (z / 0.95) ** 2 <= 1
        hu[rois[name]] = LUNG_HU
    hu[(x / 0.1) ** 2 + ((y - 0.48) / 0.1) ** 2 <= 1] = BONE_HU
    centres = [(-0.42, -0.1, 0.15, 0.15), (0.42, 0.05, -0.35, 0.1)][:tumours]
    for n, (cx, cy, cz, radius) in enumerate(centres, start=1):
        jitter = rng.uniform(-0.03, 0.03, size=3)
        gtv = (((x - cx - jitter[0]) ** 2 + (y - cy - jitter[1]) ** 2) / radius ** 2
               + ((z - cz - jitter[2]) / (2.5 * radius)) ** 2 <= 1)
        rois[f"GTV-{n}"] = gtv & (rois["Lung-Right"] | rois["Lung-Left"])  # inside a lung, as drawn
        hu[rois[f"GTV-{n}"]] = TUMOUR_HU
    hu += rng.normal(0, 8, size=shape).astype(np.float32)
    return np.rint(hu).astype(np.int16), rois


def write_rtstruct(series_files: Sequence[Path], rois: Mapping[str, np.ndarray], path: Path,
                   empty: Sequence[str] = ()) -> Path:
    """Write an RTSTRUCT of canonical (z, y, x) masks onto a head-first-supine series, with rt-utils.

    ``empty`` names ROIs written without any contour. The series headers are read here
    (rt-utils' own loader also decodes every image) and the study attributes rt-utils copies
    are filled in memory when the series lacks them.
    """
    import pydicom
    from rt_utils import RTStruct
    from rt_utils import ds_helper, image_helper

    series = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files]
    series.sort(key=image_helper.get_slice_position)  # ascending z = canonical slice order here
    for ds in series:
        for keyword in ("StudyDate", "StudyTime", "StudyID"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    with quiet_pydicom():  # rt-utils sets attributes pydicom 3 deprecates: not the user's concern
        rt = RTStruct(series, ds_helper.create_rtstruct_dataset(series))
    for name, mask in rois.items():
        rt.add_roi(mask=np.ascontiguousarray(np.asarray(mask, dtype=bool).transpose(1, 2, 0)), name=name)
    for name in empty:
        rt.add_roi(mask=np.zeros((int(series[0].Rows), int(series[0].Columns), len(series)), bool), name=name)
    with atomic_path(path) as tmp:
        rt.ds.save_as(tmp)  # what RTStruct.save does, without its print to stdout
    return path


def write_nsclc_case(root: Path, number: int = 1, *, shape: tuple[int, int, int] = SHAPE,
                     spacing: tuple[float, float, float] = SPACING, origin: Sequence[float] = ORIGIN,
                     tumours: int = 1, lungs: bool = True, rtstruct: bool = True, rename: Mapping[str, str] = {},
                     empty: Sequence[str] = (), seed: int | None = None) -> NsclcPhantom:
    """Write patient ``LUNG1-<number>``: ``<study>/<ct series>/`` and ``<study>/<rtstruct series>/``.

    ``rename`` writes ROIs under other names (``{"GTV-1": "gtv"}``); ``empty`` adds ROIs without
    contours; ``rtstruct=False`` writes the CT series alone.
    """
    seed = number if seed is None else seed
    rng = np.random.default_rng(seed + 1000)
    patient = f"LUNG1-{number:03d}"
    study = root / patient / _name(rng, "study")
    hu, rois = make_chest_phantom(shape, seed=seed, tumours=tumours)
    files = write_ct_series(study / _name(rng, "ct"), hu, spacing, origin=origin, patient_id=patient, seed=seed)
    chosen = {rename.get(k, k): v for k, v in rois.items() if lungs or k.startswith("GTV")}
    path = None
    if rtstruct:
        path = write_rtstruct(files, chosen, study / _name(rng, "rtstruct") / f"{_name(rng, '')}.dcm", empty)
    return NsclcPhantom(patient=patient, ct_files=tuple(files), rtstruct=path, hu=hu, rois=chosen)


def _name(rng: np.random.Generator, prefix: str) -> str:
    """A meaningless folder or file name, as TCIA's are."""
    tag = uuid.UUID(bytes=rng.bytes(16)).hex[:10]
    return f"{prefix}-{tag}" if prefix else tag
