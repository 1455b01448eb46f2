"""The rescale rules of a CT series: how stored pixel values become HU, and when that is refused.

Convention: a CT Image object must carry RescaleIntercept and RescaleSlope (type 1 in the DICOM CT
Image module); ``HU = stored * slope + intercept``. pydicom's ``apply_modality_lut`` returns the
stored values unchanged when both tags (and a Modality LUT Sequence) are absent, which for a
scanner storing unsigned values puts air near 0 instead of -1000 HU. ctprep therefore

* refuses a slice whose RescaleSlope is 0, negative or not finite (every voxel would become the
  intercept, or HU would run backwards), or whose RescaleIntercept is not finite;
* refuses a series in which some slices carry the rescale tags and others do not (those slices
  would be off by the intercept, typically 1024 HU), listing the slices without them;
* takes a series in which no slice carries them as already in HU (the identity modality LUT) when
  its stored values include negative ones, with a note; and refuses it when every stored value is
  >= 0: raw unsigned scanner values whose intercept cannot be known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ctprep.errors import CaseInputError

_TAGS = ("RescaleSlope", "RescaleIntercept")


@dataclass(frozen=True, kw_only=True)
class Rescale:
    """One slice's rescale: the slope and intercept used, and which of the two tags the file carries."""

    slope: float
    inter: float
    tagged: tuple[str, ...]

    def __post_init__(self) -> None:
        if not set(self.tagged) <= set(_TAGS):
            raise ValueError(f"tagged must be a subset of {_TAGS}, found {self.tagged}")


def read_rescale(path: Path, ds) -> Rescale:
    """The slice's rescale (slope 1, intercept 0 where a tag is absent); refuses degenerate values."""
    values = {}
    for keyword, default in zip(_TAGS, (1.0, 0.0)):
        value = ds.get(keyword, None)
        values[keyword] = default if value is None or value == "" else float(value)
    slope, inter = values["RescaleSlope"], values["RescaleIntercept"]
    if not math.isfinite(slope) or slope <= 0:
        raise CaseInputError(path, f"RescaleSlope {slope:g} is degenerate (must be a positive number): "
                                   f"every voxel would be {inter:g} HU or HU would run backwards")
    if not math.isfinite(inter):
        raise CaseInputError(path, f"RescaleIntercept {inter} is not a finite number")
    tagged = tuple(k for k in _TAGS if ds.get(k, None) not in (None, ""))
    return Rescale(slope=slope, inter=inter, tagged=tagged)


def check_series_rescale(paths: Sequence[Path], rescales: Sequence[Rescale], raw_min: int) -> list[str]:
    """Notes for the series (empty when every slice carries both tags), or :class:`CaseInputError`
    when the slices disagree on which rescale tags they carry, or carry none over unsigned raw values.
    ``raw_min``: the smallest stored value of the series (before rescale and padding)."""
    kinds = {r.tagged for r in rescales}
    if len(kinds) > 1:
        full = max(kinds, key=len)
        lacking = sorted(p.name for p, r in zip(paths, rescales) if r.tagged != full)
        shown = ", ".join(lacking[:5]) + (" ..." if len(lacking) > 5 else "")
        raise CaseInputError(Path(paths[0]).parent,
                             f"inconsistent rescale: {len(lacking)} of {len(paths)} slices lack "
                             f"{'/'.join(k for k in full if k not in min(kinds, key=len))} that the others carry "
                             f"({shown}); their HU would be off by the intercept")
    if kinds == {()}:
        if raw_min >= 0:
            raise CaseInputError(Path(paths[0]).parent,
                                 f"no slice carries RescaleSlope/RescaleIntercept and every stored value is >= 0 "
                                 f"(min {raw_min}): raw unsigned scanner values, not HU (air would be near 0); "
                                 "the intercept cannot be known")
        return ["no RescaleSlope/RescaleIntercept on any slice: stored values taken as HU (identity modality LUT; "
                f"they include negative values, min {raw_min})"]
    return []
