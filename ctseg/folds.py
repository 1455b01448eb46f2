"""k-fold cross-validation splits of a store: ``fold=I`` (validation) and ``fold!=I`` (training).

Convention: ``ctprep convert --folds K`` records each train/val case's fold in the store's
manifest (``folds``; ctprep.datasets.fold_table); test cases have no fold and are never
used here. ``ctseg train --fold I`` sets ``val_split: fold=I`` and ``train_split:
fold!=I``; :func:`fold_cases` turns such a split name into its cases (None for a plain
split name), and refuses a store without folds or an I out of range in one line.
"""

from __future__ import annotations

import re

from ctprep.store import SliceStore
from ctseg.errors import ConfigError

_FOLD = re.compile(r"fold(!?=)(-?\d+)")


def fold_splits(fold: int) -> dict[str, str]:
    """The config keys ``--fold I`` sets."""
    return {"train_split": f"fold!={fold}", "val_split": f"fold={fold}"}


def fold_cases(store: SliceStore, split: str) -> list[str] | None:
    """Cases of ``fold=I`` / ``fold!=I`` in ``store`` (None when ``split`` names no fold)."""
    match = _FOLD.fullmatch(split.strip())
    if match is None:
        return None
    table = store.manifest().get("folds")
    if not table:
        raise ConfigError(f"{store.path}: has no cross-validation folds (convert it with --folds K, "
                          f"e.g. re-run its ctprep convert command adding --folds 5)")
    k, fold = int(table["k"]), int(match[2])
    if not 0 <= fold < k:
        raise ConfigError(f"--fold {fold}: {store.path} has {k} folds, 0 to {k - 1}")
    complete = set(store.case_ids())
    inside = match[1] == "="
    cases = sorted(c for c, f in table["cases"].items() if (int(f) == fold) == inside and c in complete)
    if not cases:
        raise ConfigError(f"{store.path}: {'fold' if inside else 'the folds other than'} {fold} of {k} "
                          f"has no case ({len(table['cases'])} train/val cases in all); use fewer folds")
    return cases
