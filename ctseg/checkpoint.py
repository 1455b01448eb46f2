"""Checkpoints: written atomically, read back with ``weights_only`` (no arbitrary pickles).

A checkpoint is a dict: ``format``, ``version``, the resolved ``config`` (dict), ``model``,
``in_channels``, every network's, optimiser's, scheduler's and GradScaler's state, the
model's extra state, the loop counters (epoch, batch within the epoch, step), best-model
tracking, the history, and the RNG states (python, numpy, torch, CUDA) of every rank.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

FORMAT = "ctseg-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable ctseg checkpoint (names the file and what is wrong)."""


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then os.replace it into place:
    a reader sees the old or the new file, never a torn one; a failure leaves no temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _write_atomic(path, lambda handle: handle.write(text.encode()))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    import torch

    _write_atomic(path, lambda handle: torch.save(obj, handle))


def copy_atomic(source: Path, path: Path) -> None:
    """Copy a file to ``path`` atomically."""
    import shutil

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle)

    _write_atomic(path, copy)


RUN_FILES = ("last.pt", "best.pt", "history.json", "config.yaml")  # what a run writes atomically


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed run left in ``run_dir`` (torn writes of RUN_FILES); returns them.

    Only for the process that owns the run (a resume): another process writing into the
    same folder would lose its temporary file.
    """
    stale = [p for name in RUN_FILES for p in run_dir.glob(f".{name}.*.tmp")] + list(run_dir.glob(".best.pt.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load(path: str | Path, map_location: str = "cpu") -> dict:
    """Read a checkpoint, checking its format and version."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a foreign or truncated file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ctseg checkpoint (format is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')}, this ctseg reads {VERSION}")
    return data


# ---- random number generators -----------------------------------------------------------------
def rng_state() -> dict:
    """This process's RNG states, as tensors and plain types (loadable with weights_only)."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- pretrained parts from other runs -------------------------------------------------------------
def load_pretrained(path: str | Path, *, models: tuple[str, ...], role: str):
    """A trained model from another run's checkpoint (eval mode, on the CPU) to use as a frozen part.

    For models built on another run's networks: CasGAN's super-resolution stage (a
    ``srgan`` run), a soft-mask prior (a ``softgan``/``casgan`` run). ``role`` names the
    option that asked for it, for the error when the checkpoint is of another model.
    """
    from ctseg.predict import load_model

    path = Path(path)
    model, config, _ = load_model(path, device="cpu")
    if config.model not in models:
        raise CheckpointError(f"{path}: {role} needs a checkpoint of {' or '.join(models)}, "
                              f"found one of {config.model!r}")
    return model
