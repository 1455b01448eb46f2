"""Scoring stored predictions against stored truth: per case (3D), per slice (2D) and global.

:func:`evaluate_store` reads a prediction label (``ctseg predict`` writes float32
probabilities ``pred_<run>``; they are binarised at ``threshold``, probability >=
threshold is foreground, as predict's ``pred_<run>_mask``) and a truth label for
each case, and computes ctseg.metrics with the case's spacing. :func:`evaluate_run`
finds a run's prediction labels and writes ``RUN_DIR/eval/<split>/``:

* ``per_case.csv`` / ``per_case.json``: one row per case (non-finite values are
  ``inf``/``nan`` in the CSV and ``null`` in the JSON; the ``empty`` column says why);
* ``per_slice.csv``: one row per stored slice (2D metrics, in-plane spacing);
* ``summary.json``: per-case and per-slice summaries (mean, std, median, n, n_empty),
  the global (pooled, LiTS-style) metrics, counts of empty masks, and the settings;
* ``report.html``: ctseg.report (tables, box plots, best/worst overlays).

Only the stored slices are scored (a store converted with ``--slices lesion``
holds lesion slices only); 3D distances place them at their true z positions.
numpy, scipy, PIL and OpenCV only: no torch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.store import SliceStore, WithPredictions
from ctprep.store.layout import PREDICTION_PREFIX, prediction_labels
from ctseg import metrics as m
from ctseg.errors import EvaluationError
from lkbase.atomic import write_text_atomic

CASE_COLUMNS = ("case", "split", "truth_label", "slices", "truth_voxels", "pred_voxels", "truth_ml", "pred_ml", "empty",
                *m.METRIC_KEYS, "overlay_z")
SLICE_COLUMNS = ("case", "z", "slice_index", "z_mm", "truth_voxels", "pred_voxels", "empty", *m.METRIC_KEYS)


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """The result of :func:`evaluate_store`: rows per case and per slice, pooled metrics and summaries."""

    prediction_label: str
    truth_label: str
    threshold: float
    per_case: tuple[dict, ...]
    per_slice: tuple[dict, ...]
    global_metrics: dict
    skipped: tuple[tuple[str, str], ...] = ()  # (case, reason)
    store: str = ""
    split: str = ""

    def summary(self) -> dict:
        """Everything summary.json holds (JSON-ready, non-finite values as null)."""
        scored_slices = [r for r in self.per_slice if r["empty"] != "both"]
        return _json_ready({
            "prediction_label": self.prediction_label, "truth_label": self.truth_label,
            "threshold": self.threshold, "store": self.store, "split": self.split,
            "cases": len(self.per_case), "skipped": [{"case": c, "reason": r} for c, r in self.skipped],
            "empty_cases": m.empty_counts(self.per_case),
            "per_case": m.summarise(self.per_case),
            "global": self.global_metrics,
            # slices where truth and prediction are both empty (Dice 1 by the policy) would swamp the
            # per-slice means, so they are counted, not averaged
            "per_slice": m.summarise(scored_slices),
            "slices": {"total": len(self.per_slice), "scored": len(scored_slices),
                       **{f"empty_{k}": v for k, v in m.empty_counts(self.per_slice).items()}},
            "units": {"distances": "mm", "volumes": "mL"},
            "policy": "docs/metrics.md: both empty -> overlap 1, distances 0; one empty -> Dice 0, distances inf "
                      "(left out of mean/std/median and counted in n_empty)",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def lines(self) -> list[str]:
        """A short human summary: per-case mean Dice etc. and the global Dice."""
        s = m.summarise(self.per_case)
        fmt = lambda key, unit="": (f"{key} {s[key]['mean']:.3f}{unit} ± {s[key]['std']:.3f}"  # noqa: E731
                                    + (f" ({s[key]['n_empty']} empty)" if s[key]["n_empty"] else ""))
        lines = [f"{self.prediction_label} vs {self.truth_label} (threshold {self.threshold:g}): "
                 f"{len(self.per_case)} cases, global Dice {self.global_metrics['dice']:.3f}",
                 "  per case: " + ", ".join([fmt("dice"), fmt("jaccard"), fmt("recall"), fmt("precision")]),
                 "  per case: " + ", ".join([fmt("hd95", " mm"), fmt("assd", " mm")])]
        lines += [f"  skipped {case}: {reason}" for case, reason in self.skipped]
        return lines


@dataclass(frozen=True, kw_only=True)
class EvaluationOutput:
    """An evaluation written to ``folder`` (see the module docstring for the files)."""

    evaluation: Evaluation
    folder: Path
    files: tuple[Path, ...] = field(default=())

    def lines(self) -> list[str]:
        return self.evaluation.lines() + [f"  wrote {self.folder}/ ({', '.join(p.name for p in self.files)})"]


# ---- reading one case -------------------------------------------------------------------------
def _on_grid(mask: np.ndarray, record) -> np.ndarray:
    """Stored rows at their true slice positions (slices not stored empty), for 3D distances."""
    from ctprep.commands.export import full_grid

    return full_grid(mask, record)[0]


def overlay_slice(pred: np.ndarray, truth: np.ndarray) -> int:
    """The stored row that best shows a case: most truth voxels, else most predicted voxels."""
    area = np.count_nonzero(truth, axis=(1, 2))
    if not area.any():
        area = np.count_nonzero(pred, axis=(1, 2))
    return int(np.argmax(area))


def case_row(store: SliceStore, case_id: str, prediction_label: str, truth_label: str,
             threshold: float) -> tuple[dict, list[dict], tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Per-case row, per-slice rows, and (pred, truth, scores) of one case."""
    record = store.record(case_id)
    pred, scores = m.binarise(store.read_label(case_id, prediction_label), threshold)
    truth = m.truth_mask(store.read_label(case_id, truth_label))
    spacing = record.geometry.spacing
    c = m.confusion(pred, truth)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    row = {"case": case_id, "split": record.split, "truth_label": truth_label, "slices": record.num_slices,
           "truth_voxels": int(c.truth_voxels), "pred_voxels": int(c.pred_voxels),
           "truth_ml": int(c.truth_voxels) * voxel_ml, "pred_ml": int(c.pred_voxels) * voxel_ml,
           "empty": m.empty_kind(int(c.pred_voxels), int(c.truth_voxels))}
    row.update(m.overlap_metrics(c))
    row["auc"] = m.auc(scores, truth) if scores is not None else math.nan
    row.update(m.surface_distance_metrics(_on_grid(pred, record), _on_grid(truth, record), spacing))
    row["overlay_z"] = overlay_slice(pred, truth)
    slices = []
    for srow in m.slice_metrics(pred, truth, spacing, scores):
        z = srow["z"]
        slices.append({"case": case_id, "z": z, "slice_index": record.slice_indices[z],
                       "z_mm": record.z_positions[z], **{k: v for k, v in srow.items() if k != "z"}})
    return row, slices, (pred, truth, scores)


