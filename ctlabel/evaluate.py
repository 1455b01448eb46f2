"""``ctlabel evaluate``: soft labels scored against a reference mask, per lesion and per case.

Convention. A soft label (``soft_<name>``, float alpha in [0, 1]) is scored where ctlabel
made it: on each done lesion's slice ``z`` and crop, as listed in the label's attributes
(``ctlabel.lesions``). The reference is a binary label of the same case (e.g. the true
tumour mask), cut to the same crop. Figures, per lesion and per case (pixels of all its
lesions' crops pooled):

* ``dice_05``, ``iou_05``: alpha >= 0.5 against the reference;
* ``dice``, ``iou``, ``acc``: SoftGAN's figures (Wang et al., section 4 "Evaluation metrics":
  DICE = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), ACC = (TP + TN) / (TP + TN + FP + FN)),
  with the soft mask binarised at 128 of 255 (section 4.1: "binarize the soft masks with a
  threshold of 128"), i.e. alpha * 255 >= 128;
* ``auc``: the area under the ROC curve of alpha against the reference (section 4), computed
  exactly as the Mann-Whitney statistic (ties count one half);
* ``ellipse_dice``: the RECIST ellipse's Dice against the reference (the baseline a RECIST
  soft mask must beat), when the lesion was labelled from RECIST axes.

:func:`evaluate_store` returns an :class:`Evaluation`; :func:`ctlabel.evaluate_page.write_evaluation`
writes its CSV, JSON and HTML page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ctlabel.config import ATTRIBUTE_KEY
from ctlabel.errors import LabelInputError
from ctlabel.recist_check import ellipse_mask
from ctlabel.trimap import Recist
from ctprep.store import SliceStore

PAPER_THRESHOLD = 128 / 255  # SoftGAN section 4.1: soft masks binarised at 128 (of 255)
FIGURES = ("dice_05", "iou_05", "dice", "iou", "acc", "auc", "ellipse_dice")


def _overlap(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    p, t = predicted.astype(bool).ravel(), truth.astype(bool).ravel()
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, p.size - tp - fp - fn


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """2TP / (2TP + FP + FN); 1.0 when both are empty."""
    tp, fp, fn, _ = _overlap(predicted, truth)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """TP / (TP + FP + FN); 1.0 when both are empty."""
    tp, fp, fn, _ = _overlap(predicted, truth)
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``truth``: P(score of a positive > score of a negative), ties 1/2; nan if one class."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(truth).astype(bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def soft_figures(alpha: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The figures of the module docstring (without the ellipse) for one soft mask against one binary truth."""
    alpha = np.asarray(alpha, dtype=np.float64)
    hard = alpha >= 0.5
    paper = alpha * 255 >= 128  # the stored float alpha read as the paper's 8-bit soft mask
    tp, fp, fn, tn = _overlap(paper, truth)
    return {"dice_05": dice(hard, truth), "iou_05": iou(hard, truth), "dice": dice(paper, truth),
            "iou": iou(paper, truth), "acc": (tp + tn) / max(tp + fp + fn + tn, 1), "auc": auc(alpha, truth)}


