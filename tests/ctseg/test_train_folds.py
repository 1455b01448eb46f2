"""ctseg train --fold I: fold I validates, the other folds train, the test split is never used."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ctprep.datasets import SplitConfig
from ctprep.store import SliceStore
from ctseg.data import select_index
from ctseg.errors import ConfigError
from ctseg.folds import fold_cases, fold_splits

# volume-0 in test; volume-1 in fold 0, volume-2 and volume-3 in fold 1 (tests/ctprep/test_folds.py).
SPLIT = SplitConfig(seed=6, fractions=(0.5, 0.25, 0.25))


def _store(tmp: Path, folds: int | None) -> Path:
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.phantoms.nifti import write_lits_case

    for n in range(4):
        write_lits_case(tmp / "raw", n, shape=(8, 32, 32))
    out = tmp / "s.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(tmp / "raw"), output=str(out), split=SPLIT,
                                  folds=folds), progress=False)
    return out


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("folded"), 2)


def test_fold_sides(folded):
    store = SliceStore.open(folded)
    assert fold_cases(store, "fold=0") == ["volume-1"]
    assert fold_cases(store, "fold!=0") == ["volume-2", "volume-3"]
    assert fold_cases(store, "fold=1") == ["volume-2", "volume-3"]
    assert fold_cases(store, "train") is None
    val = select_index(store, **{"split": fold_splits(1)["val_split"]}, targets=["tumour"])
    train = select_index(store, split=fold_splits(1)["train_split"], targets=["tumour"])
    assert set(val.rows["case"].tolist()) == {"volume-2", "volume-3"}
    assert set(train.rows["case"].tolist()) == {"volume-1"}  # volume-0 (test) on neither side
    lesion = select_index(store, split="fold!=1", lesion_only=True)
    assert len(lesion) and set(lesion.rows["case"].tolist()) == {"volume-1"} and lesion.has_lesion.all()


def test_training_and_validation_use_the_fold(folded, tmp_path):
    from ctseg.build import build_config
    from ctseg.data import training_data
    from ctseg.validation import validation_plan

    config = build_config(model="unet", layers=[{"store": str(folded), "target": "tumour", "out": str(tmp_path),
                                                 "size": 32, **fold_splits(0)}])
    assert validation_plan(config).cases == ("volume-1",)
    dataset, _, _ = training_data(config)
    assert set(dataset.cases) == {"volume-2", "volume-3"}


def test_errors_are_one_line(folded, tmp_path_factory):
    store = SliceStore.open(folded)
    with pytest.raises(ConfigError, match=r"--fold 2: .* has 2 folds, 0 to 1"):
        fold_cases(store, "fold=2")
    with pytest.raises(ConfigError, match=r"--fold -1: .* has 2 folds"):
        fold_cases(store, "fold!=-1")
    plain = SliceStore.open(_store(tmp_path_factory.mktemp("plain"), None))
    with pytest.raises(ConfigError, match="has no cross-validation folds .*--folds K"):
        select_index(plain, split="fold=0")


def test_cli_fold_errors(folded, tmp_path):
    from ctseg.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "unet", "--store", str(folded), "--target", "tumour",
                                       "--out", str(tmp_path / "run"), "--fold", "5", "--size", "32"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--fold 5:" in lines[0] and "has 2 folds, 0 to 1" in lines[0], result.output
