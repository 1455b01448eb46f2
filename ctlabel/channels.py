"""Which stored windows GrabCut and matting see: :func:`choose_channels`.

Convention: a store keeps one uint8 channel per HU window (``CaseRecord.windows``, in
channel order). GrabCut and closed-form matting treat the channels they get as colour
(:func:`ctlabel.matting.matting_image` cycles them to three). Stacking unrelated windows
(DeepLesion's abdomen, lung, bone) as colour hurts: on a real lung nodule one window
segments better than the three together (issue 15). So the default follows the evidence:

1. ``dicom``: DeepLesion's per-row DICOM window (``ctprep convert --dicom-window``), the
   window the radiologist measured the lesion in, when the case stores it;
2. else the window named for the lesion's site in the dataset manifest
   (``lesion_window``: lung for NSCLC and LIDC, liver for LiTS, kidney for KiTS19), when stored;
3. else every stored window, with the reason recorded.

``--channels NAME,NAME`` overrides the default; a case lacking a requested window is
skipped with one line naming it. The choice is recorded per case in the labels' attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ctprep.datasets import load_dataset_manifest
from ctprep.errors import ManifestError
from ctprep.sources.deeplesion import DICOM_WINDOW_NAME
from lkbase.errors import ParameterError

AUTO = "auto"  # what the parameters record when no --channels was given


@dataclass(frozen=True, kw_only=True)
class ChannelChoice:
    """The channels (indices into the stored windows) GrabCut and matting use, and why."""

    indices: tuple[int, ...]
    names: tuple[str, ...]
    why: str

    def __post_init__(self) -> None:
        if not self.indices or len(self.indices) != len(self.names):
            raise ParameterError(f"channel choice must name >= 1 channel per index, found {self.indices} "
                                 f"{self.names}")

    def to_dict(self) -> dict:
        return {"names": list(self.names), "why": self.why}


def site_window(dataset: str) -> str | None:
    """The manifest's ``lesion_window`` of ``dataset`` (None for an unknown dataset or none named)."""
    try:
        return load_dataset_manifest(dataset).lesion_window
    except ManifestError:
        return None


def choose_channels(case_id: str, stored: Sequence[str], dataset: str,
                    requested: Sequence[str] | None = None) -> ChannelChoice:
    """The channels for a case whose stored windows are ``stored`` (see the module docstring).

    Raises ``LookupError`` (the case is skipped) when a requested window is not stored.
    """
    stored = list(stored)
    if requested:
        missing = [n for n in requested if n not in stored]
        if missing:
            raise LookupError(f"case {case_id} has no window {missing[0]!r} for --channels "
                              f"(stored: {', '.join(stored)})")
        return ChannelChoice(indices=tuple(stored.index(n) for n in requested), names=tuple(requested),
                             why="--channels")
    if DICOM_WINDOW_NAME in stored:
        return ChannelChoice(indices=(stored.index(DICOM_WINDOW_NAME),), names=(DICOM_WINDOW_NAME,),
                             why="the lesion's own DICOM window")
    site = site_window(dataset)
    if site is not None and site in stored:
        return ChannelChoice(indices=(stored.index(site),), names=(site,),
                             why=f"the {dataset} manifest's lesion window")
    reason = (f"no window {site!r} stored" if site else f"no lesion window known for dataset {dataset!r}")
    return ChannelChoice(indices=tuple(range(len(stored))), names=tuple(stored),
                         why=f"all stored windows ({reason})")
