"""The seed papers' metric protocols: each paper's numbers, computed the paper's way.

``ctseg evaluate --protocol NAME`` scores a run's stored predictions as one paper did and
writes ``eval/<split>/protocol_<NAME>.csv`` (its rows) and ``protocol_<NAME>.json`` (its
summary, the paper's reported figures next to it), beside the standard per-case report of
ctseg.evaluate (docs/metrics.md, "Paper protocols"). The metric definitions are
ctseg.metrics'; a protocol only fixes the unit (slice or case), the threshold, which
slices count and how the rows are summarised:

========== ========= ============================== ==================================================
protocol   unit      threshold                      metrics (summary)
========== ========= ============================== ==================================================
ctumorgan  slice     probability **> 0.1**          Dice, Jaccard, precision, recall, specificity over
                                                    tumour slices (mean); F1 = 2PR/(P+R) of the *mean*
                                                    precision and recall (CTumorGAN Sec. 2.3.3, Eqs.
                                                    9-14; Tables 2 and 3 check out this way)
segan      case      the run's                      Dice (Eq. 14), precision, sensitivity per 3D case
                                                    (mean; the BRATS online evaluation, SegAN Sec. 3)
crgan      case      the run's                      Dice, VOE %, RVD %, ASD mm, MSD mm per 3D case (mean;
                                                    the LiTS measures of the refinement GAN, Table 5)
lgan       slice     the run's                      IoU (Eq. 12), symmetric Hausdorff in **pixels**
                                                    (Eq. 13) per slice with lung, mean and median
                                                    (LGAN Sec. 4.3)
casgan     slice     soft output >= 128/255;        Dice, IoU, ACC, AUC per lesion slice (mean; CasGAN
                     softened labels >= 250/255     Sec. 4: "binarize ... with 128"; "close to 255")
========== ========= ============================== ==================================================

Empty masks follow docs/metrics.md (one empty: distances inf, left out of means and
medians and counted in ``n_empty``). numpy and ctseg.metrics only: no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ctprep.store import SliceStore
from ctseg import metrics as m
from ctseg.errors import EvaluationError
from lkbase.atomic import write_text_atomic

CASGAN_SOFT_THRESHOLD = 128 / 255  # CasGAN Sec. 4.1: "binarize the soft masks with a threshold of 128"
CASGAN_SOFTENED_THRESHOLD = 250 / 255  # Sec. 3.3 "close to 255": the paper gives no number; our choice
CTUMORGAN_THRESHOLD = 0.1  # CTumorGAN Sec. 2.3.3: "larger than 0.1"


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """One paper's way of scoring: per-case rows from (probabilities, truth, spacing), then a summary."""

    name: str
    paper: str
    unit: str  # "slice" or "case"
    columns: tuple[str, ...]
    rows: Callable[[np.ndarray, np.ndarray, tuple, float, str], list[dict]]
    summary: Callable[[list[dict]], dict]
    reported: dict = field(default_factory=dict)  # the paper's figures, for the side-by-side

    def __post_init__(self) -> None:
        if self.unit not in ("slice", "case"):
            raise ValueError(f"Protocol {self.name}: unit must be 'slice' or 'case', found {self.unit!r}")


