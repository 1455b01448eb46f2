"""Whole slices of a real CT: sampling that shows what is not a lesion, whole-slice validation,
post-processing and inference options (issue 13).

``whole_ct_store`` is the real pyradiomics chest CT (48 slices, resampled to 128 x 128) with
its 3-slice nodule: most of every slice is heart, mediastinum, chest wall and lung, the
false positives a model trained on lesion-centred crops alone makes.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctprep.store import SliceStore
from ctseg.build import build_config
from ctseg.errors import ConfigError
from whole_ct import meets_the_bar, train_and_score


def layer(store, out, **extra) -> dict:
    return {"store": str(store), "target": "tumour", "out": str(out), "size": 64, "batch_size": 8,
            "train_split": "all", "val_split": "all", "image_every": 0, **extra}


# ---- sampling ------------------------------------------------------------------------------------
def test_crops_elsewhere_avoid_the_lesion_and_sit_in_the_body(whole_ct_store):
    from ctseg.crops import body_centre

    store = SliceStore.open(whole_ct_store)
    case = store.read_case("volume-0", labels=["tumour"])
    z = int(np.argmax((case.labels["tumour"] > 0).sum(axis=(1, 2))))
    image, target = case.image[z], (case.labels["tumour"][z][None] > 0).astype(np.float32)
    ys, xs = np.nonzero(target[0])
    rng = np.random.default_rng(0)
    for _ in range(50):
        cy, cx = body_centre(image, target, 32, rng)
        assert min(abs(cy - ys).min(), abs(cx - xs).min()) >= 1 or not (
            ys.min() - 16 <= cy <= ys.max() + 16 and xs.min() - 16 <= cx <= xs.max() + 16)
        assert image[0, cy, cx] > image[0].mean() or cy in (16, 112) or cx in (16, 112)


def test_training_mixes_lesion_crops_with_crops_elsewhere(whole_ct_store):
    from ctseg.data import SliceDataset, select_index

    index = select_index(SliceStore.open(whole_ct_store), split="all", lesion_only=True, targets=["tumour"])
    lesion_share = []
    for share in (1.0, 0.0):
        data = SliceDataset(whole_ct_store, index, targets=["tumour"], size=32, lesion_crops=share)
        lesion_share.append(np.mean([data[(i, (0, k))]["target"].max() > 0 for i in range(len(data))
                                     for k in range(10)]))
    assert lesion_share[0] == 1.0 and lesion_share[1] == 0.0, lesion_share


@pytest.mark.parametrize("extra, words", [
    ({"size": 256}, ["--size 256", "128x128"]),
    ({"sampling": "balanced", "cases": ["volume-0"]}, None),
])
def test_options_the_store_cannot_meet_fail_naming_option_and_store(whole_ct_store, nodule_store, tmp_path,
                                                                    extra, words):
    from ctseg.data import training_data

    if words is None:  # the nodule store holds lesion slices +-3: lesion-only sampling of 3 slices works
        training_data(build_config(model="unet", layers=[layer(nodule_store, tmp_path / "a", **extra)]))
        return
    with pytest.raises(ConfigError) as info:
        training_data(build_config(model="unet", layers=[layer(whole_ct_store, tmp_path / "a", **extra)]))
    assert all(w in str(info.value) for w in words) and str(whole_ct_store) in str(info.value)


# ---- validation ----------------------------------------------------------------------------------
def test_a_store_without_validation_cases_holds_out_training_slices_and_says_so(whole_ct_store, tmp_path):
    from ctseg.data import training_data
    from ctseg.validation import validation_plan

    config = build_config(model="unet", layers=[layer(whole_ct_store, tmp_path / "a", val_split="val",
                                                      train_split="all")])
    plan = validation_plan(config)
    assert plan.held_out and "held-out slices of the training cases" in plan.description
    assert "has no 'val' case" in plan.notes[0]
    dataset, _, _ = training_data(config, exclude=plan.excluded())
    trained = {(c, int(z)) for c, z in zip(dataset.cases, dataset.rows)}
    assert trained and not trained & plan.excluded() and len(trained) + len(plan.excluded()) == 48


def test_held_out_slices_are_scored_after_the_whole_case_is_post_processed():
    """A 3-slice nodule (10 + 22 + 22 px) and a 14-px false positive on another slice: in the whole case
    the nodule is the largest component; in a stack of the held-out slices alone the false positive is."""
    from ctseg.postprocess import PostProcess
    from ctseg.validation import scored_rows

    truth = np.zeros((10, 20, 20), dtype=bool)
    truth[3, 2:4, 2:7] = True  # 10 px, held out
    truth[4:6, 1:3, 1:12] = True  # 22 px each, trained on
    mask = truth.copy()
    mask[8, 10:12, 10:17] = True  # 14 px false positive, held out
    rows = [3, 8]
    scores = scored_rows(mask, truth, rows, (1.0, 1.0, 1.0), PostProcess(largest=1))
    assert scores == {"dice": 1.0, "precision": 1.0, "recall": 1.0}
    stacked = scored_rows(mask[rows], truth[rows], [0, 1], (1.0, 1.0, 1.0), PostProcess(largest=1))
    assert stacked["dice"] == 0.0  # what validation scored before: the nodule's slice dropped


def test_validation_interval_keeps_validation_within_its_budget():
    from ctseg.validation import validation_interval

    assert validation_interval(10.0, 1.0, 1, 0.2) == 1
    assert validation_interval(10.0, 9.0, 1, 0.2) == 5
    assert validation_interval(10.0, 9.0, 2, 0.0) == 2


# ---- inference and post-processing -----------------------------------------------------------------
def test_sliding_windows_blend_back_to_the_slice_and_flips_undo_themselves():
    import torch

    from ctseg.inference import sliding_window, with_flips

    x = torch.rand(2, 1, 100, 90)
    assert torch.allclose(sliding_window(lambda t: t * 1.0, x, 32, 0.5), x, atol=1e-5)
    assert torch.allclose(with_flips(lambda t: t * 2.0, x), 2 * x, atol=1e-6)
    assert sliding_window(lambda t: t.mean(dim=(2, 3), keepdim=True).expand_as(t), x, 32, 0.5).shape == x.shape


def test_post_processing_keeps_the_largest_components_above_a_size_inside_the_organ():
    from ctseg.postprocess import PostProcess, postprocess

    mask = np.zeros((6, 20, 20), dtype=bool)
    mask[1:4, 2:8, 2:8] = True  # 108 voxels
    mask[1:3, 12:15, 12:15] = True  # 18
    mask[5, 0, 19] = True  # 1
    spacing = (2.0, 1.0, 1.0)
    assert postprocess(mask, spacing, PostProcess(largest=1)).sum() == 108
    assert postprocess(mask, spacing, PostProcess(min_size_mm3=10)).sum() == 126
    assert postprocess(mask, spacing, PostProcess(largest=2, min_size_mm3=30)).sum() == 126
    organ = np.zeros_like(mask)
    organ[:, 10:, 10:] = True
    assert postprocess(mask, spacing, PostProcess(organ="liver"), organ).sum() == 18


def test_a_run_keeps_its_largest_component_unless_told_otherwise(whole_ct_store, tmp_path):
    from ctseg.cli import _inference
    from ctseg.postprocess import PostProcess

    config = build_config(model="unet", layers=[layer(whole_ct_store, tmp_path / "a")])
    assert PostProcess.of_run(config) == PostProcess(largest=1)
    assert _inference(False, False, None, None, None)[1] is None  # no flag: the run's own
    assert _inference(False, False, 0, None, None)[1] == PostProcess(largest=0)
    with pytest.raises(ConfigError, match="largest and min_size_mm3 must be >= 0, found -1"):
        build_config(model="unet", layers=[layer(whole_ct_store, tmp_path / "a", largest=-1)])


# ---- learning on whole slices -----------------------------------------------------------------------
# ---- every segmenting model, from its defaults (the LGANs: test_whole_slices_lgan.py) -------------------
@pytest.mark.slow
@pytest.mark.timeout(600)  # ~30-70 s each on an idle 2-core machine; several times that under load
@pytest.mark.parametrize("model", ["unet", "ctumorgan", "segan", "crgan"])
def test_each_model_from_its_defaults_segments_whole_slices_of_a_real_ct(whole_ct_store, tmp_path, model):
    """`ctseg train --model X` defaults (tiny network, few steps) then `ctseg predict` defaults: the whole
    case scores Dice >= 0.6 with precision >= 0.5."""
    scores = train_and_score(model, whole_ct_store, tmp_path / model)
    assert meets_the_bar(scores), scores
