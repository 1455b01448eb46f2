"""Names and places in a slice store: the one module that states every naming rule of the format.

Functions: case_path, case_lock_name, slice_chunks, validate_case_id, validate_label_name, staging_name,
is_staged, local_leftover, remote_leftover, trimap_label, soft_label, soft_base,
softened_label, binary_label, run_label_stem, prediction_labels, store_kind, wrong_kind.

Convention: a label name is a plain array name (no '/', no leading '.' or '_'). Names
starting with ``_staging.`` are labels being written (never listed as labels). Labels
derived from a label ``<name>`` are ``trimap_<name>`` (uint8 trimap), ``soft_<name>``
(float32 alpha), ``softened_<name>`` and ``binary_<name>`` (ctlabel soften); a model
run ``<run>`` writes ``pred_<run>`` (float32 probabilities) and ``pred_<run>_mask``
(uint8), ``<run>`` cleaned to letters, digits, '-' and '_'.

Kinds of store (the root attribute's ``kind``; absent means ``dataset``): a dataset store
(images, truth labels) or a predictions store (prediction labels only, naming the dataset
store it was predicted from: ctprep.store.predictions).
"""

from __future__ import annotations

import re

import numpy as np

from lkbase.errors import ParameterError

FORMAT_NAME = "lesionkit-ct-slice-store"
FORMAT_VERSION = 1
ZSTD_LEVEL = 1
_STORE_KEY = "lesionkit"  # root attribute: format, version, parameters, manifest
_CASE_KEY = "lesionkit_case"  # case group attribute: the completion marker
_STAGING = "_staging."  # prefix of a label being written; never listed as a label
LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))

# Chunk files named c.<z>.0.0.0 side by side in the array's folder: with the default "/"
# separator every slice costs three directories, most of a chunk's write time on slow disks.
_CHUNK_KEYS = {"name": "default", "separator": "."}

PREDICTION_PREFIX = "pred_"
DATASET_KIND = "dataset"
PREDICTIONS_KIND = "predictions"
_SOFT_PREFIX = "soft_"


def slice_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The chunk shape of every stored array: one slice per chunk."""
    return (1, *shape[1:])


def case_path(case_id: str) -> str:
    """The case's group, relative to the store root."""
    return f"cases/{case_id}"


def case_lock_name(case_id: str) -> str:
    """The file at the store root that a case's one writer holds (flock) while it writes the case."""
    return f".lesionkit.case.{case_id}.lock"


def validate_case_id(case_id: str) -> None:
    if not case_id or "/" in case_id or case_id.startswith(".") or case_id != case_id.strip():
        raise ParameterError(f"case id {case_id!r} cannot name a store group")


def validate_label_name(name: str) -> None:
    if not name or "/" in name or name.startswith((".", "_")) or name != name.strip():
        raise ParameterError(f"label name {name!r} cannot name a store array (no '/', no leading '.' or '_')")


def staging_name(name: str, token: str) -> str:
    """The array a write of label ``name`` goes to first (``token``: pid, ``old.<pid>`` or a random hex)."""
    return f"{_STAGING}{name}.{token}"


def is_staged(array_name: str) -> bool:
    """Whether an array in ``labels/`` is a label being written, not a label."""
    return array_name.startswith(_STAGING)


def local_leftover(name: str) -> re.Pattern:
    """Staging folders of label ``name`` that killed local writers left (``.<pid>`` or ``.old.<pid>``)."""
    return re.compile(rf"{re.escape(_STAGING + name)}\.(old\.)?[0-9]+")


def remote_leftover(name: str) -> re.Pattern:
    """Staged copies of label ``name`` that interrupted object-store writes left (``.<12 hex>``)."""
    return re.compile(rf"{re.escape(_STAGING + name)}\.[0-9a-f]{{12}}")


def trimap_label(name: str) -> str:
    """The trimap ctlabel makes for the lesions of ``name``."""
    return f"trimap_{name}"


def soft_label(name: str) -> str:
    """The soft mask ctlabel makes for the lesions of ``name``."""
    return f"{_SOFT_PREFIX}{name}"


def soft_base(soft: str) -> str:
    """The ``name`` of a soft label ``soft_<name>`` (``soft`` itself when it has no such prefix)."""
    return soft.removeprefix(_SOFT_PREFIX)


def softened_label(base: str) -> str:
    """``ctlabel soften``'s max(soft, binary) label."""
    return f"softened_{base}"


def binary_label(base: str) -> str:
    """``ctlabel soften``'s thresholded soft label."""
    return f"binary_{base}"


def run_label_stem(run: str) -> str:
    """A run name cleaned for label names: letters, digits, '-' and '_' only (may come out empty)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", run).strip("_")


def prediction_labels(run: str) -> tuple[str, str]:
    """The labels a model run writes: (``pred_<run>`` probabilities, ``pred_<run>_mask``), ``run`` cleaned."""
    probabilities = f"{PREDICTION_PREFIX}{run_label_stem(run)}"
    return probabilities, f"{probabilities}_mask"


def store_kind(info: dict) -> str:
    """The kind of a store from its root attribute (stores written before kinds existed are datasets)."""
    return str(info.get("kind", DATASET_KIND))


def wrong_kind(path, info: dict, wanted: str) -> str:
    """The one line refusing to open a store of another kind than ``wanted``."""
    kind = store_kind(info)
    if kind == PREDICTIONS_KIND:
        dataset = (info.get("dataset") or {}).get("path", "?")
        return (f"{path}: is a predictions store (predictions of {dataset}), not a {wanted} store; "
                "give the dataset store (`ctseg evaluate` reads this one with --predictions)")
    return f"{path}: is a {kind} store, not a {wanted} store"