# ---- small rules ------------------------------------------------------------------------------
def f1_of_means(precision: float, recall: float) -> float:
    """CTumorGAN's F1 (Eq. 14): the harmonic mean of the *mean* precision and recall (NaN when both 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan


def _mean(rows: Sequence[dict], key: str) -> float:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return float(np.mean(values)) if values else math.nan


def _median(rows: Sequence[dict], key: str) -> float:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return float(np.median(values)) if values else math.nan


def _n_empty(rows: Sequence[dict], key: str) -> int:
    return sum(1 for r in rows if not math.isfinite(r[key]))


def _truth(values: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return values >= threshold if values.dtype.kind == "f" else values != 0


def _pred(values: np.ndarray, threshold: float, *, strict: bool = False) -> np.ndarray:
    if values.dtype.kind != "f":
        return values != 0
    return values > threshold if strict else values >= threshold


# ---- CTumorGAN --------------------------------------------------------------------------------
def ctumorgan_rows(prob, truth, spacing, threshold, truth_label) -> list[dict]:
    """Per tumour slice (truth not empty): the overlap measures of Eqs. 9-13 at probability > 0.1."""
    pred, mask = _pred(prob, CTUMORGAN_THRESHOLD, strict=True), _truth(truth)
    c = m.confusion_per_slice(pred, mask)
    overlaps = m.overlap_metrics(c)
    return [{"z": z, **{k: float(overlaps[k][z]) for k in ("dice", "jaccard", "precision", "recall", "specificity")}}
            for z in range(pred.shape[0]) if c.truth_voxels[z] > 0]


def ctumorgan_summary(rows: list[dict]) -> dict:
    means = {k: _mean(rows, k) for k in ("dice", "jaccard", "precision", "recall", "specificity")}
    return {**means, "f1": f1_of_means(means["precision"], means["recall"]), "slices": len(rows)}


# ---- SegAN ------------------------------------------------------------------------------------
def segan_rows(prob, truth, spacing, threshold, truth_label) -> list[dict]:
    """One row per 3D case: Dice (Eq. 14), precision, sensitivity (the BRATS evaluation)."""
    c = m.confusion(_pred(prob, threshold), _truth(truth))
    return [{"dice": float(m.dice(c)), "precision": float(m.precision(c)), "sensitivity": float(m.recall(c))}]


def segan_summary(rows: list[dict]) -> dict:
    return {**{k: _mean(rows, k) for k in ("dice", "precision", "sensitivity")}, "cases": len(rows)}


# ---- refinement GAN (crgan) -------------------------------------------------------------------
def crgan_rows(prob, truth, spacing, threshold, truth_label) -> list[dict]:
    """One row per 3D case: Dice, VOE and RVD in %, ASD and MSD in mm (the LiTS measures, Table 5).

    ``prob``/``truth`` are the case on its full slice grid (stored slices at their z)."""
    pred, mask = _pred(prob, threshold), _truth(truth)
    c = m.confusion(pred, mask)
    d = m.surface_distance_metrics(pred, mask, spacing)
    return [{"dice": float(m.dice(c)), "voe": 100 * float(m.voe(c)), "rvd": 100 * float(m.rvd(c)),
             "asd": d["assd"], "msd": d["mssd"]}]


def crgan_summary(rows: list[dict]) -> dict:
    keys = ("dice", "voe", "rvd", "asd", "msd")
    return {**{k: _mean(rows, k) for k in keys}, **{f"n_empty_{k}": _n_empty(rows, k) for k in ("asd", "msd")},
            "cases": len(rows), "units": {"voe": "%", "rvd": "%", "asd": "mm", "msd": "mm"}}


# ---- LGAN -------------------------------------------------------------------------------------
def lgan_rows(prob, truth, spacing, threshold, truth_label) -> list[dict]:
    """Per slice with lung in the truth or the prediction: IoU (Eq. 12) and the symmetric
    Hausdorff distance between the two pixel sets (Eq. 13) in pixels (unit spacing)."""
    pred, mask = _pred(prob, threshold), _truth(truth)
    c = m.confusion_per_slice(pred, mask)
    iou = m.jaccard(c)
    return [{"z": z, "iou": float(iou[z]), "hausdorff": float(m.hausdorff(pred[z], mask[z], (1.0, 1.0)))}
            for z in range(pred.shape[0]) if c.truth_voxels[z] > 0 or c.pred_voxels[z] > 0]


def lgan_summary(rows: list[dict]) -> dict:
    return {"iou_mean": _mean(rows, "iou"), "hausdorff_mean": _mean(rows, "hausdorff"),
            "iou_median": _median(rows, "iou"), "hausdorff_median": _median(rows, "hausdorff"),
            "n_empty_hausdorff": _n_empty(rows, "hausdorff"), "slices": len(rows), "units": {"hausdorff": "pixels"}}


# ---- CasGAN / SoftGAN -------------------------------------------------------------------------
def casgan_threshold(truth_label: str) -> float:
    """128/255 for soft masks; 'close to 255' (250/255, our number) for softened labels (Sec. 3.3)."""
    from ctprep.store.layout import softened_label

    return CASGAN_SOFTENED_THRESHOLD if truth_label.startswith(softened_label("")) else CASGAN_SOFT_THRESHOLD


def casgan_rows(prob, truth, spacing, threshold, truth_label) -> list[dict]:
    """Per lesion slice: Dice, IoU, ACC of the binarised soft output, AUC of the soft output."""
    level = casgan_threshold(truth_label)
    pred, mask = _pred(prob, level), _truth(truth, level)
    c = m.confusion_per_slice(pred, mask)
    overlaps = m.overlap_metrics(c)
    rows = []
    for z in range(pred.shape[0]):
        if c.truth_voxels[z] == 0:
            continue
        scores = prob[z] if prob.dtype.kind == "f" and mask[z].sum() < mask[z].size else None
        rows.append({"z": z, "dice": float(overlaps["dice"][z]), "iou": float(overlaps["jaccard"][z]),
                     "acc": float(overlaps["accuracy"][z]),
                     "auc": m.auc(scores, mask[z]) if scores is not None else math.nan})
    return rows


def casgan_summary(rows: list[dict]) -> dict:
    return {**{k: _mean(rows, k) for k in ("dice", "iou", "acc", "auc")}, "slices": len(rows)}


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol(name="ctumorgan", paper="CTumorGAN Sec. 2.3.3, Eqs. 9-14, Tables 2-3", unit="slice",
             columns=("case", "z", "dice", "jaccard", "precision", "recall", "specificity"),
             rows=ctumorgan_rows, summary=ctumorgan_summary,
             reported={"NSCLC-Radiomics (Table 2, Ours)": {"dice": 0.7108, "jaccard": 0.6142, "precision": 0.7734,
                                                           "recall": 0.7042, "specificity": 0.9992, "f1": 0.7371},
                       "KiTS19 (Sec. 3.2)": {"dice": 0.8388, "jaccard": 0.7716, "precision": 0.8662,
                                             "recall": 0.8459, "specificity": 0.9993, "f1": 0.8559},
                       "LiTS (Table 3, Ours)": {"dice": 0.8019, "jaccard": 0.7146, "precision": 0.8381,
                                                "recall": 0.7965, "specificity": 0.9994, "f1": 0.8168}}),
    Protocol(name="segan", paper="SegAN Sec. 3, Eq. 14 (BRATS: Dice, precision, sensitivity)", unit="case",
             columns=("case", "dice", "precision", "sensitivity"), rows=segan_rows, summary=segan_summary),
    Protocol(name="crgan", paper="Refinement GAN Sec. 3.3, Table 5 (LiTS: VOE, RVD, ASD, MSD)", unit="case",
             columns=("case", "dice", "voe", "rvd", "asd", "msd"), rows=crgan_rows, summary=crgan_summary,
             reported={"LiTS (Table 5, cGAN+Refinement)": {"voe": 14, "rvd": -6, "asd": 6.4, "msd": 40.1},
                       "LiTS lesion (Table 4, cGAN+Refinement)": {"dice": 0.83, "asd": 1.6}}),
    Protocol(name="lgan", paper="LGAN Sec. 4.3, Eqs. 12-13, Table 2", unit="slice",
             columns=("case", "z", "iou", "hausdorff"), rows=lgan_rows, summary=lgan_summary,
             reported={"LIDC-IDRI (Table 2, Baseline U-net)": {"iou_mean": 0.625, "hausdorff_mean": 6.106,
                                                                "iou_median": 0.758, "hausdorff_median": 5.831},
                       "LIDC-IDRI (Table 2, LGAN-Basic)": {"iou_mean": 0.902, "hausdorff_mean": 3.367,
                                                           "iou_median": 0.966, "hausdorff_median": 3.162}}),
    Protocol(name="casgan", paper="CasGAN Sec. 3.3 and 4 (Dice, IoU, ACC, AUC; 128 / 'close to 255')",
             unit="slice", columns=("case", "z", "dice", "iou", "acc", "auc"), rows=casgan_rows,
             summary=casgan_summary,
             reported={"LNSM (Table 1, CasGAN-soft)": {"dice": 0.919, "iou": 0.864, "acc": 0.994},
                       "LIDC (Table 3, CasGAN-soft)": {"dice": 0.931}}),
)}


def check_name(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {name!r} (known: {', '.join(sorted(PROTOCOLS))})")
    return PROTOCOLS[name]


# ---- a store ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ProtocolResult:
    """One protocol's rows and summary over a set of cases."""

    protocol: Protocol
    rows: tuple[dict, ...]
    summary: dict

    def lines(self) -> list[str]:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in self.summary.items() if isinstance(v, float))
        lines = [f"  protocol {self.protocol.name} ({self.protocol.paper}): {shown}"]
        for where, figures in self.protocol.reported.items():
            pairs = ", ".join(f"{k} {v:g} vs {self.summary.get(k, math.nan):.4g}" for k, v in figures.items())
            lines.append(f"    paper {where} vs measured: {pairs}")
        return lines


