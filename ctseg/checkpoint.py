"""The checkpoint file format: written atomically, read back with ``weights_only`` (no arbitrary pickles).

A checkpoint is a dict: ``format``, ``version``, the resolved ``config`` (dict), ``model``,
``in_channels``, every network's, optimiser's, scheduler's and GradScaler's state, the
model's extra state, the loop counters (epoch, batch within the epoch, step), best-model
tracking, the history, and the RNG states (python, numpy, torch, CUDA) of every rank.

This module knows the file only (writing, reading, checking, RNG states); building a
model from a checkpoint is ctseg.build's. Files are put in place with lkbase.atomic,
whose temporaries (``.lk-tmp-*``) a resumed run clears with
``lkbase.atomic.remove_temporaries``. torch is imported inside the functions, so the
CLI can check a checkpoint path without it.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from ctseg.errors import CheckpointError
from lkbase.atomic import atomic_write

# torch's weights_only refusal names the global it met: 'unsupported GLOBAL posix.system whose ...' or
# 'Unsupported global: GLOBAL posix.system'
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")

FORMAT = "ctseg-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    import torch

    with atomic_write(path) as handle:
        torch.save(obj, handle)


def require_file(path: str | Path) -> Path:
    """``path`` as a Path, or FileNotFoundError naming it when there is no file there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def load(path: str | Path, map_location: str = "cpu") -> dict:
    """Read a checkpoint, checking its format and version."""
    import torch

    path = require_file(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused is None:
            raise CheckpointError(f"{path}: not a readable checkpoint (UnpicklingError: {str(exc)[:120]})") from exc
        raise CheckpointError(f"{path}: not a ctseg checkpoint: it holds the Python object {refused[1]}, which "
                              "weights-only loading refuses (ctseg never runs code from a checkpoint)") from None
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