# ---- a store ----------------------------------------------------------------------------------
def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0 < threshold < 1:
        raise EvaluationError(f"threshold must be in (0, 1), found {threshold}")
    return threshold


def evaluate_store(store: SliceStore | WithPredictions | str | Path, cases: Sequence[str], prediction_label: str,
                   truth_label: str | None = None, threshold: float = 0.5, *, progress: bool = False) -> Evaluation:
    """Score ``prediction_label`` against ``truth_label`` (default: each case's lesion label) over ``cases``.

    A case lacking either label is skipped and listed in ``Evaluation.skipped``; the
    others are scored. Raises :class:`EvaluationError` when no case could be scored.
    """
    from tqdm import tqdm

    if isinstance(store, (str, Path)):
        store = SliceStore.open(store)
    threshold = _check_threshold(threshold)
    if not cases:
        raise EvaluationError(f"{store.path}: no cases to evaluate")
    rows, slice_rows, skipped = [], [], []
    pooled = m.PooledCounts()
    truth_used = set()
    for case_id in tqdm(list(cases), desc="evaluating", unit="case", disable=not progress or None):
        truth = truth_label or store.record(case_id).lesion_label
        missing = [name for name in (prediction_label, truth) if not name or name not in store.label_names(case_id)]
        if missing:
            skipped.append((case_id, f"no label {missing[0]!r} (has: {', '.join(store.label_names(case_id))})"))
            continue
        row, slices, (pred, truth_mask_, scores) = case_row(store, case_id, prediction_label, truth, threshold)
        rows.append(row)
        slice_rows.extend(slices)
        pooled.add(pred, truth_mask_, scores)
        truth_used.add(truth)
    if not rows:
        reasons = "; ".join(f"{c}: {r}" for c, r in skipped[:3])
        raise EvaluationError(f"{store.path}: no case could be evaluated ({reasons})")
    return Evaluation(prediction_label=prediction_label, truth_label=",".join(sorted(truth_used)),
                      threshold=threshold, per_case=tuple(rows), per_slice=tuple(slice_rows),
                      global_metrics=pooled.metrics(), skipped=tuple(skipped), store=str(store.path))


# ---- a run ------------------------------------------------------------------------------------
def open_evaluated(store_path: str | Path | None, predictions: str | Path | None = None) -> SliceStore | WithPredictions:
    """What an evaluation reads: the dataset store, or it with the predictions store ``predictions``
    (``store_path`` None: the dataset store the predictions store names; given: checked against it)."""
    if predictions is not None:
        from ctprep.store import open_predictions

        return open_predictions(predictions, store_path)
    if store_path is None:
        raise EvaluationError("no store to evaluate: give the dataset store, or a predictions store")
    return SliceStore.open(store_path)


