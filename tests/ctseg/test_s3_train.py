"""ctseg on a store in a bucket (moto's server on 127.0.0.1): ``ctseg train`` reads its batches from
the bucket (in a DataLoader worker process, which finds the endpoint in the environment, the one
configuration rule), and ``ctseg predict`` writes the same predictions there as into a local copy."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.store import SliceStore
from ctseg.cli import main

pytestmark = pytest.mark.timeout(300)

TINY = ["--size", "32", "--batch-size", "4", "--set", "model_options.features=[8,16]", "--set", "steps_per_epoch=2",
        "--set", "train_split=all", "--set", "val_split=all", "--quiet", "--epochs", "1"]


def test_train_and_predict_on_a_bucket_store(s3_endpoint, phantom_store, tmp_path):
    import s3fs

    url = f"s3://{s3_endpoint.new_bucket()}/phantom.zarr"
    s3fs.S3FileSystem().put(str(phantom_store), url[len("s3://"):], recursive=True)
    runner = CliRunner()
    runs = {}
    for name, store in (("bucket", url), ("local", phantom_store)):
        runs[name] = tmp_path / f"run-{name}"
        done = runner.invoke(main, ["train", "--model", "unet", "--store", str(store), "--target", "tumour",
                                    "--out", str(runs[name]), "--seed", "3", "--workers", "1", *TINY])
        assert done.exit_code == 0, done.output
        assert "1 epochs, 2 steps" in done.output, done.output
    import torch

    nets = [torch.load(runs[n] / "last.pt", map_location="cpu", weights_only=False)["networks"] for n in runs]
    assert nets[0].keys() == nets[1].keys()
    for net in nets[0]:  # the same batches read from either store: the same weights
        assert all(torch.equal(nets[0][net][k], nets[1][net][k]) for k in nets[0][net]), net

    local = tmp_path / "predicted.zarr"
    shutil.copytree(phantom_store, local)
    for store in (url, local):
        done = runner.invoke(main, ["predict", "--checkpoint", str(runs["local"] / "last.pt"), "--store", str(store),
                                    "--cases", "volume-0", "--threshold", "0.3", "--quiet"])
        assert done.exit_code == 0, done.output
    a, b = SliceStore.open(local), SliceStore.open(url)
    names = [n for n in a.label_names("volume-0") if n.startswith("pred_")]
    assert names and set(names) <= set(b.label_names("volume-0"))
    for name in names:
        np.testing.assert_array_equal(b.read_label("volume-0", name), a.read_label("volume-0", name))
    assert b.current_checksums("volume-0") == a.current_checksums("volume-0")


def test_a_batch_of_items_from_a_bucket_equals_item_by_item(s3_endpoint, phantom_store):
    """SliceDataset.__getitems__ (what torch's DataLoader calls with a batch sampler) reads a batch's
    slices with one read_slices (one concurrent fetch); its items are those read one by one."""
    import s3fs
    import torch

    from ctseg.data import SliceDataset

    url = f"s3://{s3_endpoint.new_bucket()}/phantom.zarr"
    s3fs.S3FileSystem().put(str(phantom_store), url[len("s3://"):], recursive=True)
    data = SliceDataset(url, SliceStore.open(url).index(), targets=["tumour"], size=32, crop="centre", context=1)
    items = list(range(0, len(data), 5))
    batch = data.__getitems__(items)
    assert len(batch) == len(items)
    for item, got in zip(items, batch):
        want = data[item]
        assert got["index"] == item and got["image"].shape[0] == data.in_channels == 6
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["target"], want["target"])


def test_predictions_store_in_a_bucket_equals_a_local_one(s3_endpoint, phantom_store, tmp_path):
    """``ctseg predict --output s3://...``: a predictions store in a bucket, also given a second run's labels
    for cases it already holds (the copy route of object stores), holds what a local one holds."""
    from ctprep.store import PredictionStore, open_predictions

    run = tmp_path / "run"
    runner = CliRunner()
    done = runner.invoke(main, ["train", "--model", "unet", "--store", str(phantom_store), "--target", "tumour",
                                "--out", str(run), "--seed", "3", *TINY])
    assert done.exit_code == 0, done.output
    outputs = {"bucket": f"s3://{s3_endpoint.new_bucket()}/preds.zarr", "local": str(tmp_path / "preds.zarr")}
    for output in outputs.values():
        for name, threshold in (("a", "0.3"), ("b", "0.6")):  # b adds labels to cases a wrote
            done = runner.invoke(main, ["predict", "--checkpoint", str(run / "last.pt"), "--store",
                                        str(phantom_store), "--output", output, "--cases", "volume-0",
                                        "--name", name, "--threshold", threshold, "--quiet"])
            assert done.exit_code == 0, done.output
    bucket, local = (open_predictions(outputs[k]) for k in ("bucket", "local"))
    names = local.label_names("volume-0")
    assert {"pred_a", "pred_a_mask", "pred_b", "pred_b_mask"} <= set(names)
    assert bucket.label_names("volume-0") == names
    for name in names:
        np.testing.assert_array_equal(bucket.read_label("volume-0", name), local.read_label("volume-0", name))
    stores = [PredictionStore.open(outputs[k]) for k in ("bucket", "local")]
    assert stores[0].current_checksums("volume-0") == stores[1].current_checksums("volume-0")
    current = stores[0].current_checksums("volume-0")  # what the bucket holds is what the case recorded
    assert stores[0].recorded_checksums("volume-0") == current and any(current.values())
