"""Validation during training, done the way prediction is used: whole slices, scored per case.

Convention: a :class:`ValidationPlan` names what is validated. Normally that is every
case of ``val_split``, each predicted whole (every stored slice, whole in-plane, with
ctseg.predict.predict_volume, exactly as ``ctseg predict``) and scored in 3D: per-case
Dice, precision and recall (ctseg.metrics; both empty scores 1) of the masks after the
run's post-processing (ctseg.postprocess.PostProcess.of_run: by default the largest 3D
component), averaged over cases and targets. When ``val_split`` has no case, the plan
says so and holds out every ``HOLD_OUT_EVERY``-th slice of the training cases instead
(taken out of training; the plan's ``description`` names them as such): the case is
still predicted and post-processed whole, as prediction does, and only the held-out
slices are scored. (Scoring a stack of the held-out slices alone, as before, let a
14-pixel false positive on one slice outweigh a nodule's 10 pixels on another, where in
the whole case the nodule's three slices are the largest component: issue 13.)
:func:`validation_interval` spaces validations so that they cost at most ``val_budget``
(0.2) of the training time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ctprep.store import SliceStore
from ctseg.config import TrainConfig
from ctseg.data import select_index
from ctseg.predict import predict_volume

HOLD_OUT_EVERY = 5  # with no validation case: every 5th stored slice of the training cases


@dataclass(frozen=True, kw_only=True)
class ValidationPlan:
    """The cases validated, and for held-out validation the stored rows of each (None: every row)."""

    cases: tuple[str, ...] = ()
    rows: dict[str, tuple[int, ...]] | None = None
    description: str = "no validation (val_split: none)"
    held_out: bool = False
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.held_out and not self.rows:
            raise ValueError(f"a held-out plan must name its rows, found {self.rows!r}")

    def excluded(self) -> set[tuple[str, int]]:
        """(case, row) pairs training must not see."""
        return {(c, r) for c, rows in (self.rows or {}).items() for r in rows} if self.held_out else set()


def validation_plan(config: TrainConfig) -> ValidationPlan:
    """What training validates on (see the module docstring)."""
    if config.val_split == "none":
        return ValidationPlan()
    store = SliceStore.open(config.store)
    index = select_index(store, split=config.val_split, cases=config.cases, targets=config.target)
    cases = tuple(sorted(set(index.rows["case"].tolist())))
    if cases:
        return ValidationPlan(cases=cases, description=f"whole slices of the {len(cases)} {config.val_split!r} "
                                                       f"case(s) of {config.store}")
    train = select_index(store, split=config.train_split, cases=config.cases, targets=config.target)
    rows: dict[str, list[int]] = {}
    for case, z in train:
        rows.setdefault(str(case), []).append(int(z))
    held = {c: tuple(zs[HOLD_OUT_EVERY // 2::HOLD_OUT_EVERY]) for c, zs in rows.items() if len(zs) >= HOLD_OUT_EVERY}
    held = {c: zs for c, zs in held.items() if zs}
    note = f"{config.store} has no {config.val_split!r} case"
    if not held:
        return ValidationPlan(description=f"no validation: {note} and no training case has "
                                          f"{HOLD_OUT_EVERY} slices to hold out", notes=(note,))
    count = sum(len(v) for v in held.values())
    return ValidationPlan(cases=tuple(sorted(held)), rows=held, held_out=True, notes=(note,),
                          description=f"held-out slices of the training cases ({count} slices: every "
                                      f"{HOLD_OUT_EVERY}th stored slice of {len(held)} case(s), not trained on), "
                                      f"whole slices")


def scored_rows(mask: np.ndarray, truth: np.ndarray, rows: list[int], spacing, post) -> dict[str, float]:
    """Dice, precision, recall on ``rows`` of a whole case's mask (z, y, x), post-processed whole first."""
    from ctseg.postprocess import postprocess

    return _scores(postprocess(mask, spacing, post)[rows], truth[rows])


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from ctseg.metrics import confusion, overlap_metrics

    scores = overlap_metrics(confusion(pred, truth))
    return {k: float(scores[k]) for k in ("dice", "precision", "recall")}


def validate_plan(model, config: TrainConfig, plan: ValidationPlan, amp) -> dict:
    """Per-case Dice, precision and recall on whole slices; the top-level numbers are their means.

    A model's other outputs (SegModel.validation_outputs, e.g. crgan's G alone) are scored too,
    as ``dice_<name>`` next to ``dice``.
    """
    from ctseg.metrics import truth_mask
    from ctseg.postprocess import PostProcess

    post = PostProcess.of_run(config)
    store = SliceStore.open(config.store)
    outputs = {"": {}, **{f"_{name}": options for name, options in model.validation_outputs().items()}}
    per_case: dict[str, dict[str, dict[str, float]]] = {suffix: {} for suffix in outputs}
    for case_id in plan.cases:
        data = store.read_case(case_id, labels=list(config.target))
        rows = list(plan.rows[case_id]) if plan.held_out else list(range(data.image.shape[0]))
        spacing = store.record(case_id).geometry.spacing
        for suffix, options in outputs.items():
            with model.options_set(options):
                prob = predict_volume(model, data.image, config, batch_size=config.val_batch_size, amp=amp)
            scores = [scored_rows(prob[i] >= config.threshold, truth_mask(data.labels[t]), rows, spacing, post)
                      for i, t in enumerate(config.target)]
            per_case[suffix][case_id] = {k: float(np.mean([s[k] for s in scores]))
                                         for k in ("dice", "precision", "recall")}
    means = {k: float(np.mean([c[k] for c in per_case[""].values()])) for k in ("dice", "precision", "recall")}
    others = {f"dice{suffix}": float(np.mean([c["dice"] for c in cases.values()]))
              for suffix, cases in per_case.items() if suffix}
    return {**means, **others, "cases": per_case[""], "on": "held_out_slices" if plan.held_out else "val_cases"}


def validation_interval(train_seconds: float, val_seconds: float, every: int, budget: float) -> int:
    """Epochs between validations: ``every``, stretched so validation costs <= ``budget`` of the training time."""
    if train_seconds <= 0 or budget <= 0 or val_seconds <= budget * train_seconds * every:
        return every
    return every * math.ceil(val_seconds / (budget * train_seconds * every))