@dataclass(frozen=True, kw_only=True)
class LesionScore:
    """One lesion's figures, and what the HTML panels show (crop image, trimap, alpha, reference)."""

    case_id: str
    lesion_id: str
    z: int
    path: str
    figures: dict[str, float]
    panels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    recist: Recist | None = None  # crop coordinates

    def row(self) -> dict:
        return {"case_id": self.case_id, "lesion_id": self.lesion_id, "z": self.z, "path": self.path,
                **{k: _rounded(self.figures.get(k, math.nan)) for k in FIGURES}}


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Per lesion and per case figures of one soft label against one reference label."""

    store: str
    label: str
    reference: str
    lesions: tuple[LesionScore, ...]
    cases: tuple[dict, ...]
    skipped: tuple[str, ...] = ()

    def mean(self, figure: str) -> float:
        values = [s.figures[figure] for s in self.lesions if not math.isnan(s.figures.get(figure, math.nan))]
        return float(np.mean(values)) if values else math.nan

    def worst(self, count: int) -> list[LesionScore]:
        return sorted(self.lesions, key=lambda s: s.figures["dice_05"])[:count]

    def to_dict(self) -> dict:
        return {"store": self.store, "label": self.label, "reference": self.reference,
                "mean": {k: _rounded(self.mean(k)) for k in FIGURES},
                "cases": list(self.cases), "lesions": [s.row() for s in self.lesions], "skipped": list(self.skipped)}

    def lines(self) -> list[str]:
        mean = {k: self.mean(k) for k in FIGURES}
        lines = [f"{self.label} vs {self.reference}: {len(self.lesions)} lesions in {len(self.cases)} cases"
                 f"{f', {len(self.skipped)} skipped' if self.skipped else ''}",
                 f"  mean per lesion: Dice@0.5 {mean['dice_05']:.3f}, IoU@0.5 {mean['iou_05']:.3f}; "
                 f"paper (128/255): Dice {mean['dice']:.3f}, IoU {mean['iou']:.3f}, ACC {mean['acc']:.3f}, "
                 f"AUC {mean['auc']:.3f}; RECIST ellipse Dice {mean['ellipse_dice']:.3f}"]
        lines += [f"  skipped {reason}" for reason in self.skipped]
        return lines


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _lesion_score(case_id: str, entry: dict, soft: np.ndarray, truth: np.ndarray, image: np.ndarray,
                  trimap: np.ndarray | None) -> LesionScore:
    z = int(entry["z"])
    y0, y1, x0, x1 = (int(v) for v in entry["crop"])
    alpha, ref = soft[z, y0:y1, x0:x1], truth[z, y0:y1, x0:x1] != 0
    figures = soft_figures(alpha, ref)
    recist = None
    if entry.get("recist"):
        recist = Recist.from_dict(entry["recist"]).shifted(x0, y0)
        figures["ellipse_dice"] = dice(ellipse_mask(ref.shape, recist), ref)
    else:
        figures["ellipse_dice"] = math.nan
    panels = {"image": image[z, 0, y0:y1, x0:x1], "alpha": alpha, "reference": ref}
    if trimap is not None:
        panels["trimap"] = trimap[z, y0:y1, x0:x1]
    return LesionScore(case_id=case_id, lesion_id=str(entry["lesion_id"]), z=z, path=entry.get("path", ""),
                       figures=figures, panels=panels, recist=recist)


def _case_row(case_id: str, scores: Sequence[LesionScore]) -> dict:
    alphas = np.concatenate([s.panels["alpha"].ravel() for s in scores])
    refs = np.concatenate([s.panels["reference"].ravel() for s in scores])
    figures = soft_figures(alphas, refs)
    ellipses = [s.figures["ellipse_dice"] for s in scores if not math.isnan(s.figures["ellipse_dice"])]
    figures["ellipse_dice"] = float(np.mean(ellipses)) if ellipses else math.nan
    return {"case_id": case_id, "lesions": len(scores), **{k: _rounded(v) for k, v in figures.items()}}


def evaluate_store(store_path: str, label: str, reference: str,
                   cases: Sequence[str] | None = None) -> Evaluation:
    """Score ``label`` (a soft label) against ``reference`` (a binary label) in every case having both."""
    store = SliceStore.open(store_path)
    lesions, rows, skipped = [], [], []
    for case_id in cases or store.case_ids():
        names = store.label_names(case_id)
        missing = [n for n in (label, reference) if n not in names]
        if missing:
            skipped.append(f"case {case_id}: no label {missing[0]!r}")
            continue
        made = store.label_attributes(case_id, label).get(ATTRIBUTE_KEY)
        if not made or made.get("kind") != "soft":
            raise LabelInputError(f"{store_path}: {label!r} of case {case_id} is not a ctlabel soft label")
        trimap_name = made.get("trimap")
        wanted = [label, reference] + ([trimap_name] if trimap_name in names else [])
        data = store.read_case(case_id, labels=wanted)
        done = [e for e in made.get("lesions", []) if e.get("status") == "done" and e.get("crop")]
        scores = [_lesion_score(case_id, e, data.labels[label], data.labels[reference], data.image,
                                data.labels.get(trimap_name)) for e in done]
        if scores:
            lesions += scores
            rows.append(_case_row(case_id, scores))
    return Evaluation(store=str(store_path), label=label, reference=reference, lesions=tuple(lesions),
                      cases=tuple(rows), skipped=tuple(skipped))