def _case_arrays(store: SliceStore, case_id: str, prediction_label: str, truth_label: str, unit: str):
    prob, truth = store.read_label(case_id, prediction_label), store.read_label(case_id, truth_label)
    record = store.record(case_id)
    if unit == "case":  # 3D distances need the stored slices at their true z
        from ctprep.commands.export import full_grid

        prob, truth = full_grid(prob, record)[0], full_grid(truth, record)[0]
    return prob, truth, tuple(record.geometry.spacing)


def run_protocol(name: str, store: SliceStore | str | Path, cases: Sequence[tuple[str, str]],
                 prediction_label: str, threshold: float) -> ProtocolResult:
    """Score ``prediction_label`` against each ``(case, truth_label)`` the way protocol ``name`` does."""
    protocol = check_name(name)
    if not isinstance(store, SliceStore):
        store = SliceStore.open(store)
    rows = []
    for case_id, truth_label in cases:
        prob, truth, spacing = _case_arrays(store, case_id, prediction_label, truth_label, protocol.unit)
        rows += [{"case": case_id, **row} for row in protocol.rows(prob, truth, spacing, threshold, truth_label)]
    return ProtocolResult(protocol=protocol, rows=tuple(rows), summary=protocol.summary(rows))


def write_protocol(result: ProtocolResult, folder: str | Path) -> tuple[Path, Path]:
    """``protocol_<name>.csv`` (rows) and ``protocol_<name>.json`` (summary, paper figures) in ``folder``."""
    from ctseg.evaluate import _csv_text, _json_ready

    folder = Path(folder)
    name = result.protocol.name
    summary = {"protocol": name, "paper": result.protocol.paper, "unit": result.protocol.unit,
               "summary": result.summary, "reported": result.protocol.reported}
    return (write_text_atomic(folder / f"protocol_{name}.csv", _csv_text(result.rows, result.protocol.columns)),
            write_text_atomic(folder / f"protocol_{name}.json",
                              json.dumps(_json_ready(summary), indent=1, allow_nan=False) + "\n"))


def protocol_for_evaluation(name: str, evaluation, folder: str | Path) -> ProtocolResult:
    """Run protocol ``name`` on the cases of a ctseg.evaluate.Evaluation and write it next to its report."""
    cases = [(row["case"], row["truth_label"]) for row in evaluation.per_case]
    result = run_protocol(name, evaluation.store, cases, evaluation.prediction_label, evaluation.threshold)
    write_protocol(result, folder)
    return result
