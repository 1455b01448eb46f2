"""What a run's store did to the CT before the model saw it: windows, spacing, in-plane size.

A checkpoint records this (key ``preprocessing``, written by ctseg.train from the
store's conversion parameters and its first case's windows), so that ``ctseg predict
--input`` can bring a CT file or DICOM series that was never converted onto the same
inputs without the store. Checkpoints written before this key existed fall back to the
store named in their configuration, when it is still readable.

``windows`` are all the window channels of the store in channel order; the first
``derivable`` of them are computed from HU (the conversion's ``--window``s); later ones
came from a source's own files (DeepLesion's DICOM window) and cannot be made from a
CT file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.windowing import Window
from ctseg.errors import CheckpointError


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    windows: tuple[Window, ...]
    derivable: int
    spacing: tuple[float, float, float] | None  # (z, y, x) mm, 0 keeps an axis; None: not resampled
    size: tuple[int, int] | None  # (y, x)

    def __post_init__(self) -> None:
        if not self.windows:
            raise CheckpointError("preprocessing: at least one window is needed, found none")
        if not 0 <= self.derivable <= len(self.windows):
            raise CheckpointError(f"preprocessing: derivable must be 0..{len(self.windows)}, found {self.derivable}")
        if self.spacing is not None and len(self.spacing) != 3:
            raise CheckpointError(f"preprocessing: spacing must be 3 values (z, y, x), found {self.spacing}")
        if self.size is not None and len(self.size) != 2:
            raise CheckpointError(f"preprocessing: size must be 2 values (y, x), found {self.size}")

    def to_dict(self) -> dict:
        return {"windows": [w.to_dict() for w in self.windows], "derivable": self.derivable,
                "spacing": list(self.spacing) if self.spacing else None,
                "size": list(self.size) if self.size else None}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return cls(windows=tuple(Window.from_dict(w) for w in data["windows"]), derivable=int(data["derivable"]),
                   spacing=tuple(float(v) for v in data["spacing"]) if data.get("spacing") else None,
                   size=tuple(int(v) for v in data["size"]) if data.get("size") else None)


def store_preprocessing(store_path: str | Path) -> dict:
    """The preprocessing of a store as a dict (what a checkpoint keeps)."""
    from ctprep.store import SliceStore

    store = SliceStore.open(store_path)
    parameters = store.parameters
    cases = store.case_ids()
    converted = tuple(Window.from_dict(w) for w in parameters.get("windows") or [])
    windows = store.record(cases[0]).windows if cases else converted
    return Preprocessing(windows=tuple(windows), derivable=len(converted) if converted else len(windows),
                         spacing=tuple(parameters["spacing"]) if parameters.get("spacing") else None,
                         size=tuple(parameters["size"]) if parameters.get("size") else None).to_dict()


def checkpoint_preprocessing(data: dict, path: str | Path) -> Preprocessing:
    """The checkpoint's recorded preprocessing, or (older checkpoints) its store's."""
    if data.get("preprocessing"):
        return Preprocessing.from_dict(data["preprocessing"])
    store = data.get("config", {}).get("store")
    try:
        return Preprocessing.from_dict(store_preprocessing(store))
    except Exception as exc:
        raise CheckpointError(f"{path}: records no preprocessing (windows, spacing) and its store {store} is not "
                              f"readable ({exc}); train it again with this ctseg") from exc
