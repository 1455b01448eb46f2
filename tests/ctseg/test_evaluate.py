"""ctseg.evaluate and ctseg.report on real slice stores with prediction labels written into them.

No model is trained here: the evaluator is tested on predictions made from the truth
(perfect, shifted, empty, blurred), whose metrics are known or checked with SimpleITK.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ctprep.case import CaseRecord, LabelSpec
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.datasets import SplitConfig, assign_split
from ctprep.geometry import Geometry, SourceGrid
from ctprep.phantoms.nifti import write_lits_case
from ctprep.store import SliceStore
from ctprep.windowing import PRESETS
from ctseg import metrics as m
from ctseg.errors import EvaluationError
from ctseg.evaluate import evaluate_run, evaluate_store
from ctseg.report import TRUTH_BGR, PRED_BGR, best_and_worst, box_stats, overlay

SHAPE, SPACING = (16, 64, 64), (2.5, 0.8, 0.8)
CASES = ("volume-0", "volume-1", "volume-2", "volume-3")
SHIFT_Z = 2  # volume-1's prediction is its truth moved this many slices up


def _seed_with_both_splits() -> int:
    """A split seed that puts some, not all, of CASES into test (fractions 0.5 train / 0.5 test)."""
    for seed in range(100):
        splits = {assign_split(c, SplitConfig(seed=seed, fractions=(0.5, 0.0, 0.5))) for c in CASES}
        if splits == {"train", "test"}:
            return seed
    raise AssertionError("no seed splits the cases")  # pragma: no cover


def fake_predictions(truth: np.ndarray, case_id: str) -> np.ndarray:
    """float32 'probabilities' of known quality, made from the truth."""
    t = truth.astype(np.float32)
    if case_id == "volume-0":
        return t  # perfect
    if case_id == "volume-1":
        return np.roll(t, SHIFT_Z, axis=0) * 0.9
    if case_id == "volume-2":
        return np.full(t.shape, 0.1, dtype=np.float32)  # nothing above the threshold
    return ndimage.gaussian_filter(t, 1.5).astype(np.float32) * 1.6  # blurred: size depends on the threshold


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    for number in range(len(CASES)):
        write_lits_case(root / "raw", number, shape=SHAPE, spacing=SPACING)
    output = root / "lits.zarr"
    config = ConvertConfig(source="lits", input_dir=str(root / "raw"), output=str(output),
                           split=SplitConfig(seed=_seed_with_both_splits(), fractions=(0.5, 0.0, 0.5)))
    report = convert_dataset(config, progress=False)
    assert [o.status for o in report.outcomes] == ["converted"] * len(CASES)
    store = SliceStore.open(output, mode="a")
    for case_id in CASES:
        truth = store.read_label(case_id, "tumour")
        assert truth.any()
        store.write_label(case_id, "pred_unet", fake_predictions(truth, case_id),
                          attributes={"kind": "prediction", "values": "probability", "target": "tumour",
                                      "run": str(root / "runs" / "unet"), "threshold": 0.5})
        store.write_label(case_id, "pred_unet_mask", (fake_predictions(truth, case_id) >= 0.5).astype(np.uint8),
                          attributes={"kind": "prediction", "values": "binary", "target": "tumour",
                                      "run": str(root / "runs" / "unet"), "threshold": 0.5})
    return output


@pytest.fixture(scope="module")
def evaluation(store_path):
    return evaluate_store(store_path, CASES, "pred_unet", "tumour", 0.5)


def sitk_image(mask: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing[::-1]])
    return image


# ---- per case ---------------------------------------------------------------------------------
def test_per_case_metrics_match_simpleitk_with_the_store_spacing(store_path, evaluation):
    store = SliceStore.open(store_path)
    rows = {r["case"]: r for r in evaluation.per_case}
    assert sorted(rows) == list(CASES)
    for case_id in ("volume-1", "volume-3"):
        spacing = store.record(case_id).geometry.spacing
        assert spacing == pytest.approx(SPACING)
        truth = store.read_label(case_id, "tumour") > 0
        pred = store.read_label(case_id, "pred_unet") >= 0.5
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(sitk_image(pred, spacing), sitk_image(truth, spacing))
        hausdorff = sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(sitk_image(pred, spacing), sitk_image(truth, spacing))
        assert rows[case_id]["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
        assert rows[case_id]["jaccard"] == pytest.approx(overlap.GetJaccardCoefficient(), abs=1e-12)
        assert rows[case_id]["hausdorff"] == pytest.approx(hausdorff.GetHausdorffDistance(), rel=1e-6)
        assert rows[case_id]["truth_voxels"] == int(truth.sum())
        assert rows[case_id]["truth_ml"] == pytest.approx(truth.sum() * np.prod(SPACING) / 1000)


def test_known_cases(evaluation):
    rows = {r["case"]: r for r in evaluation.per_case}
    perfect, shifted, empty, blurred = (rows[c] for c in CASES)
    assert perfect["dice"] == 1.0 and perfect["mssd"] == 0.0 and perfect["auc"] == 1.0
    # moved SHIFT_Z slices along z: the set and surface Hausdorff distances are SHIFT_Z * z spacing
    assert shifted["hausdorff"] == pytest.approx(SHIFT_Z * SPACING[0])
    assert shifted["mssd"] == pytest.approx(SHIFT_Z * SPACING[0])
    assert 0 < shifted["dice"] < 1
    assert empty["empty"] == "prediction" and empty["dice"] == 0.0 and math.isinf(empty["hd95"])
    assert empty["auc"] == 0.5  # constant scores
    assert 0.5 < blurred["dice"] < 1 and blurred["auc"] > 0.95


def test_threshold_binarises_probabilities(store_path, evaluation):
    low = evaluate_store(store_path, ["volume-3"], "pred_unet", "tumour", 0.2)
    high = {r["case"]: r for r in evaluation.per_case}["volume-3"]
    store = SliceStore.open(store_path)
    probabilities = store.read_label("volume-3", "pred_unet")
    assert low.per_case[0]["pred_voxels"] == int(np.count_nonzero(probabilities >= 0.2))
    assert high["pred_voxels"] == int(np.count_nonzero(probabilities >= 0.5)) < low.per_case[0]["pred_voxels"]
    assert low.per_case[0]["auc"] == high["auc"]  # the AUC does not depend on the threshold


def test_binary_prediction_labels_are_masks(store_path, evaluation):
    masks = evaluate_store(store_path, CASES, "pred_unet_mask", "tumour", 0.5)
    for soft, hard in zip(evaluation.per_case, masks.per_case):
        for key in ("dice", "jaccard", "hausdorff", "hd95", "assd"):
            assert hard[key] == pytest.approx(soft[key], nan_ok=True)
        assert math.isnan(hard["auc"])  # no scores


# ---- global and per slice ---------------------------------------------------------------------
def test_global_metrics_pool_voxels_over_cases(store_path, evaluation):
    store = SliceStore.open(store_path)
    tp = fp = fn = 0
    for case_id in CASES:
        truth = store.read_label(case_id, "tumour") > 0
        pred = store.read_label(case_id, "pred_unet") >= 0.5
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    glob = evaluation.global_metrics
    assert (glob["tp"], glob["fp"], glob["fn"]) == (tp, fp, fn)
    assert glob["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    per_case_mean = np.mean([r["dice"] for r in evaluation.per_case])
    assert glob["dice"] != pytest.approx(per_case_mean)  # pooled is not the mean of cases


def test_per_slice_rows_cover_every_stored_slice(store_path, evaluation):
    store = SliceStore.open(store_path)
    assert len(evaluation.per_slice) == len(CASES) * SHAPE[0]
    rows = [r for r in evaluation.per_slice if r["case"] == "volume-3" and r["empty"] == "none"]
    assert rows
    for row in rows:
        truth = store.read_label("volume-3", "tumour")[row["z"]] > 0
        pred = store.read_label("volume-3", "pred_unet")[row["z"]] >= 0.5
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(sitk_image(pred, SPACING[1:]), sitk_image(truth, SPACING[1:]))
        assert row["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
        assert row["z_mm"] == pytest.approx(store.record("volume-3").z_positions[row["z"]])
    summary = evaluation.summary()
    assert summary["slices"]["total"] == len(evaluation.per_slice)
    assert summary["slices"]["scored"] == len(evaluation.per_slice) - summary["slices"]["empty_both"]


def test_stored_slice_subsets_keep_their_true_z_distance(tmp_path):
    """Rows 1 and 2 of a --slices store are slices 3 and 7: a lesion moved between them is 4 slices away."""
    nz, ny, nx = 4, 12, 12
    geometry = Geometry(shape=(10, ny, nx), spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    record = CaseRecord(
        case_id="c", source="lits", patient_id="c", split="test", geometry=geometry, canonical_geometry=geometry,
        source_grid=SourceGrid(shape=(nx, ny, 10), affine_ras=tuple(np.diag([-1.0, -1.0, 3.0, 1.0]).ravel()),
                               axcodes="RAS", axes=((0, -1), (1, -1), (2, 1))),
        slice_indices=(2, 3, 7, 8), z_positions=(6.0, 9.0, 21.0, 24.0), windows=(PRESETS["liver"],),
        labels=(LabelSpec(name="tumour", values=(2,)),), lesion_label="tumour", lesion_pixels=(0, 9, 0, 0))
    truth = np.zeros((nz, ny, nx), np.uint8)
    truth[1, 4:7, 4:7] = 1
    store = SliceStore.create(tmp_path / "s.zarr", parameters={}, created_by="test")
    store.write_case(record, np.zeros((nz, 1, ny, nx), np.uint8), {"tumour": truth})
    store.write_label("c", "pred_x", np.roll(truth, 1, axis=0).astype(np.float32))
    row = evaluate_store(store, ["c"], "pred_x").per_case[0]
    assert row["hausdorff"] == pytest.approx(4 * 3.0) and row["mssd"] == pytest.approx(4 * 3.0)
    assert row["truth_label"] == "tumour"  # the case's lesion label by default


# ---- a run: files and report --------------------------------------------------------------------
def _strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"{path}: non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_run_writes_csv_json_summary_and_report(store_path, tmp_path):
    run_dir = store_path.parent / "runs" / "unet"
    outputs = evaluate_run(run_dir, store_path, split="all", out_dir=tmp_path / "eval")
    (output,) = outputs
    assert output.evaluation.prediction_label == "pred_unet"  # found by the label's attributes
    assert output.evaluation.truth_label == "tumour" and output.evaluation.threshold == 0.5
    names = sorted(p.name for p in output.folder.iterdir())
    assert names == ["per_case.csv", "per_case.json", "per_slice.csv", "report.html", "summary.json"]
    with open(output.folder / "per_case.csv", newline="") as handle:
        rows = {r["case"]: r for r in csv.DictReader(handle)}
    by_case = {r["case"]: r for r in output.evaluation.per_case}
    for case_id, row in rows.items():
        for key in m.METRIC_KEYS:
            assert float(row[key]) == pytest.approx(by_case[case_id][key], nan_ok=True), (case_id, key)
    assert rows["volume-2"]["hd95"] == "inf" and rows["volume-2"]["empty"] == "prediction"
    per_case = {r["case"]: r for r in _strict_json(output.folder / "per_case.json")}
    assert per_case["volume-2"]["hd95"] is None and per_case["volume-0"]["dice"] == 1.0
    summary = _strict_json(output.folder / "summary.json")
    assert summary["cases"] == len(CASES) and summary["empty_cases"]["prediction"] == 1
    assert summary["per_case"]["hd95"]["n"] == len(CASES) - 1 and summary["per_case"]["hd95"]["n_empty"] == 1
    assert summary["per_case"]["dice"]["mean"] == pytest.approx(np.mean([r["dice"] for r in by_case.values()]))
    assert summary["global"]["dice"] == pytest.approx(output.evaluation.global_metrics["dice"])
    with open(output.folder / "per_slice.csv", newline="") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == len(CASES) * SHAPE[0]
    report = (output.folder / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and "pred_unet" in report
    assert not re.search(r'(src|href)="(?!data:)', report)  # self-contained: only inline images
    assert len(re.findall(r'src="data:image/png;base64,', report)) == 2 + 4  # 2 box plots, 2 best + 2 worst
    assert "best: volume-0" in report and "worst: volume-2" in report
    assert any("global Dice" in line for line in output.lines())


def test_evaluate_run_split_and_defaults(store_path, tmp_path):
    store = SliceStore.open(store_path)
    test_cases = [c for c in CASES if store.record(c).split == "test"]
    run_dir = tmp_path / "unet"  # another folder: the label is found by the run's folder name
    (output,) = evaluate_run(run_dir, store_path, split="test")
    assert [r["case"] for r in output.evaluation.per_case] == test_cases
    assert output.folder == run_dir / "eval" / "test" and (output.folder / "summary.json").is_file()
    (masks,) = evaluate_run(run_dir, store_path, split="test", prediction_label="pred_unet_mask",
                            truth_label="liver", threshold=0.3, report=False)
    assert masks.evaluation.truth_label == "liver" and masks.evaluation.threshold == 0.3
    assert masks.folder == output.folder and not (masks.folder / "report.html").exists()  # no stale report
    assert [p.name for p in masks.files] == ["per_case.csv", "per_case.json", "per_slice.csv", "summary.json"]


def test_evaluate_errors_name_what_is_missing(store_path, tmp_path):
    with pytest.raises(EvaluationError, match=r"has no prediction of run .*pred_unet, pred_unet_mask"):
        evaluate_run(tmp_path / "other_run", store_path, split="all")
    with pytest.raises(EvaluationError, match=r"no case in split 'val' \(the store's splits: test, train"):
        evaluate_run(tmp_path / "unet", store_path, split="val")
    with pytest.raises(EvaluationError, match="threshold must be in"):
        evaluate_store(store_path, CASES, "pred_unet", "tumour", 1.5)
    with pytest.raises(EvaluationError, match="no case could be evaluated"):
        evaluate_store(store_path, CASES, "pred_missing", "tumour")
    partial = evaluate_store(store_path, CASES, "pred_unet", "tumour")
    assert partial.skipped == ()


def test_a_case_without_the_prediction_is_skipped_and_reported(store_path, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_path, copy)
    store = SliceStore.open(copy, mode="a")
    store.write_label("volume-3", "pred_new", store.read_label("volume-3", "tumour"))
    result = evaluate_store(store, CASES, "pred_new", "tumour")
    assert [r["case"] for r in result.per_case] == ["volume-3"]
    assert [c for c, _ in result.skipped] == ["volume-0", "volume-1", "volume-2"]
    assert "no label 'pred_new'" in result.skipped[0][1]
    assert any(line.startswith("  skipped volume-0: no label 'pred_new'") for line in result.lines())


# ---- report pieces ------------------------------------------------------------------------------
def test_box_stats_are_tukey_boxes():
    values = [0.1, 0.5, 0.52, 0.55, 0.6, 0.61, 0.7, math.inf, math.nan]
    stats = box_stats(values)
    finite = np.asarray(values[:7])
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    assert (stats["q1"], stats["median"], stats["q3"]) == pytest.approx((q1, median, q3))
    assert stats["outliers"] == [0.1] and stats["low"] == 0.5 and stats["high"] == 0.7
    assert box_stats([math.inf]) is None


def test_best_and_worst_leave_out_both_empty_cases():
    rows = [{"case": c, "dice": d, "hd95": h, "empty": e} for c, d, h, e in
            [("a", 0.9, 2.0, "none"), ("b", 1.0, 0.0, "both"), ("c", 0.2, 9.0, "none"),
             ("d", 0.9, 1.0, "none"), ("e", 0.0, math.inf, "prediction")]]
    best, worst = best_and_worst(rows)
    assert [r["case"] for r in best] == ["d", "a"] and [r["case"] for r in worst] == ["e", "c"]
    single = best_and_worst(rows[:1])
    assert [r["case"] for r in single[0]] == ["a"] and single[1] == []


def test_overlay_draws_both_contours():
    image = np.full((40, 50), 100, np.uint8)
    truth = np.zeros((40, 50), bool)
    truth[10:20, 10:20] = True
    pred = np.roll(truth, 6, axis=1)
    picture = overlay(image, truth, pred, size=100)
    assert picture.shape == (100, 104 + 104, 3)  # whole slice (80 x 100) and a square zoom (100 x 100) beside it
    colours = {tuple(int(v) for v in px) for px in picture.reshape(-1, 3)}
    assert TRUTH_BGR in colours and PRED_BGR in colours
