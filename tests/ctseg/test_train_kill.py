"""A training run killed (SIGKILL) at chosen and random moments, checkpoint writes included, then resumed.

Every checkpoint file left loads (a torn write stays in an lkbase.atomic temporary,
``.lk-tmp-*``, never under a checkpoint's name), ``--resume`` continues from the last complete checkpoint, and the resumed
run ends with exactly the weights, optimiser state, best model and history of a run that was
never interrupted. The killed runs are ``ctseg train`` subprocesses on one torch thread (the
in-process runs here use one thread too: tests/ctseg/conftest.py), so the arithmetic is the same.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from killing import hook_env, kill, start, subprocess_env, wait_for, wait_killed

from ctseg import checkpoint as ckpt
from ctseg.cli import main
from ctseg.errors import CheckpointError
from lkbase.atomic import TEMP_PREFIX

# 3 epochs of 4 steps, a checkpoint every 3 steps and at each epoch's end: checkpoints are serialised
# at steps 3, 4 (end of epoch 1), 6, 8 (end of 2), 9, 12 and 12 (end of 3): seven torch.save calls.
SAVES = 7


def _train_args(store: Path, out: Path) -> list[str]:
    return ["train", "--model", "unet", "--store", str(store), "--target", "tumour", "--out", str(out),
            "--epochs", "3", "--size", "32", "--batch-size", "4", "--seed", "3", "--quiet",
            "--set", "model_options.features=[8,16]", "--set", "steps_per_epoch=4", "--set", "checkpoint_every=3",
            "--set", "train_split=all", "--set", "val_split=all", "--set", "image_every=0",
            "--set", "val_budget=0"]


# sitecustomize of the killed run. Logs every complete torch.save of a checkpoint ("<file> <step>")
# and SIGKILLs the process either in the middle of the n-th torch.save (half its bytes on disk) or
# right after the k-th os.replace that puts <file> in place in the run folder (a commit point).
KILL_HOOK = textwrap.dedent("""
    import io, os, signal
    from pathlib import Path

    if os.environ.get("LESIONKIT_TEST_KILL"):
        import torch
        from ctseg import checkpoint

        mode, *where = os.environ["LESIONKIT_TEST_KILL"].split(":")
        log, run = Path(os.environ["LESIONKIT_TEST_LOG"]), Path(os.environ["LESIONKIT_TEST_RUN"]).resolve()
        saves, replaced = [0], {}
        original_save, original_atomic, original_replace = torch.save, checkpoint.save_atomic, os.replace

        def torn_save(obj, handle, *args, **kwargs):
            saves[0] += 1
            if mode == "during" and saves[0] == int(where[0]):
                buffer = io.BytesIO()
                original_save(obj, buffer, *args, **kwargs)
                handle.write(buffer.getvalue()[: buffer.tell() // 2])
                handle.flush()
                os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return original_save(obj, handle, *args, **kwargs)

        def logged_atomic(obj, path):
            original_atomic(obj, path)
            with log.open("a") as out:
                out.write(f"{Path(path).name} {obj['step']}\\n")

        def replace(source, destination, *args, **kwargs):
            original_replace(source, destination, *args, **kwargs)
            destination = Path(destination)
            if mode == "replaced" and destination.parent.resolve() == run:
                replaced[destination.name] = replaced.get(destination.name, 0) + 1
                if [destination.name, str(replaced[destination.name])] == where:
                    os.kill(os.getpid(), signal.SIGKILL)

        torch.save, checkpoint.save_atomic, os.replace = torn_save, logged_atomic, replace
""")


@pytest.fixture(scope="module")
def straight(phantom_store, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    done = CliRunner().invoke(main, _train_args(phantom_store, out))
    assert done.exit_code == 0, done.output
    assert "3 epochs, 12 steps (completed)" in done.output
    return out


def _checkpoints_load(run: Path) -> dict[str, dict]:
    """Every file of the run folder is a loadable checkpoint, the config, history, logs or a temporary."""
    loaded = {}
    for path in run.iterdir():
        if path.name.startswith(TEMP_PREFIX):
            continue
        if path.suffix == ".pt":
            loaded[path.name] = ckpt.load(path)  # raises CheckpointError for a torn file
        else:
            assert path.name in {"config.yaml", "history.json", "tensorboard"}, f"unexpected file {path.name}"
    return loaded


def _state(checkpoint: dict) -> dict:
    return {"networks": checkpoint["networks"], "optimizers": checkpoint["optimizers"],
            "schedulers": checkpoint["schedulers"], "loop": checkpoint["loop"]}


def _assert_equal(a, b, where: str = "") -> None:
    """Bit-for-bit equality of nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _resume_and_compare(run: Path, straight: Path) -> None:
    done = CliRunner().invoke(main, ["train", "--out", str(run), "--resume", "--quiet"])
    assert done.exit_code == 0, done.output
    assert "3 epochs, 12 steps (completed)" in done.output
    resumed, reference = _checkpoints_load(run), _checkpoints_load(straight)
    assert resumed.keys() == reference.keys() == {"last.pt", "best.pt"}
    for name in resumed:
        _assert_equal(_state(resumed[name]), _state(reference[name]), name)
    assert json.loads((run / "history.json").read_text()) == json.loads((straight / "history.json").read_text())
    left = sorted(p.name for p in run.iterdir() if p.name.startswith(TEMP_PREFIX))
    assert not left, f"temporary files of the killed run left behind: {left}"


def _killed_by_hook(store: Path, run: Path, tmp_path: Path, kill_at: str) -> list[tuple[str, int]]:
    """Run training until the hook kills it at ``kill_at``; the complete checkpoint writes, in order."""
    log = tmp_path / "saves.log"
    env = hook_env(tmp_path / "hook", KILL_HOOK, LESIONKIT_TEST_KILL=kill_at, LESIONKIT_TEST_LOG=str(log),
                   LESIONKIT_TEST_RUN=str(run), OMP_NUM_THREADS="1")
    process = start([sys.executable, "-m", "ctseg.cli", *_train_args(store, run)], env)
    try:
        wait_killed(process)
    finally:
        kill(process)
    return [(name, int(step)) for name, step in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.timeout(120)
def test_killed_inside_a_checkpoint_write(phantom_store, straight, tmp_path):
    """SIGKILL in the middle of a seeded checkpoint write: the torn bytes never become a checkpoint."""
    n = random.Random(1).randint(2, SAVES)
    run = tmp_path / "run"
    saves = _killed_by_hook(phantom_store, run, tmp_path, f"during:{n}")
    assert len(saves) == n - 1  # the n-th write never completed
    torn = [p for p in run.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(torn) == 1 and torn[0].name.endswith(("-last.pt", "-best.pt")) and torn[0].stat().st_size > 0
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ckpt.load(torn[0])  # the half-written file, under a temporary name
    assert _checkpoints_load(run)["last.pt"]["step"] == saves[-1][1]  # the last complete checkpoint
    _resume_and_compare(run, straight)


@pytest.mark.timeout(120)
def test_killed_right_after_the_epoch_checkpoint_is_in_place(phantom_store, straight, tmp_path):
    """SIGKILL as soon as epoch 1's last.pt (the best model so far) is in place: best.pt and history are too."""
    run = tmp_path / "run"
    _killed_by_hook(phantom_store, run, tmp_path, "replaced:last.pt:2")  # steps 3, then 4 (epoch 1's end)
    left = _checkpoints_load(run)
    assert left["last.pt"]["step"] == 4 and left["last.pt"]["epoch"] == 1
    _resume_and_compare(run, straight)


@pytest.mark.timeout(120)
def test_killed_at_a_random_moment(phantom_store, straight, tmp_path):
    """SIGKILL at a seeded random moment after the first checkpoint (training, validation or a write)."""
    run = tmp_path / "run"
    process = start([sys.executable, "-m", "ctseg.cli", *_train_args(phantom_store, run)],
                    subprocess_env(OMP_NUM_THREADS="1"))
    try:
        wait_for((run / "last.pt").exists, process, timeout=60, what="training")
        time.sleep(random.Random(2).uniform(0.0, 0.5))
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    _checkpoints_load(run)
    _resume_and_compare(run, straight)
