"""Shared pieces of the ctlabel tests: numba's cache, small stores, the real lung CT, synthetic lesions.

numba: pymatting's closed-form kernels compile when first loaded (~15 s on two cores; see
ctlabel/_pymatting.py). The cache goes to ``<repo>/.numba_cache`` (git-ignored) unless
NUMBA_CACHE_DIR is already set, so a test run compiles once and later runs on the same
checkout load the cache in about a second. This runs at collection, before any test loads them.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ctprep.case import CaseRecord, LabelSpec  # noqa: E402
from ctprep.geometry import Geometry, SourceGrid  # noqa: E402
from ctprep.store import SliceStore  # noqa: E402
from ctprep.windowing import PRESETS, Window, apply_windows  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
LUNG_WINDOWS = (PRESETS["lung"], PRESETS["mediastinum"])


def shared_data_path(*parts: str) -> Path:
    """A path below ../shared/data, skipping the test when it is absent (as on a user's machine)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent "
                    "(../shared/data exists only on the project's machines)")
    return path


def make_record(case_id: str, shape: tuple[int, int, int], spacing: tuple[float, float, float], *,
                labels: tuple[str, ...], windows: tuple[Window, ...], lesion_label: str | None,
                lesion_pixels: tuple[int, ...], annotations: dict | None = None) -> CaseRecord:
    nz, ny, nx = shape
    geometry = Geometry(shape=shape, spacing=spacing, origin=(0.0, 0.0, 0.0))
    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    source_grid = SourceGrid(shape=(nx, ny, nz), affine_ras=tuple(affine.ravel()), axcodes="LPS",
                             axes=((0, 1), (1, 1), (2, 1)))
    return CaseRecord(
        case_id=case_id, source="test", patient_id=f"patient-{case_id}", split="train",
        geometry=geometry, canonical_geometry=geometry, source_grid=source_grid,
        slice_indices=tuple(range(nz)), z_positions=tuple(geometry.z_positions()), windows=windows,
        labels=tuple(LabelSpec(name=n, values=(1,)) for n in labels), lesion_label=lesion_label,
        lesion_pixels=lesion_pixels, parameters={"test": True}, annotations=annotations or {})


def write_case(store: SliceStore, case_id: str, hu: np.ndarray, labels: dict[str, np.ndarray],
               spacing: tuple[float, float, float], *, windows: tuple[Window, ...] = LUNG_WINDOWS,
               lesion_label: str | None = None, annotations: dict | None = None) -> CaseRecord:
    """Store one case exactly as ctprep's converter does: windowed uint8 image, binary labels, record."""
    labels = {name: (np.asarray(v) != 0).astype(np.uint8) for name, v in labels.items()}
    if lesion_label is None and labels:
        lesion_label = next(iter(labels))
    pixels = tuple(int(np.count_nonzero(labels[lesion_label][z])) for z in range(hu.shape[0])) \
        if lesion_label else (0,) * hu.shape[0]
    record = make_record(case_id, hu.shape, spacing, labels=tuple(labels), windows=windows,
                         lesion_label=lesion_label, lesion_pixels=pixels, annotations=annotations)
    store.write_case(record, apply_windows(hu.astype(np.int16), windows), labels)
    return record


def new_store(path: Path) -> SliceStore:
    return SliceStore.create(path, parameters={"test": True}, created_by="tests/ctlabel")


def lesion_slice(shape=(96, 96), centre=(48.0, 50.0), radii=(20.0, 13.0), angle=0.5, *, inside=40.0,
                 outside=-800.0, edge=1.0, noise=0.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A slice (HU float) with one elliptical lesion and its true mask.

    The border is a smooth ramp ``edge`` pixels wide (a partial-volume rim), so the true
    alpha is known: 1 inside, 0 outside, monotone across.
    """
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2)  # 1 on the border
    distance = (r - 1.0) * min(radii)  # ~pixels outside the border
    alpha = np.clip(0.5 - distance / max(edge, 1e-6), 0.0, 1.0)
    hu = outside + alpha * (inside - outside)
    if noise:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise, size=shape)
    return hu, r <= 1.0


def recist_annotation(lesion_id: str, z: int, recist, spacing_yx) -> dict:
    """An annotations["lesions"] entry in the DeepLesion schema, from a ctlabel Recist."""
    points = recist.points()
    lo, hi = points.min(axis=0), points.max(axis=0)
    long_px = float(np.hypot(*np.subtract(*recist.long)))
    short_px = float(np.hypot(*np.subtract(*recist.short)))
    return {"lesion_id": lesion_id, "z": int(z), "recist": recist.to_dict(),
            "box": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])],
            "diameters_px": [long_px, short_px], "diameters_mm": list(recist.diameters_mm(spacing_yx)),
            "type": -1, "location": [0.5, 0.5, 0.5], "noisy": False, "source_row": 1}


def one_recist_case(path: Path, spacing: tuple[float, float, float]) -> Path:
    """A store of one case ("case-1", 3 slices of 80 x 80) with a lesion on slice 1 (label "tumour") and a
    RECIST annotation measured on it."""
    from ctlabel.trimap import recist_from_mask

    store = new_store(path)
    hu, truth = lesion_slice(shape=(80, 80), centre=(40, 42), radii=(16, 10), noise=10.0)
    volume = np.full((3, 80, 80), -800, np.int16)
    volume[1] = np.round(hu).astype(np.int16)
    mask = np.zeros((3, 80, 80), np.uint8)
    mask[1] = truth
    annotation = recist_annotation("L1", 1, recist_from_mask(truth, spacing[1:]), spacing[1:])
    write_case(store, "case-1", volume, {"tumour": mask}, spacing, annotations={"lesions": [annotation]})
    return path


@pytest.fixture(scope="session")
def lung() -> types.SimpleNamespace:
    """The real chest CT of pyradiomics (512x512x48, 0.57 mm) and its real nodule mask, nodule slices +-2."""
    import SimpleITK as sitk

    folder = shared_data_path("pyradiomics_lung")
    image = sitk.ReadImage(str(folder / "lung1_image.nrrd"))
    label = sitk.ReadImage(str(folder / "lung1_label.nrrd"))
    hu = sitk.GetArrayFromImage(image).astype(np.int16)  # (z, y, x); identity direction: the canonical LPS grid
    mask = (sitk.GetArrayFromImage(label) > 0).astype(np.uint8)
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    keep = slice(max(0, zs.min() - 2), zs.max() + 3)
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    return types.SimpleNamespace(hu=hu[keep], mask=mask[keep], spacing=spacing,
                                 lesion_slices=[int(z) for z in zs - keep.start])


@pytest.fixture(scope="session")
def lk() -> types.SimpleNamespace:
    """This module's helpers, for the test modules (which cannot import a conftest)."""
    return types.SimpleNamespace(
        new_store=new_store, write_case=write_case, lesion_slice=lesion_slice, LUNG_WINDOWS=LUNG_WINDOWS,
        recist_annotation=recist_annotation, one_recist_case=one_recist_case, shared_data_path=shared_data_path,
        REPO=REPO)
