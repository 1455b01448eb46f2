"""A DICOM CT case streamed: headers first, then the pixels a slab of files at a time.

Convention: the series is planned from its headers (read_ct_series without pixels: order,
geometry; the annotations rasterised on that plan), then its files are read in the plan's
order, :data:`ctprep.slabs.SLAB_SLICES` at a time, each slab handed on to be windowed and
compressed while the next one is read (parsing holds the GIL; windowing and zstd do not).
Only a series whose plan needs no pixels is streamed: no duplicate positions, tilt or
irregular steps, slices along its last axis (:func:`streamable`); the notes the pixels add
(rescale, padding) complete the case's ``ct`` annotations after the last slab.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import Callable, Iterator, NoReturn

import numpy as np

from ctprep.case import CaseRef, CaseVolume
from ctprep.errors import CaseInputError
from ctprep.formats.dicom import CtSeries, pixel_notes, with_pixels
from ctprep.formats.dicom_scan import sop_instance
from ctprep.geometry import reorient
from ctprep.lookup import nonzero_per_slice
from ctprep.slabs import SLAB_SLICES, CaseStream, SourceSlab
from ctprep.sources.dicom_source import DicomSource, HashInBackground


class HeadersFirstSource(DicomSource):
    """A DICOM source whose case is made from its CT series by :meth:`_case`: loaded whole, or streamed
    (the series planned from its headers, its pixels read slab by slab)."""

    def load(self, ref: CaseRef) -> CaseVolume:
        volume, _, hashing = self._case(ref, pixels=True)
        return dataclasses.replace(volume, inputs=hashing.result())

    def stream(self, ref: CaseRef) -> CaseStream:
        """Headers first, then the pixels a slab at a time while the store compresses the previous slab;
        a series whose plan needs its pixels (duplicates, gantry tilt, irregular steps) is loaded whole."""
        try:
            volume, ct, hashing = self._case(ref, pixels=False)
        except CaseInputError as exc:
            self._refuse_as_load(ref, exc)
        if not streamable(ct):
            hashing.cancel()
            return super().stream(ref)
        return self._series_stream(ref, volume, ct, hashing)

    def _series_stream(self, ref: CaseRef, volume: CaseVolume, ct: CtSeries, hashing: HashInBackground) -> CaseStream:
        return series_stream(volume, ct, hashing, refuse=lambda exc: self._refuse_as_load(ref, exc))

    def lesion_stream(self, ref: CaseRef) -> tuple[np.ndarray, CaseStream] | None:
        """The lesion label's pixels per slice, from the annotation rasterised on the series' plan (no pixels
        read), and the stream made from that same plan; None for a series loaded whole anyway."""
        try:
            volume, ct, hashing = self._case(ref, pixels=False)
        except CaseInputError as exc:
            self._refuse_as_load(ref, exc)
        label = volume.labels.get(self.manifest.lesion_label)
        if label is None or not streamable(ct):
            hashing.cancel()
            return None
        return nonzero_per_slice(label, threads=1), self._series_stream(ref, volume, ct, hashing)

    @abstractmethod
    def _case(self, ref: CaseRef, pixels: bool) -> tuple[CaseVolume, CtSeries, HashInBackground]:
        """The case (without its inputs) from its series read with ``pixels`` (or its headers only:
        read_ct_series, ``hu`` a placeholder), the series, and the hashing of the inputs (running)."""


def streamable(ct: CtSeries) -> bool:
    """Whether a series planned from its headers can be read a slab at a time into the same case."""
    return not ct.notes and ct.source_grid.axes[2][0] == 2 and len(ct.files) == ct.geometry.shape[0] > 1


def series_stream(volume: CaseVolume, ct: CtSeries, hashing: HashInBackground,
                  refuse: Callable[[CaseInputError], NoReturn]) -> CaseStream:
    """``volume`` (labels on the plan of ``ct``, ``hu`` a placeholder) with its HU read slab by slab.

    ``refuse(exc)`` raises the error for input found bad on the way (the source's load wording)."""
    annotations = {key: dict(value) if isinstance(value, dict) else value
                   for key, value in volume.annotations.items()}

    def slabs() -> Iterator[SourceSlab]:
        n, flip = len(ct.files), ct.source_grid.axes[2][1]
        read = []
        try:
            for first in range(0, n, SLAB_SLICES):
                part = [_reread(path, header) for path, header in zip(ct.files[first:first + SLAB_SLICES],
                                                                       ct.headers[first:first + SLAB_SLICES])]
                native = np.stack([s.hu for s in part])
                for s in part:
                    s.hu = None  # type: ignore[assignment]  # the slab holds them now
                read += part
                start = first if flip == 1 else n - first - len(part)
                yield SourceSlab(start=start, hu=reorient(native.transpose(2, 1, 0), ct.source_grid),
                                 labels={name: label[start:start + len(part)] for name, label in volume.labels.items()})
            notes = pixel_notes(read)
        except CaseInputError as exc:
            hashing.cancel()
            refuse(exc)
        if "ct" in annotations:
            annotations["ct"] = {**annotations["ct"], "notes": list(ct.notes) + notes}

    return CaseStream(ref=volume.ref, geometry=volume.geometry, source_grid=volume.source_grid,
                      label_specs=volume.label_specs, slabs=slabs(), rows=volume.geometry.shape[0],
                      inputs=hashing.result, annotations=annotations, windows=volume.windows)


def _reread(path, header):
    """A file of the plan with its pixels (with_pixels); its header must be the one planned."""
    s = with_pixels(path, header)
    if s.sop_uid != sop_instance(header) or \
            [float(v) for v in header.ImagePositionPatient] != s.position.tolist():
        raise CaseInputError(path, "changed while it was read (its header differs between two reads); "
                                   "convert the case again")
    return s