def split_cases(store: SliceStore, split: str) -> list[str]:
    """The store's cases of ``split`` ("all" for every case)."""
    if split == "all":
        return store.case_ids()
    cases = [c for c in store.case_ids() if store.record(c).split == split]
    if not cases:
        splits = sorted({store.record(c).split for c in store.case_ids()})
        raise EvaluationError(f"{store.path}: no case in split {split!r} (the store's splits: "
                              f"{', '.join(splits) or 'none'}; 'all' evaluates every case)")
    return cases


def run_prediction_labels(store: SliceStore, case_id: str, run_dir: str | Path) -> list[str]:
    """Probability labels ``ctseg predict`` wrote for ``run_dir`` into a case (by their attributes)."""
    run_dir = Path(run_dir).resolve()
    found = []
    for name in store.label_names(case_id):
        attrs = store.label_attributes(case_id, name)
        if attrs.get("kind") != "prediction" or attrs.get("values") == "binary":
            continue
        run = attrs.get("run")
        if run is not None and Path(run).resolve() == run_dir:
            found.append(name)
    probabilities, _ = prediction_labels(run_dir.name)
    if not found and probabilities in store.label_names(case_id):
        found.append(probabilities)
    return found


def evaluate_run(run_dir: str | Path, store_path: str | Path, split: str = "test",
                 prediction_label: str | Sequence[str] | None = None, truth_label: str | None = None,
                 threshold: float | None = None, *, cases: Sequence[str] | None = None, out_dir: str | Path | None = None,
                 report: bool = True, progress: bool = False,
                 predictions: str | Path | None = None) -> list[EvaluationOutput]:
    """Evaluate a run's predictions on a split and write ``RUN_DIR/eval/<split>/`` (one folder per label).

    ``prediction_label`` defaults to the probability labels ``ctseg predict`` wrote for
    this run (found by their attributes, else ``pred_<run folder name>``); ``truth_label``
    to the label the prediction was trained on (its ``target`` attribute), else the
    case's lesion label; ``threshold`` to the one predict used (attribute), else 0.5.
    With several prediction labels each gets ``eval/<split>/<label>/``. With ``predictions`` (a
    predictions store of ``store_path``) the prediction labels are read from there.
    """
    store = open_evaluated(store_path, predictions)
    chosen = list(cases) if cases else split_cases(store, split)
    unknown = sorted(set(chosen) - set(store.case_ids()))
    if unknown:
        raise EvaluationError(f"{store.path}: cases not in the store: {', '.join(unknown)}")
    if prediction_label is None:
        labels = run_prediction_labels(store, chosen[0], run_dir)
        if not labels:
            have = [n for n in store.label_names(chosen[0]) if n.startswith(PREDICTION_PREFIX)]
            raise EvaluationError(f"{store.path}: case {chosen[0]} has no prediction of run {run_dir} "
                                  f"(prediction labels: {', '.join(have) or 'none'}); run `ctseg predict` "
                                  "first or name the label")
    else:
        labels = [prediction_label] if isinstance(prediction_label, str) else list(prediction_label)
    base = Path(out_dir) if out_dir is not None else Path(run_dir) / "eval" / split
    outputs = []
    for label in labels:
        attrs = _attributes(store, chosen, label)
        truth = truth_label or attrs.get("target")
        t = threshold if threshold is not None else attrs.get("threshold", 0.5)
        evaluation = evaluate_store(store, chosen, label, truth, t, progress=progress)
        evaluation = dataclasses.replace(evaluation, split=split)
        folder = base if len(labels) == 1 else base / label
        outputs.append(write_evaluation(evaluation, folder, store=store if report else None))
    return outputs


def _attributes(store: SliceStore, cases: Sequence[str], label: str) -> dict:
    for case_id in cases:
        if label in store.label_names(case_id):
            return store.label_attributes(case_id, label)
    return {}


# ---- writing ----------------------------------------------------------------------------------
def _json_ready(value):
    """Non-finite floats -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c, "")) for c in columns])
    return out.getvalue()


def _csv_value(value):
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # full precision; inf and nan as such
    return value


def write_evaluation(evaluation: Evaluation, folder: str | Path, *, store: SliceStore | None = None) -> EvaluationOutput:
    """Write the CSV/JSON files (and, given the store for the overlays, report.html) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        write_text_atomic(folder / "per_case.csv", _csv_text(evaluation.per_case, CASE_COLUMNS)),
        write_text_atomic(folder / "per_case.json",
                      json.dumps(_json_ready(list(evaluation.per_case)), indent=1, allow_nan=False) + "\n"),
        write_text_atomic(folder / "per_slice.csv", _csv_text(evaluation.per_slice, SLICE_COLUMNS)),
        write_text_atomic(folder / "summary.json", json.dumps(evaluation.summary(), indent=1, allow_nan=False) + "\n"),
    ]
    if store is not None:
        from ctseg.report import render_report

        files.append(write_text_atomic(folder / "report.html", render_report(evaluation, store)))
    else:
        (folder / "report.html").unlink(missing_ok=True)  # a report of an earlier evaluation would mislead
    return EvaluationOutput(evaluation=evaluation, folder=folder, files=tuple(files))
