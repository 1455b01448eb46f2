"""``ctseg predict --output``: predictions in a separate predictions store (ctprep.store.predictions).

A tiny U-Net is trained for two steps on the phantom store; it then predicts a copy of the
store in place (the old route) and into a predictions store (the new one). The dataset store
must be byte for byte unchanged by the new route, the predictions store must hold the same
masks and no image, ``ctseg evaluate`` must give the same metrics from both routes, an
interrupted write (the store's own write hook raising mid-case) must resume, and a
predictions store must be refused, in one line, with another or a re-converted dataset store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.errors import PredictionsMismatchError, StoreFormatError
from ctprep.store import PredictionStore, SliceStore, open_predictions
from ctseg.cli import main

torch = pytest.importorskip("torch")
TINY = ["--size", "32", "--batch-size", "4", "--epochs", "1", "--set", "model_options.features=[8,16]",
        "--set", "steps_per_epoch=2", "--set", "train_split=all", "--set", "val_split=all", "--quiet"]
LABELS = ("pred_run", "pred_run_mask")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def routes(tmp_path_factory, phantom_store):
    """root/: run/ (tiny unet), dataset.zarr (predicted with --output, hashed before and after),
    preds.zarr (the predictions store), inplace.zarr (a copy predicted the old way)."""
    root = tmp_path_factory.mktemp("predstore")
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "--model", "unet", "--store", str(phantom_store), "--target", "tumour",
                                   "--out", str(root / "run"), *TINY])
    assert trained.exit_code == 0, trained.output
    dataset = shutil.copytree(phantom_store, root / "dataset.zarr")
    inplace = shutil.copytree(phantom_store, root / "inplace.zarr")
    before = _tree_hashes(dataset)
    checkpoint = str(root / "run" / "last.pt")
    new = runner.invoke(main, ["predict", "--checkpoint", checkpoint, "--store", str(dataset),
                               "--output", str(root / "preds.zarr"), "--quiet"])
    assert new.exit_code == 0, new.output
    old = runner.invoke(main, ["predict", "--checkpoint", checkpoint, "--store", str(inplace), "--quiet"])
    assert old.exit_code == 0, old.output
    return {"root": root, "dataset": dataset, "preds": root / "preds.zarr", "inplace": inplace, "before": before,
            "after": _tree_hashes(dataset), "checkpoint": checkpoint, "output": new.output, "raw": phantom_store.parent / "raw"}


def test_the_dataset_store_is_byte_unchanged(routes):
    assert routes["before"] == routes["after"]
    assert "predicted 3 case(s) into" in routes["output"] and "predictions of" in routes["output"]


def test_the_predictions_store_holds_the_in_store_predictions_and_no_image(routes):
    preds, inplace = PredictionStore.open(routes["preds"]), SliceStore.open(routes["inplace"])
    assert preds.case_ids() == inplace.case_ids() == ["volume-0", "volume-1", "volume-2"]
    for case_id in preds.case_ids():
        assert np.ptp(inplace.read_label(case_id, "pred_run")) > 0, "the comparison needs real probabilities"
        assert preds.label_names(case_id) == list(LABELS)
        for label in LABELS:
            np.testing.assert_array_equal(preds.read_label(case_id, label), inplace.read_label(case_id, label))
            assert preds.label_attributes(case_id, label) == inplace.label_attributes(case_id, label)
    files = [p.relative_to(routes["preds"]).parts for p in routes["preds"].rglob("zarr.json")]
    assert not [f for f in files if "image" in f or "hu" in f], "a predictions store must not copy images"
    assert preds.dataset_reference["path"] == str(routes["dataset"].resolve())
    with pytest.raises(StoreFormatError, match="is a predictions store .*not a dataset store"):
        SliceStore.open(routes["preds"])


def test_evaluate_gives_the_same_metrics_from_both_routes(routes):
    from ctseg.evaluate import evaluate_run

    run = routes["root"] / "run"
    old = evaluate_run(run, routes["inplace"], "all", out_dir=routes["root"] / "eval-old")[0].evaluation
    new = evaluate_run(run, None, "all", out_dir=routes["root"] / "eval-new",
                       predictions=routes["preds"])[0].evaluation
    assert json.dumps(new.per_case, default=str) == json.dumps(old.per_case, default=str)
    assert json.dumps(new.global_metrics) == json.dumps(old.global_metrics)
    assert new.prediction_label == old.prediction_label == "pred_run" and new.truth_label == "tumour"
    assert (routes["root"] / "eval-new" / "report.html").is_file()
    result = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--predictions", str(routes["preds"]),
                                       "--split", "all", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"global Dice {old.global_metrics['dice']:.3f}" in result.output
    assert routes["before"] == _tree_hashes(routes["dataset"])  # evaluate did not write into it either


def test_an_interrupted_predict_resumes(routes, tmp_path, monkeypatch):
    """The store's write hook raises while the second case's second label is written; the rerun
    redoes that case only, and the result equals an uninterrupted run."""
    from ctseg.predict import predict_store

    preds = tmp_path / "preds.zarr"
    calls = []
    real = SliceStore._write_array

    def failing(group, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 4:
            raise RuntimeError("killed mid-case")
        return real(group, name, *args, **kwargs)

    monkeypatch.setattr(SliceStore, "_write_array", staticmethod(failing))
    with pytest.raises(RuntimeError, match="killed mid-case"):
        predict_store(routes["checkpoint"], routes["dataset"], progress=False, output=preds)
    monkeypatch.setattr(SliceStore, "_write_array", staticmethod(real))
    store = PredictionStore.open(preds)
    assert store.case_ids() == ["volume-0"] and store.incomplete_case_ids() == ["volume-1"]
    argv = ["predict", "--checkpoint", routes["checkpoint"], "--store", str(routes["dataset"]),
            "--output", str(preds), "--quiet"]
    again = CliRunner().invoke(main, argv)
    assert again.exit_code == 0, again.output
    assert "predicted 2 case(s)" in again.output and "kept 1 already there" in again.output
    store, reference = PredictionStore.open(preds), PredictionStore.open(routes["preds"])
    assert store.case_ids() == reference.case_ids() and not store.incomplete_case_ids()
    for case_id in store.case_ids():
        np.testing.assert_array_equal(store.read_label(case_id, "pred_run_mask"),
                                      reference.read_label(case_id, "pred_run_mask"))
    third = CliRunner().invoke(main, argv)
    assert "predicted 0 case(s)" in third.output and "kept 3 already there" in third.output


def _convert(raw: Path, out: Path) -> Path:
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.windowing import parse_window

    config = ConvertConfig(source="lits", input_dir=str(raw), output=str(out),
                           windows=tuple(parse_window(w) for w in ("liver", "abdomen")))
    assert not convert_dataset(config, progress=False).with_status("skipped")
    return out


def test_another_or_a_reconverted_dataset_store_is_refused_in_one_line(routes, tmp_path):
    from ctseg.predict import predict_store

    other = _convert(routes["raw"], tmp_path / "other.zarr")
    evaluate = ["evaluate", "--run", str(routes["root"] / "run"), "--predictions", str(routes["preds"]),
                "--split", "all", "--quiet"]
    line = _one_line_error(CliRunner().invoke(main, [*evaluate, "--store", str(other)]))
    assert f"{routes['preds']}: holds predictions of {routes['dataset'].resolve()}, and {other} is another store" in line
    line = _one_line_error(CliRunner().invoke(main, ["predict", "--checkpoint", routes["checkpoint"], "--store",
                                                     str(other), "--output", str(routes["preds"]), "--quiet"]))
    assert "is another store" in line
    # a byte copy of the dataset store is the same store; the same path converted again is not
    copy = shutil.copytree(routes["dataset"], tmp_path / "copy.zarr")
    assert open_predictions(routes["preds"], copy).read_label("volume-0", "pred_run").dtype == np.float32
    predict_store(routes["checkpoint"], copy, cases=["volume-0"], name="run", progress=False,
                  output=tmp_path / "copy-preds.zarr")
    rewritten = SliceStore.open(copy, mode="a")  # a case written again (as ctprep rebuild does), other pixels
    case = rewritten.read_case("volume-0", hu=False)
    rewritten.write_case(case.record, case.image[::-1].copy(), case.labels)
    with pytest.raises(PredictionsMismatchError, match="case volume-0 was predicted from another version of it"):
        open_predictions(tmp_path / "copy-preds.zarr").read_label("volume-0", "pred_run")
    shutil.rmtree(copy)
    _convert(routes["raw"], copy)
    line = _one_line_error(CliRunner().invoke(main, ["evaluate", "--run", str(routes["root"] / "run"), "--predictions",
                                                     str(tmp_path / "copy-preds.zarr"), "--split", "all", "--quiet"]))
    assert f"{copy} was re-converted since" in line
    with pytest.raises(PredictionsMismatchError):
        open_predictions(tmp_path / "copy-preds.zarr")


def test_ctprep_info_preview_and_export_of_a_predictions_store(routes, tmp_path):
    from lesionkit.cli import ctprep

    info = CliRunner().invoke(ctprep, ["info", str(routes["preds"]), "--cases"])
    assert info.exit_code == 0, info.output
    assert "kind         predictions store" in info.output
    assert f"dataset      {routes['dataset'].resolve()}" in info.output and "found, matches" in info.output
    assert "labels       pred_run, pred_run_mask" in info.output and "volume-2  pred_run, pred_run_mask" in info.output
    data = json.loads(CliRunner().invoke(ctprep, ["info", str(routes["preds"]), "--json"]).output)
    assert data["kind"] == "predictions" and data["cases"] == 3 and data["dataset_check"] == "matches"
    dataset_info = CliRunner().invoke(ctprep, ["info", str(routes["dataset"])])
    assert "pred_" not in dataset_info.output
    out = tmp_path / "preview.png"
    shown = CliRunner().invoke(ctprep, ["preview", str(routes["preds"]), "--case", "volume-0", "--out", str(out),
                                        "--label", "tumour", "--label", "pred_run_mask"])
    assert shown.exit_code == 0, shown.output
    import cv2
    import nibabel as nib

    from ctprep.commands.preview import render_preview

    image = cv2.imread(str(out))
    plain = render_preview(SliceStore.open(routes["dataset"]), "volume-0", labels=["tumour"])
    assert image.shape[1] == plain.shape[1] and image.shape[0] >= plain.shape[0]
    arrays = []
    for store in (routes["preds"], routes["inplace"]):
        path = tmp_path / f"{store.name}.nii.gz"
        done = CliRunner().invoke(ctprep, ["export", str(store), "--case", "volume-2", "--label", "pred_run",
                                           "--out", str(path)])
        assert done.exit_code == 0, done.output
        arrays.append(np.asarray(nib.load(path).dataobj))
    np.testing.assert_array_equal(*arrays)
    fingerprint = CliRunner().invoke(ctprep, ["info", str(routes["preds"]), "--fingerprint"])
    assert "is a predictions store" in _one_line_error(fingerprint)


def test_predictions_store_on_an_object_store_url(routes):
    """memory:// (fsspec): the predictions store is written by copy instead of rename, and read back."""
    from ctseg.predict import predict_store

    url = "memory://lesionkit-tests/preds-url.zarr"
    done = predict_store(routes["checkpoint"], routes["dataset"], name="run", progress=False, output=url,
                         cases=["volume-1"])
    assert [c.case_id for c in done] == ["volume-1"]
    view = open_predictions(url)
    np.testing.assert_array_equal(view.read_label("volume-1", "pred_run_mask"),
                                  PredictionStore.open(routes["preds"]).read_label("volume-1", "pred_run_mask"))
    assert view.label_names("volume-1") == sorted(["pred_run", "pred_run_mask", *view.dataset.label_names("volume-1")])
