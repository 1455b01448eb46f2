"""``ctseg`` answers help, ``models`` and argument errors without importing torch (which takes seconds).

Each command runs as ``python -X importtime -m ctseg.cli ...`` in a subprocess; the
interpreter's import log (stderr) must not name torch. No timing is asserted: the
import log says what the time would be spent on, on any machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from killing import subprocess_env

from ctseg.models.registry import CATALOGUE


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """(the finished ``ctseg`` process, the top-level packages it imported)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctseg.cli", *args], capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    return done, imported


def messages(done: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:")) + done.stdout


@pytest.mark.parametrize("args", [("--help",), ("train", "--help"), ("predict", "--help")])
def test_help_without_torch(args):
    done, imported = run_cli(*args)
    assert done.returncode == 0 and "Usage:" in done.stdout, messages(done)
    assert "torch" not in imported


def test_models_lists_the_catalogue_without_torch():
    done, imported = run_cli("models")
    assert done.returncode == 0, messages(done)
    assert [line.split()[0] for line in done.stdout.splitlines()] == sorted(CATALOGUE)
    assert "torch" not in imported


def test_train_without_a_store_fails_without_torch(tmp_path: Path):
    done, imported = run_cli("train", "--model", "unet", "--target", "tumour", "--out", str(tmp_path / "run"))
    assert done.returncode == 1 and "ctseg: error: config: 'store' is required" in messages(done)
    assert "torch" not in imported


def test_train_with_an_unknown_model_fails_without_torch(tmp_path: Path):
    done, imported = run_cli("train", "--model", "nope", "--store", str(tmp_path / "s.zarr"), "--target", "tumour",
                             "--out", str(tmp_path / "run"))
    assert done.returncode == 1 and "ctseg: error: unknown model 'nope'" in messages(done)
    assert "torch" not in imported


def test_predict_with_a_missing_checkpoint_fails_without_torch(tmp_path: Path):
    done, imported = run_cli("predict", "--checkpoint", str(tmp_path / "missing.pt"), "--store",
                             str(tmp_path / "s.zarr"))
    assert done.returncode == 1 and "missing.pt: checkpoint not found" in messages(done)
    assert "torch" not in imported


def test_the_import_log_does_name_torch_when_a_command_needs_it():
    """The check above can fail: a command that builds a model imports torch, and the log shows it."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ctseg.build"], capture_output=True,
                          text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines())
