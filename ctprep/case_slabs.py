"""A case's stream made into the store's slabs: which slices are kept (``--slices``), the lesion pixels
counted, the image windowed; what ``ctprep convert`` writes for one case (ctprep.convert).

Convention: in the store's slabs every label slice and every windowed slice is computed once, in
the store's writer threads (LazySlices), and the lesion label's pixels are counted as its slices
are made; only resampling, or selecting slices where the source cannot count its lesion label
without the image, loads a case whole.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ctprep.case import CaseRef
from ctprep.errors import CaseInputError
from ctprep.geometry import Geometry
from ctprep.lookup import LazySlices
from ctprep.slabs import CaseStream
from ctprep.store import Slab
from ctprep.windowing import Window, windowed_slices
from lkbase.errors import ParameterError


def parse_slice_mode(mode: str) -> tuple[str, int]:
    """``all`` -> ("all", 0); ``lesion`` -> ("lesion", 0); ``lesion+K`` -> ("lesion", K)."""
    if mode == "all":
        return "all", 0
    if m := re.fullmatch(r"lesion(?:\+(\d+))?", mode):
        return "lesion", int(m[1] or 0)
    raise ParameterError(f"--slices {mode!r}: expected all, lesion or lesion+K")


def select_slices(nz: int, lesion_per_slice: np.ndarray | None, mode: str, case_id: str) -> np.ndarray:
    """Indices of the slices to store, from each slice's lesion pixel count."""
    kind, margin = parse_slice_mode(mode)
    if kind == "all":
        return np.arange(nz)
    if lesion_per_slice is None:
        raise CaseInputError(case_id, f"--slices {mode} needs a lesion label; this source has none")
    # A slice is kept when a lesion slice lies within `margin` of it, clipped to the volume.
    before = np.concatenate([[0], np.cumsum(lesion_per_slice > 0)])
    z = np.arange(nz)
    keep = before[np.minimum(z + margin + 1, nz)] - before[np.maximum(z - margin, 0)] > 0
    return np.flatnonzero(keep)


def store_slabs(stream: CaseStream, windows: tuple[Window, ...], lesion_label: str | None,
                 lesion_pixels: np.ndarray, keep_hu: bool) -> Iterator[Slab]:
    """The store's slabs of ``stream``: image and labels computed slice by slice in the store's writer
    threads (each once), the lesion label's pixels counted into ``lesion_pixels`` as they are made."""
    for part in stream.slabs:
        labels = dict(part.labels)
        if lesion_label is not None:
            labels[lesion_label] = counted(labels[lesion_label], lesion_pixels[part.start:part.start + len(part.hu)])
        yield Slab(start=part.start, image=windowed_slices(part.hu, windows), labels=labels,
                   hu=part.hu if keep_hu else None)


def counted(label, counts: np.ndarray) -> LazySlices:
    """``label``'s slices, each counting its non-zero pixels into ``counts`` when it is made."""
    def make_slice(z: int) -> np.ndarray:
        plane = np.asarray(label[z])
        counts[z] = np.count_nonzero(plane)
        return plane

    return LazySlices(tuple(label.shape), np.uint8, make_slice)


def selected_stream(source, ref: CaseRef, spacing, size, mode: str) -> tuple[CaseStream, Geometry, np.ndarray]:
    """The case resampled (``spacing``, ``size``: --spacing, --size) and its slices selected (``mode``:
    --slices): the stream of the kept slices, the grid before resampling and the kept slice numbers.

    Lesion slices without resampling are streamed when the source counts its lesion label without the
    image (``Source.lesion_stream``: the annotation read first, then the case streamed keeping those
    slices); otherwise the case is loaded whole."""
    if not (spacing or size) and parse_slice_mode(mode)[0] == "lesion":
        found = source.lesion_stream(ref)
        if found is not None:
            counts, stream = found
            selected = _kept(ref, select_slices(len(counts), counts, mode, ref.case_id), mode,
                             source.manifest.lesion_label)
            return stream.keeping(selected), stream.geometry, selected
    volume = source.load(ref)
    canonical_geometry = volume.geometry  # before resampling: needed to export results back
    if spacing or size:
        from ctprep.resample import resample_case

        volume = resample_case(volume, spacing=spacing, size=size)
    nz = volume.geometry.shape[0]
    lesion_label = source.manifest.lesion_label if source.manifest.lesion_label in volume.labels else None
    lesion_all = None
    if lesion_label is not None and parse_slice_mode(mode)[0] == "lesion":
        lesion = np.asarray(volume.labels[lesion_label])  # once: counted here, its kept slices stored
        lesion_all = np.count_nonzero(lesion.reshape(nz, -1), axis=1)
        volume = dataclasses.replace(volume, labels={**volume.labels, lesion_label: lesion})
    selected = _kept(ref, select_slices(nz, lesion_all, mode, ref.case_id), mode, lesion_label)
    return CaseStream.of_volume(volume, selected), canonical_geometry, selected


def _kept(ref: CaseRef, selected: np.ndarray, mode: str, lesion_label: str | None) -> np.ndarray:
    """``selected``, refused when empty: the case's last file names it (NIfTI: the segmentation; DICOM
    sources: the annotation file)."""
    if len(selected) == 0:
        raise CaseInputError(Path(ref.root) / ref.files[-1][1] if ref.files else ref.case_id,
                             f"no {lesion_label} voxels, so --slices {mode} keeps no slice")
    return selected
