"""Segmentation metrics: overlap, volume, surface distance (mm) and AUC, per slice, per case and pooled.

numpy + scipy only (no torch), so predictions can be scored anywhere. Masks are
boolean-like arrays of equal shape; ``spacing`` gives the voxel size in mm along
each array axis (``(z, y, x)`` for a stored case, ``(y, x)`` for a slice).
docs/metrics.md has the definitions with references.

Definitions (P = prediction voxels, T = truth voxels; TP, FP, FN, TN counts)
---------------------------------------------------------------------------
dice = f1 = 2TP / (2TP + FP + FN)        jaccard = TP / (TP + FP + FN)
precision = TP / (TP + FP)               recall (sensitivity) = TP / (TP + FN)
specificity = TN / (TN + FP)             accuracy = (TP + TN) / all voxels
voe = 1 - jaccard                        rvd = (|P| - |T|) / |T|  (> 0: over-segmentation)
auc: area under the ROC curve of soft scores against the truth (Mann-Whitney
     statistic, ties counted one half).

Distances, in mm. The *surface* of a mask is its voxels with at least one
face-neighbour (6-connectivity in 3D, 4 in 2D) outside the mask; the distance
between voxels is the Euclidean distance of their centres with ``spacing``.

* ``hausdorff``: the Hausdorff distance between the two voxel *sets*,
  max(max_p d(p, T), max_t d(t, P)) (ITK's HausdorffDistanceImageFilter).
* ``mssd``: maximum symmetric surface distance (Heimann et al. 2009, SLIVER07;
  LiTS, Bilic et al. 2023): the same maximum between the two *surfaces*
  (medpy's ``hd``, MONAI's Hausdorff). Usually equal to ``hausdorff``; they
  differ when the voxel of one mask farthest from the other is not on its
  surface, or when a surface lies inside the other mask (nested masks).
* ``hd95``: the 95th percentile of the pooled symmetric surface distances (both
  directions together, as medpy's ``hd95``; linear interpolation).
* ``assd``: average symmetric surface distance, the mean of all surface
  distances of both directions pooled (Heimann 2009, LiTS):
  (sum_{s in S(P)} d(s, S(T)) + sum_{s in S(T)} d(s, S(P))) / (|S(P)| + |S(T)|).

Empty masks (the policy)
------------------------
* Both empty: perfect agreement. dice, jaccard, precision, recall, f1 = 1;
  voe, rvd = 0; every distance = 0.
* Exactly one empty: dice, jaccard, f1 = 0, voe = 1; a 0/0 precision or recall
  is 0 (the model failed on this case, sklearn's ``zero_division=0``);
  distances are ``inf`` (the distance to an empty set); rvd is ``inf`` when the
  truth is empty (and -1 when only the prediction is).
* ``specificity`` is NaN when the truth has no background; ``auc`` is NaN when
  the truth is all one class or no scores were given.
* :func:`summarise` leaves non-finite values (inf, NaN) out of mean, std and
  median and counts them in ``n_empty``, so they are reported, never hidden.

Stored labels
-------------
:func:`binarise` reads a stored prediction (float probabilities are foreground at
``>= threshold``; uint8 masks are non-zero), :func:`truth_mask` a stored truth
(uint8 non-zero, a float soft label ``>= 0.5``): the one rule for ctseg.evaluate and
ctseg.report.

Levels
------
per case (3D, :func:`case_metrics`), per slice (2D with in-plane spacing,
:func:`slice_metrics`), and global (LiTS-style, :class:`PooledCounts`): the
confusion counts of all voxels of all cases pooled before taking the ratios
(distances have no pooled form; the global AUC pools scores binned to 2^20 levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from lkbase.errors import ParameterError

Spacing = Sequence[float]

OVERLAP_KEYS = ("dice", "jaccard", "precision", "recall", "specificity", "f1", "accuracy", "voe", "rvd")
DISTANCE_KEYS = ("hausdorff", "hd95", "assd", "mssd")
METRIC_KEYS = OVERLAP_KEYS + ("auc",) + DISTANCE_KEYS
# Higher is better for these; lower for the rest (distances, voe, |rvd|).
HIGHER_IS_BETTER = ("dice", "jaccard", "precision", "recall", "specificity", "f1", "accuracy", "auc")

AUC_BINS = 1 << 20  # score levels of the pooled (global) AUC histogram
_BLOCK = 1 << 22  # voxels handled at once by the AUC code (bounds its temporary arrays)


# ---- stored labels as masks --------------------------------------------------------------------
def binarise(values: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask, scores): float labels are probabilities (>= threshold is foreground), uint8 are masks."""
    if values.dtype.kind == "f":
        return values >= threshold, values
    return values != 0, None


