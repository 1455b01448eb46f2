"""Scoring trained models on their own terms, not through stored binary predictions (that is ctseg.evaluate).

* soft masks against soft truth (``softgan``, ``casgan``; Wang et al. 2020):
  :func:`soft_metrics` of one prediction (MSE, SAD, AUC, Dice) and :func:`evaluate_soft`
  of a model over whole stored cases;
* super-resolution against bicubic (an ``srgan`` run): :func:`evaluate_sr_checkpoint`,
  PSNR/SSIM on held-out crops (ctseg.models.srgan.evaluate_sr, the run's validation).

Above ctseg.build, ctseg.data and ctseg.predict: it loads checkpoints and runs models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ctseg import metrics as m
from ctseg.errors import ConfigError
from lkbase.errors import ParameterError


def soft_metrics(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict:
    """MSE, SAD, AUC and Dice (both binarised: prediction at ``threshold``, truth at 0.5) of soft masks."""
    prob, truth = np.asarray(prob, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if prob.shape != truth.shape:
        raise ParameterError(f"prediction shape {prob.shape} differs from truth shape {truth.shape}")
    diff = prob - truth
    binary_truth = truth >= 0.5
    return {"mse": float((diff ** 2).mean()), "sad": float(np.abs(diff).sum()),
            "auc": m.auc(prob, binary_truth), "dice": float(m.dice(m.confusion(prob >= threshold, binary_truth)))}


def evaluate_soft(model, config, cases: Sequence[str], *, truth: str | None = None,
                  threshold: float = 0.5, batch_size: int = 16) -> dict:
    """Per-case :func:`soft_metrics` of ``model``'s predictions on whole stored cases, and their means.

    ``truth`` is the soft label to compare with (default: the run's first target).
    """
    from ctprep.store import SliceStore
    from ctseg.data import target_array
    from ctseg.predict import predict_volume

    store = SliceStore.open(config.store)
    name = truth or config.target[0]
    per_case = {}
    for case_id in cases:
        data = store.read_case(case_id, labels=[name])
        prob = predict_volume(model, data.image, config, batch_size=batch_size)[0]
        per_case[case_id] = soft_metrics(prob, target_array([data.labels[name]])[0], threshold)
    if not per_case:
        raise ConfigError(f"{config.store}: no cases to evaluate")
    keys = next(iter(per_case.values())).keys()
    mean = {k: float(np.nanmean([row[k] for row in per_case.values()])) for k in keys}
    return {"mean": mean, "cases": per_case, "truth": name, "threshold": threshold}


def evaluate_sr_checkpoint(checkpoint: str | Path, *, store: str | Path | None = None,
                           cases: list[str] | None = None, split: str = "test", batch_size: int = 16,
                           device: str = "auto") -> dict:
    """ctseg.models.srgan.evaluate_sr for a saved ``srgan`` run on ``cases`` (default: the store's ``split``)."""
    from ctprep.store import SliceStore
    from ctseg.build import load_pretrained, select_device
    from ctseg.data import held_out_crops, select_index
    from ctseg.models.srgan import evaluate_sr

    model = load_pretrained(checkpoint, models=("srgan",), role="evaluate_sr_checkpoint")
    model.to(select_device(device))
    config = model.config if store is None else dataclasses.replace(model.config, store=str(store))
    if cases is None:
        index = select_index(SliceStore.open(config.store), split=split, targets=config.target)
        cases = sorted(set(index.rows["case"].tolist()))
    return evaluate_sr(model, held_out_crops(config, list(cases)), batch_size=batch_size)
