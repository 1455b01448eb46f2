"""Each model learns a real lesion on the CPU: the pyradiomics lung nodule, 64x64 around it.

The store holds the nodule's 3 slices and 3 slices either side (9 slices, one case);
training and validation both use it, so the validated Dice (3D, slices re-stacked,
threshold 0.5) is a training Dice. Each run is ~100-120 steps of batch 8 with light
augmentation and a linearly decaying learning rate; the best epoch must reach 0.8,
and the best checkpoint, run through ``predict_store``, must give that Dice again.
(crgan's two-stage test is in test_crgan_lgan.py.)
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ctprep.store import SliceStore
from ctseg.build import build_config
from ctseg.predict import predict_store
from ctseg.train import train

pytestmark = pytest.mark.slow

SETTINGS = {
    "unet": ({"features": [16, 32, 64]}, {"net": {"lr": 1e-3}}, 80),
    "ctumorgan": ({"features": [16, 32, 64, 64], "d_features": 16},
                  {"g": {"lr": 1e-3}, "d": {"lr": 2e-4}}, 100),
    "segan": ({"features": [16, 32, 64, 64], "critic_features": [16, 32, 64]},
              {"s": {"name": "adam", "lr": 1e-3, "betas": [0.5, 0.999]}, "c": {"lr": 2e-4}}, 120),
}


@pytest.mark.parametrize("model", sorted(SETTINGS))
def test_model_learns_the_real_nodule(model, nodule_store, tmp_path):
    assert_learns_the_nodule(model, *SETTINGS[model], {}, nodule_store, tmp_path)


def assert_learns_the_nodule(model: str, options: dict, optimizers: dict, steps: int, loss_weights: dict,
                             nodule_store, tmp_path, phases: list | None = None):
    """Train ``model`` ~``steps`` steps on the nodule store; the best validated Dice must reach 0.8,
    and predicting with best.pt must give that Dice again. Shared with test_crgan_lgan.py."""
    layer = {"store": str(nodule_store), "target": "tumour", "out": str(tmp_path / model), "size": 64,
             "batch_size": 8, "steps_per_epoch": 20, "phases": phases or [{"epochs": steps // 20, "decay": "linear"}],
             "train_split": "all", "val_split": "all", "sampling": "balanced", "image_every": 0, "val_budget": 0,
             "lesion_crops": 1.0,  # the crop-only figure: every crop centred on the nodule (as before issue 13)
             "augment": {"rotate_deg": 10, "scale": [0.9, 1.1], "intensity": 0.05},
             "model_options": options, "optimizers": optimizers, "loss_weights": loss_weights}
    result = train(build_config(model=model, layers=[layer]), progress=False)
    dices = [round(h["dice"], 3) for h in result.history]
    assert result.best_metric >= 0.8, f"{model}: validation Dice per epoch {dices}"

    store_path = tmp_path / "predicted.zarr"
    shutil.copytree(nodule_store, store_path)
    predict_store(tmp_path / model / "best.pt", store_path, name="best", progress=False)
    case = SliceStore.open(store_path).read_case("volume-0", labels=["tumour", "pred_best_mask"])
    truth, mask = case.labels["tumour"] > 0, case.labels["pred_best_mask"] > 0
    dice = 2 * np.logical_and(truth, mask).sum() / (truth.sum() + mask.sum())
    assert dice == pytest.approx(result.best_metric, abs=1e-6)
    return result