def truth_mask(values: np.ndarray) -> np.ndarray:
    """A stored truth label as a mask: uint8 non-zero, or a float (soft) label >= 0.5."""
    return values >= 0.5 if values.dtype.kind == "f" else values != 0


# ---- confusion counts -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Confusion:
    """Voxel counts of a binary comparison; fields are ints, or arrays for per-slice counts."""

    tp: int | np.ndarray
    fp: int | np.ndarray
    fn: int | np.ndarray
    tn: int | np.ndarray

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(tp=self.tp + other.tp, fp=self.fp + other.fp, fn=self.fn + other.fn, tn=self.tn + other.tn)

    @property
    def pred_voxels(self):
        return self.tp + self.fp

    @property
    def truth_voxels(self):
        return self.tp + self.fn


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _binary(pred), _binary(truth)
    if pred.shape != truth.shape:
        raise ParameterError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def confusion(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    """TP, FP, FN and TN of two masks of the same shape (non-zero = foreground)."""
    pred, truth = _check_pair(pred, truth)
    tp = int(np.count_nonzero(pred & truth))
    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    return Confusion(tp=tp, fp=n_pred - tp, fn=n_truth - tp, tn=pred.size - n_pred - n_truth + tp)


def confusion_per_slice(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    """Confusion counts of every slice along axis 0 (arrays of length ``shape[0]``)."""
    pred, truth = _check_pair(pred, truth)
    axes = tuple(range(1, pred.ndim))
    tp = np.count_nonzero(pred & truth, axis=axes).astype(np.int64)
    n_pred = np.count_nonzero(pred, axis=axes).astype(np.int64)
    n_truth = np.count_nonzero(truth, axis=axes).astype(np.int64)
    per_slice = int(np.prod(pred.shape[1:]))
    return Confusion(tp=tp, fp=n_pred - tp, fn=n_truth - tp, tn=per_slice - n_pred - n_truth + tp)


# ---- ratios from counts (scalars or per-slice arrays) -----------------------------------------
def _ratio(num, den, both_empty):
    """num / den, with 0/0 -> 1 where ``both_empty`` and 0 elsewhere (the policy above)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(both_empty, 1.0, 0.0))
    return float(value) if value.ndim == 0 else value


def _both_empty(c: Confusion):
    return (np.asarray(c.tp) + np.asarray(c.fp) + np.asarray(c.fn)) == 0


def dice(c: Confusion):
    """Dice = 2TP / (2TP + FP + FN); 1 when both masks are empty."""
    return _ratio(2 * np.asarray(c.tp), 2 * np.asarray(c.tp) + c.fp + c.fn, _both_empty(c))


def jaccard(c: Confusion):
    """Jaccard (IoU) = TP / (TP + FP + FN); 1 when both masks are empty."""
    return _ratio(c.tp, np.asarray(c.tp) + c.fp + c.fn, _both_empty(c))


def precision(c: Confusion):
    """TP / (TP + FP); 1 when both are empty, 0 for an empty prediction of a non-empty truth."""
    return _ratio(c.tp, np.asarray(c.tp) + c.fp, _both_empty(c))


def recall(c: Confusion):
    """Sensitivity TP / (TP + FN); 1 when both are empty, 0 when only the truth is."""
    return _ratio(c.tp, np.asarray(c.tp) + c.fn, _both_empty(c))


def specificity(c: Confusion):
    """TN / (TN + FP); NaN when the truth has no background voxel."""
    tn, fp = np.asarray(c.tn, dtype=np.float64), np.asarray(c.fp, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(tn + fp > 0, tn / np.where(tn + fp > 0, tn + fp, 1), np.nan)
    return float(value) if value.ndim == 0 else value


def f1(c: Confusion):
    """F1 = harmonic mean of precision and recall, which for masks equals Dice."""
    return dice(c)


def accuracy(c: Confusion):
    """(TP + TN) / all voxels."""
    total = np.asarray(c.tp) + c.fp + c.fn + c.tn
    return _ratio(np.asarray(c.tp) + c.tn, total, True)


def voe(c: Confusion):
    """Volumetric overlap error = 1 - Jaccard."""
    return 1.0 - jaccard(c)


def rvd(c: Confusion):
    """Relative volume difference (|P| - |T|) / |T|: > 0 over-, < 0 under-segmentation.

    0 when both are empty, inf when only the truth is.
    """
    p = np.asarray(c.pred_voxels, dtype=np.float64)
    t = np.asarray(c.truth_voxels, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(t > 0, (p - t) / np.where(t > 0, t, 1), np.where(p > 0, np.inf, 0.0))
    return float(value) if value.ndim == 0 else value


def overlap_metrics(c: Confusion) -> dict:
    """Every count-based metric of :data:`OVERLAP_KEYS` from one set of counts."""
    return {"dice": dice(c), "jaccard": jaccard(c), "precision": precision(c), "recall": recall(c),
            "specificity": specificity(c), "f1": f1(c), "accuracy": accuracy(c), "voe": voe(c), "rvd": rvd(c)}


# ---- AUC --------------------------------------------------------------------------------------
def auc(scores: np.ndarray, truth: np.ndarray, block: int = _BLOCK) -> float:
    """Area under the ROC curve of soft ``scores`` against a binary ``truth``; NaN if truth is one class.

    The Mann-Whitney statistic P(score_pos > score_neg) + P(equal) / 2, exact with ties.
    Written here instead of sklearn (not a dependency): the smaller class is sorted and
    the larger one is located in it by binary search, block by block, so a 512x512x500
    volume needs no sort of all its voxels and bounded memory.
    """
    scores = np.asarray(scores)
    truth = _binary(truth)
    if scores.shape != truth.shape:
        raise ParameterError(f"scores shape {scores.shape} differs from truth shape {truth.shape}")
    scores, truth = scores.reshape(-1), truth.reshape(-1)
    n_pos = int(np.count_nonzero(truth))
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    small_is_pos = n_pos <= n_neg
    small = np.sort(scores[truth] if small_is_pos else scores[~truth])
    wins = 0.0  # pairs (small, large) with small > large, ties counted one half
    for start in range(0, truth.size, block):
        part_truth = truth[start:start + block]
        large = scores[start:start + block][~part_truth if small_is_pos else part_truth]
        # Values outside the small class's range need no search (most background scores are ~0).
        under = large < small[0]
        inside = large[~under & (large <= small[-1])]
        below = np.searchsorted(small, inside, side="left")  # small values < each large value
        upto = np.searchsorted(small, inside, side="right")
        wins += float(len(small)) * float(np.count_nonzero(under))
        wins += float(len(small) * len(inside) - upto.sum()) + 0.5 * float((upto - below).sum())
    pos_beats_neg = wins if small_is_pos else float(n_pos) * n_neg - wins
    return pos_beats_neg / (float(n_pos) * n_neg)


def _auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


# ---- surfaces and distances -------------------------------------------------------------------
def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (outside the array counts as outside)."""
    mask = _binary(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus one empty voxel each side.

    Exact for every distance here: all surface and set voxels lie inside, and the
    padding keeps the array edge outside the masks as it was.
    """
    union = a | b
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(union))
    return np.pad(a[box], 1), np.pad(b[box], 1)


def _distance_to(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of ``mask`` (0 on it)."""
    return ndimage.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing))


def _check_spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ParameterError(f"spacing must be {ndim} positive mm values (one per array axis), found {spacing}")
    return values


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Directed distances (mm) from every surface voxel of ``a`` to the surface of ``b`` (both non-empty)."""
    a, b = _check_pair(a, b)
    spacing = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ParameterError("surface distances need two non-empty masks")
    a, b = _crop_pair(a, b)
    return _distance_to(surface(b), spacing)[surface(a)]


def directed_hausdorff(a: np.ndarray, b: np.ndarray, spacing: Spacing) -> float:
    """max over voxels of ``a`` of the distance (mm) to the nearest voxel of ``b`` (both non-empty)."""
    a, b = _check_pair(a, b)
    spacing = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ParameterError("directed Hausdorff distance needs two non-empty masks")
    a, b = _crop_pair(a, b)
    return float(_distance_to(b, spacing)[a].max())


def _empty_distances(pred: np.ndarray, truth: np.ndarray) -> dict | None:
    """The policy's distances when a mask is empty, or None when both have voxels."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if has_pred and has_truth:
        return None
    value = 0.0 if not has_pred and not has_truth else math.inf
    return dict.fromkeys(DISTANCE_KEYS, value)


def hausdorff(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> float:
    """Hausdorff distance (mm) between the two voxel sets; 0 both empty, inf one empty."""
    pred, truth = _check_pair(pred, truth)
    empty = _empty_distances(pred, truth)
    if empty is not None:
        return empty["hausdorff"]
    return max(directed_hausdorff(pred, truth, spacing), directed_hausdorff(truth, pred, spacing))


def surface_distance_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> dict:
    """``hausdorff``, ``hd95``, ``assd`` and ``mssd`` in mm, with the empty-mask policy."""
    pred, truth = _check_pair(pred, truth)
    spacing = _check_spacing(spacing, pred.ndim)
    empty = _empty_distances(pred, truth)
    if empty is not None:
        return empty
    p, t = _crop_pair(pred, truth)
    to_truth, to_pred = _distance_to(t, spacing), _distance_to(p, spacing)  # set distances
    surf_p, surf_t = surface(p), surface(t)
    d_pt = _distance_to(surf_t, spacing)[surf_p]
    d_tp = _distance_to(surf_p, spacing)[surf_t]
    pooled = np.concatenate([d_pt, d_tp])
    return {
        "hausdorff": float(max(to_truth[p].max(), to_pred[t].max())),
        "hd95": float(np.percentile(pooled, 95)),
        "assd": float(pooled.mean()),
        "mssd": float(pooled.max()),
    }


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> float:
    """95th percentile (mm) of the pooled symmetric surface distances."""
    return surface_distance_metrics(pred, truth, spacing)["hd95"]


def assd(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> float:
    """Average symmetric surface distance (mm), both directions pooled."""
    return surface_distance_metrics(pred, truth, spacing)["assd"]


def mssd(pred: np.ndarray, truth: np.ndarray, spacing: Spacing) -> float:
    """Maximum symmetric surface distance (mm): the Hausdorff distance between the surfaces."""
    return surface_distance_metrics(pred, truth, spacing)["mssd"]


# ---- per case, per slice, pooled --------------------------------------------------------------
def empty_kind(pred_voxels: int, truth_voxels: int) -> str:
    """Which masks are empty: "none", "truth", "prediction" or "both"."""
    if pred_voxels and truth_voxels:
        return "none"
    if not pred_voxels and not truth_voxels:
        return "both"
    return "truth" if pred_voxels else "prediction"


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Spacing,
                 scores: np.ndarray | None = None) -> dict:
    """Every metric of one case (3D, or any n-D) as a dict; ``scores`` (soft output) adds the AUC.

    Also gives ``pred_voxels``, ``truth_voxels`` and ``empty`` (see :func:`empty_kind`).
    """
    pred, truth = _check_pair(pred, truth)
    c = confusion(pred, truth)
    row = {"pred_voxels": int(c.pred_voxels), "truth_voxels": int(c.truth_voxels),
           "empty": empty_kind(int(c.pred_voxels), int(c.truth_voxels))}
    row.update(overlap_metrics(c))
    row["auc"] = auc(scores, truth) if scores is not None else math.nan
    row.update(surface_distance_metrics(pred, truth, spacing))
    return row


def slice_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Spacing,
                  scores: np.ndarray | None = None) -> list[dict]:
    """:func:`case_metrics` of every slice along axis 0, with 2-D distances on in-plane ``spacing`` (y, x).

    ``spacing`` may also be the case's (z, y, x); its last two values are used.
    Counts are taken for all slices at once; distances only where both masks have voxels.
    """
    pred, truth = _check_pair(pred, truth)
    in_plane = _check_spacing(tuple(spacing)[-(pred.ndim - 1):], pred.ndim - 1)
    c = confusion_per_slice(pred, truth)
    overlaps = overlap_metrics(c)
    rows = []
    for z in range(pred.shape[0]):
        n_pred, n_truth = int(c.pred_voxels[z]), int(c.truth_voxels[z])
        row = {"z": z, "pred_voxels": n_pred, "truth_voxels": n_truth, "empty": empty_kind(n_pred, n_truth)}
        row.update({key: float(values[z]) for key, values in overlaps.items()})
        row["auc"] = auc(scores[z], truth[z]) if scores is not None and 0 < n_truth < truth[z].size else math.nan
        row.update(surface_distance_metrics(pred[z], truth[z], in_plane))
        rows.append(row)
    return rows


@dataclass(kw_only=True)
class PooledCounts:
    """LiTS-style global metrics: voxel counts (and score histograms) pooled over cases.

    ``add`` each case; ``metrics()`` takes the ratios of the sums (so large cases
    weigh more, unlike the mean of per-case values). The global AUC bins scores in
    [0, 1] into :data:`AUC_BINS` levels (pairs in one bin count one half).
    """

    counts: Confusion = field(default_factory=lambda: Confusion(tp=0, fp=0, fn=0, tn=0))
    pos_hist: np.ndarray = field(default_factory=lambda: np.zeros(AUC_BINS, dtype=np.int64))
    neg_hist: np.ndarray = field(default_factory=lambda: np.zeros(AUC_BINS, dtype=np.int64))
    cases: int = 0
    scored: bool = False

    def add(self, pred: np.ndarray, truth: np.ndarray, scores: np.ndarray | None = None) -> None:
        pred, truth = _check_pair(pred, truth)
        self.counts = self.counts + confusion(pred, truth)
        self.cases += 1
        if scores is not None:
            scores = np.asarray(scores)
            if scores.shape != truth.shape:
                raise ParameterError(f"scores shape {scores.shape} differs from truth shape {truth.shape}")
            flat_scores, flat_truth = scores.reshape(-1), truth.reshape(-1)
            for start in range(0, flat_truth.size, _BLOCK):  # bounded memory on whole CT volumes
                # float32 holds 24 bits: every one of the 2^20 levels of a score in [0, 1] exactly
                part = flat_scores[start:start + _BLOCK].astype(np.float32) * np.float32(AUC_BINS - 1)
                bins = np.clip(np.rint(part), 0, AUC_BINS - 1).astype(np.int32)
                is_pos = flat_truth[start:start + _BLOCK]
                self.pos_hist += np.bincount(bins[is_pos], minlength=AUC_BINS)
                self.neg_hist += np.bincount(bins[~is_pos], minlength=AUC_BINS)
            self.scored = True

    def metrics(self) -> dict:
        c = self.counts
        row = {"cases": self.cases, "pred_voxels": int(c.pred_voxels), "truth_voxels": int(c.truth_voxels),
               "tp": int(c.tp), "fp": int(c.fp), "fn": int(c.fn), "tn": int(c.tn)}
        row.update(overlap_metrics(c))
        row["auc"] = _auc_from_histograms(self.pos_hist, self.neg_hist) if self.scored else math.nan
        return row


# ---- summaries --------------------------------------------------------------------------------
def summarise(rows: Iterable[Mapping], keys: Sequence[str] = METRIC_KEYS) -> dict:
    """Per metric: mean, std (population), median, min, max over finite values; ``n`` of them,
    ``n_empty`` left out (inf or NaN, see the empty-mask policy). Missing keys are skipped."""
    rows = list(rows)
    summary = {}
    for key in keys:
        values = np.asarray([float(r[key]) for r in rows if key in r], dtype=np.float64)
        finite = values[np.isfinite(values)]
        stats = {"mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
        if finite.size:
            stats = {"mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
                     "min": float(finite.min()), "max": float(finite.max())}
        summary[key] = {**stats, "n": int(finite.size), "n_empty": int(values.size - finite.size)}
    return summary


def empty_counts(rows: Iterable[Mapping]) -> dict:
    """How many rows had an empty truth, an empty prediction, both, or neither."""
    counts = dict.fromkeys(("none", "truth", "prediction", "both"), 0)
    for row in rows:
        counts[row["empty"]] += 1
    return counts
