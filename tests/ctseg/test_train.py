"""The loop's products (checkpoints, logs, config), the config layers, the CLI and prediction into a store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from ctprep.store import SliceStore
from ctseg.cli import main
from ctseg.build import build_config
from ctseg.config import TrainConfig, parse_assignment
from ctseg.errors import ConfigError
from ctseg.train import schedulers, train

TINY = ["--size", "32", "--batch-size", "4", "--set", "model_options.features=[8,16]", "--set", "steps_per_epoch=2",
        "--set", "train_split=all", "--set", "val_split=all", "--quiet"]


def tiny_config(store, out, **extra) -> TrainConfig:
    layer = {"store": str(store), "target": "tumour", "out": str(out), "size": 32, "batch_size": 4, "epochs": 2,
             "steps_per_epoch": 2, "train_split": "all", "val_split": "all", "log_every": 1,
             "model_options": {"features": [8, 16]}}
    return build_config(model="unet", layers=[layer, extra])


def test_a_run_writes_checkpoints_config_history_and_logs(phantom_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(phantom_store, tmp_path / "run")
    result = train(config, progress=False)
    assert (result.epoch, result.step, result.stopped) == (2, 4, "completed")
    run = tmp_path / "run"
    saved = torch.load(run / "last.pt", weights_only=True)
    for key in ("config", "networks", "optimizers", "schedulers", "scalers", "rng", "step", "epoch", "model_state"):
        assert key in saved
    assert saved["config"] == config.to_dict() and saved["step"] == 4
    assert set(saved["rng"][0]) >= {"python", "numpy", "torch"}
    assert (run / "best.pt").is_file() and 0 <= result.best_metric <= 1
    assert TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())) == config
    history = yaml.safe_load((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and set(history[0]["cases"]) == set(
        SliceStore.open(phantom_store).case_ids())
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/soft_dice", "lr/net", "val/dice", "val/precision", "val/recall"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"] == ["samples/ct_truth_prediction"]


def test_an_existing_run_is_not_overwritten(phantom_store, tmp_path):
    config = tiny_config(phantom_store, tmp_path / "run", epochs=1, val_split="none")
    train(config, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, progress=False)


def test_early_stopping_ends_a_run_that_stops_improving(phantom_store, tmp_path):
    config = tiny_config(phantom_store, tmp_path / "run", epochs=6, early_stopping=2, image_every=0, val_budget=0,
                         optimizers={"net": {"lr": 1e-12}}, model_options={"features": [8, 16], "norm": "instance"})
    result = train(config, progress=False)
    # the scores tie (nothing learns at lr 1e-12): ties keep the later model but do not reset the patience
    assert result.stopped == "early_stopping" and result.epoch == 3 and result.best_epoch == 3
    assert len({h["dice"] for h in result.history}) == 1


def test_phases_set_learning_rates_and_weights():
    config = build_config(model="ctumorgan", layers=[{
        "store": "s.zarr", "target": "tumour", "optimizers": {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}},
        "phases": [{"epochs": 2, "loss_weights": {"alpha": 0}},
                   {"epochs": 4, "lr": {"g": 1e-4}, "decay": "linear"}]}])
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizers = {"g": torch.optim.Adam(params, lr=1e-3), "d": torch.optim.Adam(params, lr=1e-3)}
    scheds = schedulers(optimizers, config)
    rates = []
    for _ in range(6):
        rates += [optimizers["g"].param_groups[0]["lr"], optimizers["d"].param_groups[0]["lr"]]
        for name, sched in scheds.items():
            optimizers[name].step()
            sched.step()
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-3, 0.75e-4, 0.75e-3, 0.5e-4, 0.5e-3,
                                   0.25e-4, 0.25e-3])
    assert config.weights_at(1)["alpha"] == 0 and config.weights_at(2)["alpha"] == 0.01  # the default


def test_config_layers_and_assignments(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 3\nmodel_options:\n  loss: dice\n")
    from ctseg.config import load_yaml

    layers = [load_yaml(path), {"store": "s.zarr", "target": "liver,tumour"},
              parse_assignment("optimizers.net.lr=5e-3"), parse_assignment("augment.enabled=false")]
    config = build_config(model="unet", layers=layers, preset="paper")
    assert config.batch_size == 3  # the file beats the preset (1)
    assert config.model_options["loss"] == "dice" and config.model_options["features"][0] == 64
    assert config.optimizers["net"].lr == 5e-3 and config.optimizers["net"].betas == (0.5, 0.999)
    assert config.target == ("liver", "tumour") and config.augment.enabled is False
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(model="unet", layers=[{"store": "s", "target": "t", "batch_sise": 2}])
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("batch_size")
    with pytest.raises(ConfigError, match="no preset"):
        build_config(model="unet", layers=[{"store": "s", "target": "t"}], preset="nope")


def test_cli_train_resume_and_predict(phantom_store, tmp_path):
    runner = CliRunner()
    run = tmp_path / "tiny-run"
    done = runner.invoke(main, ["train", "--model", "unet", "--store", str(phantom_store), "--target", "tumour",
                                "--out", str(run), "--epochs", "1", *TINY])
    assert done.exit_code == 0, done.output
    assert "1 epochs, 2 steps" in done.output
    more = runner.invoke(main, ["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"])
    assert more.exit_code == 0, more.output
    assert "2 epochs, 4 steps" in more.output

    store_path = tmp_path / "predicted.zarr"
    shutil.copytree(phantom_store, store_path)
    done = runner.invoke(main, ["predict", "--checkpoint", str(run / "last.pt"), "--store", str(store_path),
                                "--cases", "volume-0,volume-2", "--threshold", "0.3", "--quiet",
                                "--export-nifti", str(tmp_path / "nifti")])
    assert done.exit_code == 0, done.output
    store = SliceStore.open(store_path)
    assert "pred_tiny-run" in store.label_names("volume-0") and "pred_tiny-run" not in store.label_names("volume-1")
    case = store.read_case("volume-2", labels=["pred_tiny-run", "pred_tiny-run_mask"])
    prob, mask = case.labels["pred_tiny-run"], case.labels["pred_tiny-run_mask"]
    assert prob.dtype == np.float32 and mask.dtype == np.uint8 and prob.shape == mask.shape == (16, 64, 64)
    np.testing.assert_array_equal(mask, (prob >= 0.3).astype(np.uint8))
    attributes = store.label_attributes("volume-2", "pred_tiny-run_mask")
    assert attributes["kind"] == "prediction" and attributes["model"] == "unet" and attributes["step"] == 4
    import nibabel as nib

    exported = nib.load(tmp_path / "nifti" / "volume-2_pred_tiny-run_mask.nii.gz")
    assert exported.shape == (64, 64, 16) and int(np.asarray(exported.dataobj).sum()) == int(mask.sum())


def test_cli_lists_models_and_reports_errors(phantom_store, tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["models"])
    assert listed.exit_code == 0
    from ctseg.build import MODELS

    names = [line.split()[0] for line in listed.output.splitlines()]
    assert names == sorted(MODELS) and {"unet", "ctumorgan", "segan"} <= set(names)
    bad = runner.invoke(main, ["train", "--model", "nope", "--store", str(phantom_store), "--target", "tumour",
                               "--out", str(tmp_path / "r")])
    assert bad.exit_code == 1 and "ctseg: error: unknown model 'nope'" in bad.output
    missing = runner.invoke(main, ["predict", "--checkpoint", str(tmp_path / "none.pt"), "--store", str(phantom_store)])
    assert missing.exit_code == 1 and "none.pt: checkpoint not found" in missing.output
    label = runner.invoke(main, ["train", "--model", "unet", "--store", str(phantom_store), "--target", "spleen",
                                 "--out", str(tmp_path / "r2"), *TINY])
    assert label.exit_code == 1 and "no case has label(s) spleen" in label.output
    not_ckpt = tmp_path / "bad.pt"
    not_ckpt.write_bytes(b"not a checkpoint")
    bad_file = runner.invoke(main, ["predict", "--checkpoint", str(not_ckpt), "--store", str(phantom_store)])
    assert bad_file.exit_code == 1 and "bad.pt: not a readable checkpoint" in bad_file.output


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_processes(phantom_store, tmp_path):
    """DDP under torchrun on the CPU (gloo): two ranks train, rank 0 writes, the run resumes distributed."""
    import subprocess
    import sys

    def torchrun(*args: str) -> str:
        import socket

        with socket.socket() as sock:  # a free port for the rendezvous (torchrun's port 0 hangs)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                   "-m", "ctseg.cli", "train", "--out", str(tmp_path / "ddp"), "--quiet", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = torchrun("--model", "ctumorgan", "--store", str(phantom_store), "--target", "tumour", "--epochs", "1",
                   "--size", "32", "--batch-size", "2", "--max-steps", "2", "--set", "steps_per_epoch=3",
                   "--set", "train_split=all", "--set", "val_split=none",
                   "--set", "model_options={features: [8, 16, 32, 32], d_features: 8, z_dim: 4}")
    assert out.count("2 steps (max_steps)") == 2  # both ranks stopped at the same step
    out = torchrun("--resume")
    assert "1 epochs, 3 steps (completed)" in out
    saved = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert saved["step"] == 3 and len(saved["rng"]) == 2  # one RNG state per rank
