"""ctprep convert --folds K: a deterministic patient-level fold per train/val patient, in the manifest."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.datasets import SplitConfig, assign_fold, assign_split
from ctprep.phantoms.nifti import write_lits_case
from ctprep.store import SliceStore
from lesionkit.cli import ctprep as main
from lkbase.errors import ParameterError

SHAPE = (8, 32, 32)
SPLIT = SplitConfig(seed=6, fractions=(0.5, 0.25, 0.25))  # volume-0 test; 1..3 in both of 2 folds


def test_fold_is_a_deterministic_hash_of_the_patient():
    folds = [assign_fold(f"patient-{n}", 5, seed=1) for n in range(400)]
    assert folds == [assign_fold(f"patient-{n}", 5, seed=1) for n in range(400)]
    assert set(folds) == set(range(5))
    assert all(50 < folds.count(f) < 110 for f in range(5))  # about 80 each
    assert folds != [assign_fold(f"patient-{n}", 5, seed=2) for n in range(400)]
    with pytest.raises(ParameterError, match="at least 2"):
        assign_fold("p", 1)


@pytest.fixture
def raw(tmp_path):
    for n in range(4):
        write_lits_case(tmp_path / "raw", n, shape=SHAPE)
    return tmp_path / "raw"


def _convert(raw, out, folds=None, cases=None):
    config = ConvertConfig(source="lits", input_dir=str(raw), output=str(out), split=SPLIT, folds=folds,
                           cases=cases)
    assert not convert_dataset(config, progress=False).with_status("skipped")
    return SliceStore.open(out)


def test_folds_in_the_manifest_patient_level_and_test_untouched(raw, tmp_path):
    store = _convert(raw, tmp_path / "f.zarr", folds=3)
    table = store.manifest()["folds"]
    assert table["k"] == 3 and table["seed"] == 6
    records = store.records()
    outside_test = {r.case_id for r in records if r.split != "test"}
    assert set(table["cases"]) == outside_test
    assert any(r.split == "test" for r in records)  # the seed puts a patient in test: it has no fold
    for r in records:
        if r.split != "test":
            assert table["cases"][r.case_id] == table["patients"][r.patient_id] == assign_fold(r.patient_id, 3, 6)
    assert json.loads(open(manifest_path(tmp_path / "f.zarr")).read())["folds"] == table


def test_no_folds_leaves_the_store_as_before(raw, tmp_path):
    plain = _convert(raw, tmp_path / "plain.zarr")
    folded = _convert(raw, tmp_path / "folded.zarr", folds=2)
    assert "folds" not in plain.manifest()
    assert plain.parameters == folded.parameters  # not a content parameter: resuming with --folds is allowed
    for case_id in plain.case_ids():
        assert plain.record(case_id) == folded.record(case_id)
    assert "folds" not in json.loads(open(manifest_path(tmp_path / "plain.zarr")).read())


def test_folds_added_later_and_kept_by_later_runs(raw, tmp_path):
    out = tmp_path / "s.zarr"
    _convert(raw, out, cases=("volume-0", "volume-1"))
    store = _convert(raw, out, folds=2)  # resumes: existing cases kept, the manifest gains folds
    assert store.manifest()["folds"]["k"] == 2
    store = _convert(raw, out)  # without --folds: the store keeps its folds
    assert store.manifest()["folds"]["k"] == 2
    assert set(store.manifest()["folds"]["cases"]) == {r.case_id for r in store.records() if r.split != "test"}


def test_cli_folds_option(raw, tmp_path):
    out = tmp_path / "c.zarr"
    result = CliRunner().invoke(main, ["convert", "--source", "lits", "--input", str(raw), "--output", str(out),
                                       "--folds", "2", "--split-seed", "6", "--split", "0.5,0.25,0.25", "--quiet"])
    assert result.exit_code == 0, result.output
    assert SliceStore.open(out).manifest()["folds"]["k"] == 2
    bad = CliRunner().invoke(main, ["convert", "--source", "lits", "--input", str(raw), "--output", str(out),
                                    "--folds", "1"])
    assert bad.exit_code == 2 and "--folds" in bad.output
    assert all(assign_split(f"volume-{n}", SPLIT) for n in range(4))
