"""Training every segmenting model from its defaults on the whole real CT, then scoring the case
predicted whole: shared by tests/ctseg/test_whole_slices*.py and benchmarks/bench_whole_slices.py.

Not a test module (no ``test_`` prefix): the two test files split the models between them so
that pytest-xdist (``--dist loadfile``) runs the two halves on both workers.
"""

from __future__ import annotations

import shutil

import numpy as np

from ctprep.store import SliceStore

SEGMENTERS = ("unet", "ctumorgan", "segan", "crgan", "lgan-basic", "lgan-product", "lgan-ef", "lgan-lf",
              "lgan-regression")
_LGAN = {"features": [16, 32, 64], "critic_features": [16, 32, 64], "fc": 64}
# CPU-sized networks: each default architecture, narrower (and the 8-level ones shallower, for 64-px crops).
TINY = {"unet": {"features": [16, 32, 64]},
        "ctumorgan": {"features": [32, 64, 128, 128, 128, 128], "d_features": 16, "z_dim": 16},
        "segan": {"features": [16, 32, 64, 64], "critic_features": [16, 32, 64]},
        "crgan": {"features": [16, 32, 64, 64, 64, 64], "d_features": 16},
        **{name: dict(_LGAN) for name in SEGMENTERS if name.startswith("lgan")}}
WHOLE_SLICE_STEPS = 300
BAR = {"dice": 0.6, "precision": 0.5}  # issue 13: whole-case Dice >= 0.6 with precision >= 0.5


def defaults_layer(model: str, store, out, steps: int = WHOLE_SLICE_STEPS) -> dict:
    """All a user gives beyond the model's defaults: store, target, out; here also a tiny network, 64-px
    crops and few steps (10 epochs). Validation is the default one (held-out slices: no val case)."""
    return {"store": str(store), "target": "tumour", "out": str(out), "size": 64, "batch_size": 8,
            "epochs": 10, "steps_per_epoch": max(steps // 10, 1), "image_every": 0, "model_options": TINY[model]}


def train_and_score(model: str, store, out, *, steps: int = WHOLE_SLICE_STEPS, extra=()) -> dict:
    """`ctseg train --model MODEL` from its defaults (seed 0 unless ``extra`` sets one), then
    :func:`whole_case_scores` of the run's best checkpoint (last when it kept none)."""
    import torch

    from ctseg.build import build_config
    from ctseg.train import train

    torch.manual_seed(0)
    train(build_config(model=model, layers=[defaults_layer(model, store, out, steps), *extra]), progress=False)
    best = out / "best.pt"
    return whole_case_scores(best if best.is_file() else out / "last.pt", store, out / "pred.zarr")


def meets_the_bar(scores: dict) -> bool:
    return all(scores[k] >= v for k, v in BAR.items())


def whole_case_scores(checkpoint, store, copy) -> dict:
    """Dice, precision, recall of the case predicted whole as `ctseg predict` does by default (the run's
    post-processing), and the crop-only Dice (crops of the training size centred on the nodule)."""
    import torch

    from ctseg.build import load_model
    from ctseg.crops import crop_padded
    from ctseg.metrics import confusion, overlap_metrics
    from ctseg.predict import predict_store

    shutil.copytree(store, copy)
    predict_store(checkpoint, copy, name="x", progress=False)
    case = SliceStore.open(copy).read_case("volume-0", labels=["tumour", "pred_x_mask"])
    truth, mask = case.labels["tumour"] > 0, case.labels["pred_x_mask"] > 0
    whole = overlap_metrics(confusion(mask, truth))
    model, config, _ = load_model(checkpoint, "cpu")
    zs = np.nonzero(truth.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(truth.any(axis=0))
    cy, cx = int(ys.mean()), int(xs.mean())
    crops = torch.from_numpy(np.stack([crop_padded(case.image[z], cy, cx, config.size) for z in zs])).float() / 255
    crop_truth = np.stack([crop_padded(truth[z][None], cy, cx, config.size)[0] for z in zs])
    model.eval()
    crop = overlap_metrics(confusion(model.predict(crops)[:, 0].numpy() >= config.threshold, crop_truth))
    return {k: float(whole[k]) for k in ("dice", "precision", "recall")} | {"crop_dice": float(crop["dice"])}
