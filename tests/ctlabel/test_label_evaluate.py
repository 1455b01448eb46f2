"""``ctlabel evaluate`` and the RECIST soft mask against its evidence, on a hand example and the real nodule.

* the figures of a 2x3 example computed by hand (Dice, IoU, ACC at 128/255 and 0.5, AUC);
* the real pyradiomics nodule (RECIST measured from its mask), stored as NSCLC so the default
  channel is the lung window: ``ctlabel softmask --recist`` then ``ctlabel evaluate``; the soft
  mask's Dice at 0.5 is at least the RECIST ellipse's, per lesion, and both are printed;
* the HTML page is self-contained and shows the worst lesions.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from ctlabel.cli import main
from ctlabel.evaluate import auc, evaluate_store, soft_figures
from ctlabel.trimap import recist_from_mask
from ctprep.store import SliceStore
from ctprep.windowing import PRESETS


def test_hand_computed_figures():
    alpha = np.array([[0.9, 0.502, 0.499], [0.2, 0.6, 0.0]])  # 128/255 = 0.50196...
    truth = np.array([[1, 1, 0], [0, 0, 1]])
    figures = soft_figures(alpha, truth)
    # 128/255: predicted {0.9, 0.502, 0.6}: TP 2, FP 1, FN 1, TN 2
    assert figures["dice"] == pytest.approx(4 / 6) and figures["iou"] == pytest.approx(2 / 4)
    assert figures["acc"] == pytest.approx(4 / 6)
    # 0.5: the same three pixels (0.499 stays out)
    assert figures["dice_05"] == pytest.approx(4 / 6) and figures["iou_05"] == pytest.approx(0.5)
    # AUC: positives {0.9, 0.502, 0.0} vs negatives {0.499, 0.2, 0.6}: pairs won 3 + 2 + 0 = 5 of 9
    assert figures["auc"] == pytest.approx(5 / 9)
    assert auc(np.array([0.3, 0.3]), np.array([1, 0])) == 0.5  # a tie counts one half
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_paper_threshold_differs_from_one_half():
    """128/255 > 0.5: a pixel at 0.501 is in at 0.5 and out at the paper's threshold."""
    figures = soft_figures(np.array([0.501, 0.0]), np.array([1, 0]))
    assert figures["dice_05"] == 1.0 and figures["dice"] == 0.0


@pytest.fixture
def nsclc_lung_store(tmp_path, lung, lk):
    """The real nodule's slices as an NSCLC case (lung + mediastinum windows), RECIST measured on its mask."""
    spacing_yx = lung.spacing[1:]
    annotations = {"lesions": [lk.recist_annotation(f"nodule-z{z}", z, recist_from_mask(lung.mask[z], spacing_yx),
                                                    spacing_yx) for z in lung.lesion_slices]}
    path = tmp_path / "lung.zarr"
    store = lk.new_store(path)
    record = lk.write_case(store, "lung1", lung.hu, {"tumour": lung.mask}, lung.spacing, annotations=annotations)
    assert record.source == "test"
    # the same case, recorded as the NSCLC dataset's (its manifest names the lung window)
    store.write_case(dataclasses.replace(record, source="nsclc"),
                     SliceStore.open(path).read_case("lung1").image, {"tumour": lung.mask})
    return path


def test_recist_soft_mask_beats_the_ellipse_on_the_real_nodule(nsclc_lung_store, tmp_path):
    runner = CliRunner()
    made = runner.invoke(main, ["softmask", str(nsclc_lung_store), "--recist", "--quiet"])
    assert made.exit_code == 0, made.output
    assert "RECIST trimaps from:" in made.output
    attributes = SliceStore.open(nsclc_lung_store).label_attributes("lung1", "soft_recist")["ctlabel"]
    assert attributes["channels"]["names"] == ["lung"] and "nsclc" in attributes["channels"]["why"]
    assert attributes["parameters"]["channels"] == "auto"
    assert all(e["path"] in ("grabcut", "ellipse") and e["recist"] for e in attributes["lesions"])
    out = tmp_path / "eval"
    result = runner.invoke(main, ["evaluate", str(nsclc_lung_store), "--label", "soft_recist",
                                  "--reference", "tumour", "--out", str(out), "--worst", "2"])
    assert result.exit_code == 0, result.output
    assert "Dice@0.5" in result.output and "RECIST ellipse Dice" in result.output
    report = json.loads((out / "evaluation.json").read_text())
    for lesion in report["lesions"]:
        assert lesion["dice_05"] >= lesion["ellipse_dice"], lesion
    assert report["mean"]["dice_05"] >= report["mean"]["ellipse_dice"]
    page = (out / "evaluation.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * 4 and "<script" not in page and "http" not in page
    assert (out / "lesions.csv").read_text().splitlines()[0].startswith("case_id,lesion_id,z,path,dice_05")


def test_explicit_channels_and_a_missing_one(nsclc_lung_store):
    runner = CliRunner()
    result = runner.invoke(main, ["softmask", str(nsclc_lung_store), "--recist", "--quiet", "--channels", "bone"])
    assert result.exit_code != 0 and "no window 'bone'" in result.output and "lung, mediastinum" in result.output
    result = runner.invoke(main, ["trimap", str(nsclc_lung_store), "--recist", "--quiet",
                                  "--channels", "lung,mediastinum"] if False else
                           ["trimap", str(nsclc_lung_store), "--from", "recist", "--quiet",
                            "--channels", "lung,mediastinum"])
    assert result.exit_code == 0, result.output
    attributes = SliceStore.open(nsclc_lung_store).label_attributes("lung1", "trimap_recist")["ctlabel"]
    assert attributes["channels"] == {"names": ["lung", "mediastinum"], "why": "--channels"}
