"""Quality on real data: the pyradiomics chest CT and its real nodule mask, through a store and the library.

* trimap from the mask -> soft mask -> binarised at 0.5: Dice >= 0.90 against the mask;
* RECIST measured on the mask (longest diameter, longest perpendicular) -> GrabCut trimap
  -> soft mask -> binarised: Dice >= 0.80 (Cai et al. report ~0.92 for GrabCut on RECIST slices).
"""

from __future__ import annotations

import numpy as np
import pytest

from ctlabel.label import LabelConfig, label_store
from ctlabel.matting import estimate_alpha, matting_image
from ctlabel.soften import binarised
from ctlabel.trimap import recist_from_mask, trimap_from_mask, trimap_from_recist
from ctprep.store import SliceStore
from ctprep.windowing import PRESETS, apply_windows


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture
def lung_store(tmp_path, lung, lk):
    """The real CT slices around the nodule as a store (lung + mediastinum windows), RECIST annotations included."""
    spacing_yx = lung.spacing[1:]
    annotations = {"lesions": [lk.recist_annotation(f"nodule-z{z}", z, recist_from_mask(lung.mask[z], spacing_yx),
                                                    spacing_yx) for z in lung.lesion_slices]}
    store = lk.new_store(tmp_path / "lung.zarr")
    lk.write_case(store, "lung1", lung.hu, {"tumour": lung.mask}, lung.spacing, annotations=annotations)
    return tmp_path / "lung.zarr"


def _store_dice(path, label: str, mask: np.ndarray, zs) -> tuple[float, list[float]]:
    soft = SliceStore.open(path).read_case("lung1", labels=[label]).labels[label]
    hard = binarised(soft)
    return _dice(hard[zs], mask[zs]), [round(_dice(hard[z], mask[z]), 3) for z in zs]


def test_mask_trimap_soft_mask_dice(lung_store, lung):
    report = label_store(LabelConfig(store=str(lung_store), source="mask", label="tumour"), progress=False)
    assert len(report.lesions("done")) == len(lung.lesion_slices) and not report.lesions("skipped")
    dice, per_slice = _store_dice(lung_store, "soft_tumour", lung.mask, lung.lesion_slices)
    assert dice >= 0.90, per_slice
    soft = SliceStore.open(lung_store).read_case("lung1", labels=["soft_tumour"]).labels["soft_tumour"]
    assert 0.0 <= soft.min() and soft.max() <= 1.0 and soft.dtype == np.float32
    assert np.count_nonzero((soft > 0.01) & (soft < 0.99)) > 20  # soft: a real partial-volume rim


def test_recist_grabcut_soft_mask_dice(lung_store, lung):
    report = label_store(LabelConfig(store=str(lung_store), source="recist"), progress=False)
    assert len(report.lesions("done")) == len(lung.lesion_slices) and not report.lesions("skipped")
    dice, per_slice = _store_dice(lung_store, "soft_recist", lung.mask, lung.lesion_slices)
    assert dice >= 0.80, per_slice


def test_library_path_matches_the_store_path(lung):
    """The same pipeline called as functions on one crop gives the quality too (no store needed)."""
    z = lung.lesion_slices[len(lung.lesion_slices) // 2]
    ys, xs = np.nonzero(lung.mask[z])
    y0, y1, x0, x1 = ys.min() - 20, ys.max() + 21, xs.min() - 20, xs.max() + 21
    windows = apply_windows(lung.hu[z:z + 1], [PRESETS["lung"], PRESETS["mediastinum"]])[0]
    image = matting_image(windows[:, y0:y1, x0:x1])
    mask = lung.mask[z, y0:y1, x0:x1]
    spacing = lung.spacing[1:]
    alpha = estimate_alpha(image, trimap_from_mask(mask, spacing))
    assert _dice(alpha >= 0.5, mask) >= 0.90
    recist = recist_from_mask(mask, spacing)
    alpha = estimate_alpha(image, trimap_from_recist(image, recist.long, recist.short, spacing))
    assert _dice(alpha >= 0.5, mask) >= 0.80
