"""ctseg.protocols: each paper's way of scoring, against hand-computed examples and the papers' own tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.phantoms.nifti import write_lits_case
from ctprep.store import SliceStore
from ctseg import protocols as p
from ctseg.errors import EvaluationError
from ctseg.evaluate import evaluate_store


# ---- CTumorGAN: F1 is the harmonic mean of the MEAN precision and recall ----------------------
# (precision, recall, F1) in %, CTumorGAN Table 2 (lung), Sec. 3.2 (kidney), Table 3 (liver)
CTUMORGAN_TABLES = [(26.15, 97.96, 41.28), (70.80, 76.89, 73.72), (71.62, 74.01, 72.80), (66.14, 74.03, 69.86),
                    (77.34, 70.42, 73.71), (86.62, 84.59, 85.59), (76.22, 84.61, 80.19), (74.55, 90.18, 81.62),
                    (83.81, 79.65, 81.68)]


@pytest.mark.parametrize("precision, recall, f1", CTUMORGAN_TABLES)
def test_ctumorgan_f1_is_the_harmonic_mean_of_its_tables_precision_and_recall(precision, recall, f1):
    assert p.f1_of_means(precision, recall) == pytest.approx(f1, abs=0.011)  # the tables round to 0.01


def test_ctumorgan_f1_is_not_the_mean_dice_in_its_table():
    # Table 2 "Ours": Dice 71.08 but F1 73.71: the two are different averages of different things
    assert abs(p.f1_of_means(77.34, 70.42) - 71.08) > 2


def test_ctumorgan_rows_count_tumour_slices_only_at_strictly_above_0_1():
    truth = np.zeros((3, 4, 4), np.uint8)
    prob = np.zeros((3, 4, 4), np.float32)
    prob[0, :2, :2] = 0.9  # no tumour in slice 0: left out, false positives and all
    truth[1, 0, :4] = 1
    prob[1, 0, :2] = 0.1  # exactly 0.1 is not "larger than 0.1"
    prob[1, 0, 2:] = 0.2  # TP 2 of 4: precision 1, recall 0.5
    truth[2, 0, :2] = 1
    prob[2, 0, :4] = 0.5  # TP 2, FP 2: precision 0.5, recall 1
    rows = p.ctumorgan_rows(prob, truth, (1, 1, 1), 0.5, "tumour")
    assert [r["z"] for r in rows] == [1, 2]
    assert [(r["precision"], r["recall"]) for r in rows] == [(1.0, 0.5), (0.5, 1.0)]
    s = p.ctumorgan_summary(rows)
    assert s["precision"] == s["recall"] == 0.75 and s["f1"] == pytest.approx(0.75)
    assert s["dice"] == pytest.approx(2 / 3)  # each slice's Dice is 2/3; F1 of the means is 3/4


# ---- LGAN: per-slice IoU, Hausdorff in pixels, mean and median --------------------------------
def test_lgan_hausdorff_is_in_pixels_and_summaries_give_mean_and_median():
    truth = np.zeros((3, 12, 12), np.uint8)
    truth[:, 2:6, 2:6] = 1
    prob = np.zeros(truth.shape, np.float32)
    prob[0, 2:6, 2:6] = 1  # perfect
    prob[1, 3:7, 5:9] = 1  # shifted by (1, 3): Hausdorff sqrt(10) pixels (LGAN's median 3.162 is one)
    prob[2, 2:6, 2:4] = 1  # half: IoU 0.5, Hausdorff 2
    rows = p.lgan_rows(prob, truth, (5.0, 0.7, 0.7), 0.5, "lung")  # the spacing is ignored: pixels
    assert [r["hausdorff"] for r in rows] == pytest.approx([0, math.sqrt(10), 2])
    assert rows[1]["iou"] == pytest.approx(3 / 29)  # overlap 3 rows x 1 column, union 16 + 16 - 3
    s = p.lgan_summary(rows)
    assert s["hausdorff_median"] == pytest.approx(2) and s["iou_median"] == pytest.approx(0.5)
    assert s["hausdorff_mean"] == pytest.approx((math.sqrt(10) + 2) / 3)


# ---- refinement GAN: VOE, RVD in %, ASD, MSD in mm per case -----------------------------------
def test_crgan_rows_in_percent_and_mm():
    truth = np.zeros((4, 10, 10), np.uint8)
    truth[1:3, 2:6, 2:6] = 1  # 32 voxels
    prob = truth.astype(np.float32)
    prob[1:3, 2:6, 6] = 0.9  # 8 more: over-segmentation by 25 %
    row, = p.crgan_rows(prob, truth, (2.0, 0.5, 0.5), 0.5, "tumour")
    assert row["rvd"] == pytest.approx(25.0)
    assert row["voe"] == pytest.approx(100 * (1 - 32 / 40))
    assert row["msd"] == pytest.approx(0.5)  # the extra column is one 0.5 mm voxel from the truth's surface
    assert 0 < row["asd"] < 0.5


def test_segan_rows_are_dice_precision_sensitivity_per_case():
    truth = np.zeros((2, 6, 6), np.uint8)
    truth[:, :2, :2] = 1  # 8 voxels
    prob = np.zeros(truth.shape, np.float32)
    prob[:, :2, :1] = 0.8  # 4, all inside: precision 1, sensitivity 0.5, Dice 2/3
    row, = p.segan_rows(prob, truth, (1, 1, 1), 0.5, "tumour")
    assert row == pytest.approx({"dice": 2 / 3, "precision": 1.0, "sensitivity": 0.5})


# ---- CasGAN: 128/255 on soft masks, close to 255 on softened labels ---------------------------
def test_casgan_thresholds_soft_at_128_and_softened_near_255():
    truth = np.zeros((1, 4, 4), np.float32)
    truth[0, 0, :] = [1.0, 0.9, 0.51, 0.5]  # 128/255 = 0.50196: 0.5 (127.5) is background
    prob = truth.copy()
    soft, = p.casgan_rows(prob, truth, (1, 1, 1), 0.5, "soft_tumour")
    assert soft["dice"] == 1.0 and soft["acc"] == 1.0 and soft["auc"] == 1.0
    prob[0, 0, 3] = 0.6  # above 128/255 only: a false positive for the soft mask
    soft, = p.casgan_rows(prob, truth, (1, 1, 1), 0.5, "soft_tumour")
    assert soft["dice"] == pytest.approx(6 / 7) and soft["acc"] == pytest.approx(15 / 16)
    softened, = p.casgan_rows(prob, truth, (1, 1, 1), 0.5, "softened_tumour")  # only 1.0 is foreground
    assert softened["dice"] == 1.0 and softened["iou"] == 1.0


def test_unknown_protocol_is_one_clear_error():
    with pytest.raises(EvaluationError, match="unknown protocol 'brats'.*ctumorgan"):
        p.check_name("brats")


# ---- on a real store, next to ctseg.evaluate's report -----------------------------------------
@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    for number in range(2):
        write_lits_case(root / "raw", number, shape=(8, 32, 32), spacing=(2.0, 0.8, 0.8))
    output = root / "lits.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(root / "raw"), output=str(output)), progress=False)
    store = SliceStore.open(output, mode="a")
    for case_id in store.case_ids():
        truth = store.read_label(case_id, "tumour")
        store.write_label(case_id, "pred_x", np.roll(truth, 1, axis=2).astype(np.float32) * 0.8,
                          attributes={"kind": "prediction", "values": "probability", "target": "tumour"})
    return evaluate_store(output, store.case_ids(), "pred_x", "tumour", 0.5)


@pytest.mark.parametrize("name", sorted(p.PROTOCOLS))
def test_every_protocol_runs_on_a_store_and_writes_its_files(evaluation, name, tmp_path):
    result = p.protocol_for_evaluation(name, evaluation, tmp_path)
    assert result.rows and {r["case"] for r in result.rows} <= {r["case"] for r in evaluation.per_case}
    saved = json.loads((tmp_path / f"protocol_{name}.json").read_text())
    assert saved["protocol"] == name and saved["summary"]
    header = (tmp_path / f"protocol_{name}.csv").read_text().splitlines()[0]
    assert header == ",".join(result.protocol.columns)
    assert any(line.startswith(f"  protocol {name}") for line in result.lines())


def test_segan_protocol_agrees_with_the_standard_per_case_dice(evaluation, tmp_path):
    result = p.protocol_for_evaluation("segan", evaluation, tmp_path)
    standard = {r["case"]: r["dice"] for r in evaluation.per_case}
    assert {r["case"]: r["dice"] for r in result.rows} == pytest.approx(standard)


# ---- ctseg evaluate --protocol, and crgan's G alone next to its final output -------------------
def test_cli_evaluate_with_protocols_and_crgan_outputs(phantom_store, tmp_path):
    import shutil

    from click.testing import CliRunner

    from ctseg.cli import main

    store = tmp_path / "store.zarr"
    shutil.copytree(phantom_store, store)
    run = tmp_path / "crgan-run"
    runner = CliRunner()
    done = runner.invoke(main, ["train", "--model", "crgan", "--store", str(store), "--target", "tumour",
                                "--out", str(run), "--epochs", "2", "--batch-size", "2", "--size", "32",
                                "--max-steps", "4", "--set", "steps_per_epoch=2", "--set", "model_options.features=[8,16]",
                                "--set", "train_split=all", "--set", "val_split=all", "--quiet"])
    assert done.exit_code == 0, done.output
    bad = runner.invoke(main, ["evaluate", "--run", str(run), "--store", str(store), "--protocol", "brats"])
    assert bad.exit_code == 1 and "unknown protocol 'brats'" in bad.output
    done = runner.invoke(main, ["evaluate", "--run", str(run), "--store", str(store), "--split", "all",
                                "--protocol", "crgan", "--protocol", "ctumorgan", "--quiet"])
    assert done.exit_code == 0, done.output
    folder = run / "eval" / "all"
    assert "protocol crgan" in done.output and "paper LiTS (Table 5, cGAN+Refinement) vs measured" in done.output
    assert (folder / "protocol_crgan.csv").is_file() and (folder / "protocol_ctumorgan.json").is_file()
    outputs = json.loads((folder / "outputs.json").read_text())
    assert set(outputs["mean"]) == {"dice", "dice_g"} and len(outputs["cases"]) == 3
    assert "dice_g" in done.output
