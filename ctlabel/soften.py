"""Softened labels (SoftGAN: max of the soft mask and the binary mask) and binarised soft masks.

* ``softened_<x>`` (float32) = ``max(soft_<x>, <binary>)``: the expert's mask stays 1, matting
  only adds soft values around it, as the SoftGAN paper trains on;
* ``binary_<x>`` (uint8 0/1) = ``soft_<x> >= threshold`` (0.5 by default).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ctlabel.config import ATTRIBUTE_KEY
from ctlabel.errors import LabelInputError
from ctlabel.resume import selected_cases
from ctprep.store import SliceStore
from ctprep.store.layout import binary_label, soft_base, softened_label
from lkbase.errors import LesionkitError, ParameterError

DEFAULT_THRESHOLD = 0.5


def softened(soft: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """``max(soft, binary)`` as float32: 1 wherever the binary mask is, the soft value elsewhere."""
    soft, binary = np.asarray(soft), np.asarray(binary)
    if soft.shape != binary.shape:
        raise ParameterError(f"soft mask {soft.shape} and binary mask {binary.shape} differ in shape")
    return np.maximum(soft.astype(np.float32, copy=False), (binary != 0).astype(np.float32))


def binarised(soft: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """``soft >= threshold`` as uint8 0/1."""
    _check_threshold(threshold)
    return (np.asarray(soft) >= threshold).astype(np.uint8)


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 < threshold <= 1):
        raise ParameterError(f"--threshold must be in (0, 1], found {threshold!r}")


@dataclass(frozen=True, kw_only=True)
class SoftenConfig:
    """``ctlabel soften``: which soft label, which binary label, what to write."""

    store: str
    soft: str  # e.g. soft_tumour
    binary: str | None = None  # e.g. tumour: writes softened_<name>
    threshold: float | None = None  # writes binary_<name>; used at 0.5 when no binary label is given
    name: str | None = None  # default: the soft label without its soft_ prefix
    cases: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _check_threshold(self.threshold)

    @property
    def base(self) -> str:
        return self.name or soft_base(self.soft)

    @property
    def effective_threshold(self) -> float | None:
        """The threshold to binarise at, or None when only the softened label is asked for."""
        if self.threshold is not None:
            return float(self.threshold)
        return None if self.binary else DEFAULT_THRESHOLD

    def outputs(self) -> tuple[str, ...]:
        names = (softened_label(self.base),) if self.binary else ()
        return names + ((binary_label(self.base),) if self.effective_threshold is not None else ())

    def to_dict(self) -> dict:
        return {"store": self.store, "soft": self.soft, "binary": self.binary, "threshold": self.threshold,
                "name": self.name, "cases": list(self.cases) if self.cases else None}

    @classmethod
    def from_dict(cls, data: dict) -> "SoftenConfig":
        data = dict(data)
        data["cases"] = tuple(data["cases"]) if data.get("cases") else None
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class SoftenReport:
    store: str
    outputs: tuple[str, ...]
    written: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (case, reason)
    seconds: float

    def lines(self) -> list[str]:
        lines = [f"{self.store}: {', '.join(self.outputs)} written for {len(self.written)} cases, "
                 f"{len(self.skipped)} skipped in {self.seconds:.1f} s"]
        return lines + [f"  skipped case {case}: {reason}" for case, reason in self.skipped]


def soften_store(config: SoftenConfig) -> SoftenReport:
    """Write the softened and/or binarised labels for every case that has ``config.soft``."""
    started = time.perf_counter()
    store = SliceStore.open(config.store, mode="a")
    case_ids = selected_cases(store, config.cases)
    written, skipped = [], []
    for case_id in case_ids:
        try:
            _soften_case(store, case_id, config)
            written.append(case_id)
        except (LesionkitError, LookupError, ValueError, OSError) as exc:
            skipped.append((case_id, str(exc)))
    if not written and skipped:
        raise LabelInputError(f"{store.path}: no case could be softened; first: {skipped[0][0]}: {skipped[0][1]}")
    return SoftenReport(store=str(config.store), outputs=config.outputs(), written=tuple(written),
                        skipped=tuple(skipped), seconds=time.perf_counter() - started)


def _soften_case(store: SliceStore, case_id: str, config: SoftenConfig) -> None:
    available = store.label_names(case_id)
    wanted = [config.soft] + ([config.binary] if config.binary else [])
    missing = [n for n in wanted if n not in available]
    if missing:
        raise LookupError(f"case {case_id} has no label {missing[0]!r} (labels: {', '.join(available)})")
    data = store.read_case(case_id, labels=wanted)
    soft = data.labels[config.soft]
    if soft.dtype != np.float32:
        raise LabelInputError(f"case {case_id}: {config.soft!r} is {soft.dtype}, expected a float32 soft mask")
    if config.binary:
        binary = data.labels[config.binary]
        if binary.dtype != np.uint8 or binary.max(initial=0) > 1:
            raise LabelInputError(f"case {case_id}: {config.binary!r} is not a binary 0/1 mask")
        store.write_label(case_id, softened_label(config.base), softened(soft, binary),
                          attributes={ATTRIBUTE_KEY: {"kind": "softened",
                                                      "parameters": {"soft": config.soft, "binary": config.binary}}})
    threshold = config.effective_threshold
    if threshold is not None:
        store.write_label(case_id, binary_label(config.base), binarised(soft, threshold),
                          attributes={ATTRIBUTE_KEY: {"kind": "binary",
                                                      "parameters": {"soft": config.soft, "threshold": threshold}}})
