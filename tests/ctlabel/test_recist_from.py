"""``--recist-from LABEL`` on real lesions: RECIST measured on a mask, soft mask scored by ``ctlabel evaluate``.

Real structures with real CT (../shared/data): the pyradiomics lung nodule (lung window) and
the TotalSegmentator example CT's spleen, kidneys and gallbladder (its model's masks as the
truth, abdomen window). For each, the default RECIST soft mask's Dice at 0.5 must be at
least the RECIST ellipse's Dice, as ``ctlabel evaluate`` prints both. Only the lesion
slices are stored (lung) or the small 3 mm volume (TotalSegmentator): CPU-cheap.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ctlabel.cli import main
from ctlabel.evaluate import evaluate_store
from ctlabel.label import LabelConfig, label_store
from ctlabel.lesions import measured_recist_lesions
from ctprep.windowing import PRESETS

STRUCTURES = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder"}


@pytest.fixture
def lung_store(tmp_path, lung, lk):
    store = lk.new_store(tmp_path / "lung.zarr")
    lk.write_case(store, "lung1", lung.hu, {"tumour": lung.mask}, lung.spacing, windows=(PRESETS["lung"],))
    return tmp_path / "lung.zarr"


@pytest.fixture
def abdomen_store(tmp_path, lk):
    import nibabel as nib

    folder = lk.shared_data_path("totalseg_example")
    ct = nib.load(folder / "example_ct_sm.nii.gz")
    seg = np.asarray(nib.load(folder / "example_seg.nii.gz").dataobj).transpose(2, 1, 0)
    hu = np.asarray(ct.dataobj).astype(np.int16).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in ct.header.get_zooms()[::-1])
    store = lk.new_store(tmp_path / "abdomen.zarr")
    lk.write_case(store, "abdomen", hu, {name: seg == value for value, name in STRUCTURES.items()}, spacing,
                  windows=(PRESETS["abdomen"],), lesion_label="spleen")
    return tmp_path / "abdomen.zarr"


def _beats_ellipse(store, reference: str) -> list[dict]:
    evaluation = evaluate_store(str(store), f"soft_{reference}", reference)
    rows = [s.row() for s in evaluation.lesions]
    assert rows, evaluation.lines()
    for row in rows:
        assert row["dice_05"] >= row["ellipse_dice"], rows
    return rows


def test_measured_recist_one_lesion_per_3d_component_on_its_largest_slice():
    mask = np.zeros((4, 20, 20), dtype=np.uint8)
    mask[0:3, 2:6, 2:6] = 1
    mask[1, 1:8, 1:7] = 1  # the first component's largest slice is z=1 (stored index 11)
    mask[3, 12:15, 10:19] = 1  # a second lesion, one slice
    lesions, problems = measured_recist_lesions(mask, [10, 11, 12, 13], (1.0, 1.0))
    assert not problems and [(l.lesion_id, l.z) for l in lesions] == [("c1-z11", 11), ("c2-z13", 13)]
    long_mm, short_mm = lesions[1].recist.diameters_mm((1.0, 1.0))
    assert long_mm == pytest.approx(np.hypot(8, 2)) and 1.5 <= short_mm <= 3
    lesions, problems = measured_recist_lesions(np.pad(np.ones((1, 1, 1)), ((0, 0), (2, 2), (2, 2))), [0], (1, 1))
    assert not lesions and "2 pixels" in problems[0].reason  # one pixel: nothing to measure, reported


def test_recist_from_lung_nodule_beats_its_ellipse(lung_store):
    runner = CliRunner()
    result = runner.invoke(main, ["softmask", str(lung_store), "--recist-from", "tumour", "--name", "tumour",
                                  "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _beats_ellipse(lung_store, "tumour")
    assert len(rows) == 1 and rows[0]["dice_05"] >= 0.9
    printed = runner.invoke(main, ["evaluate", str(lung_store), "--label", "soft_tumour", "--reference", "tumour"])
    assert "Dice@0.5" in printed.output and "RECIST ellipse Dice" in printed.output


def test_recist_from_abdominal_structures_beat_their_ellipses(abdomen_store):
    for name in STRUCTURES.values():
        report = label_store(LabelConfig(store=str(abdomen_store), source="recist", recist_from=name, name=name),
                             progress=False)
        assert report.lesions("done") and not report.lesions("skipped"), report.lines()
        _beats_ellipse(abdomen_store, name)


def test_recist_from_contradicts_other_evidence(lung_store):
    result = CliRunner().invoke(main, ["softmask", str(lung_store), "--recist-from", "tumour", "--from", "mask"])
    assert result.exit_code != 0 and "contradicts" in result.output
