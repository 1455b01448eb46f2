"""A case streamed slab by slab: what a source yields to the converter, and reading the next slab ahead.

Convention: a slab is the consecutive canonical slices ``start .. start + n`` of a case,
``hu`` (n, y, x) int16 and each label (n, y, x) uint8 (numpy, or LazySlices computed
when read); a stream's slabs hold each of its slices once, in any order (a file stored
feet first streams from the top). :data:`SLAB_SLICES` slices a slab: at 512 x 512 that is
16 MB of HU, so a conversion's memory stays flat in the number of slices.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from ctprep.case import CaseRef, CaseVolume, InputFile, LabelSpec
from ctprep.geometry import Geometry, SourceGrid
from ctprep.lookup import LazySlices
from ctprep.windowing import Window
from lkbase.errors import ParameterError

#: Slices per slab: large enough that per-slab overheads vanish, small enough to stay in cache-sized megabytes.
SLAB_SLICES = 32

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, eq=False)
class SourceSlab:
    """Canonical slices ``start .. start + len(hu)`` of a case: int16 HU and its labels."""

    start: int
    hu: np.ndarray
    labels: Mapping[str, np.ndarray | LazySlices]

    def __post_init__(self) -> None:
        if self.hu.dtype != np.int16 or self.hu.ndim != 3:
            raise ParameterError(f"a slab's hu must be (n, y, x) int16, found {self.hu.dtype} {self.hu.shape}")
        for name, label in self.labels.items():
            if label.dtype != np.uint8 or tuple(label.shape) != self.hu.shape:
                raise ParameterError(f"slab label {name!r} must be uint8 of shape {self.hu.shape}, "
                                     f"found {label.dtype} {tuple(label.shape)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class CaseStream:
    """A case on the canonical grid ``geometry``, its voxels still to come in ``slabs``.

    ``rows``: how many slices the slabs hold (the grid's, or fewer when slices were
    selected); ``inputs()`` lists the files read, complete once the slabs are exhausted
    (their checksums are computed while streaming).
    """

    ref: CaseRef
    geometry: Geometry
    source_grid: SourceGrid
    label_specs: tuple[LabelSpec, ...]
    slabs: Iterable[SourceSlab]
    rows: int
    inputs: Callable[[], tuple[InputFile, ...]]
    annotations: Mapping[str, object] = field(default_factory=dict)
    windows: tuple[Window, ...] = ()

    @classmethod
    def of_volume(cls, volume: CaseVolume, rows: Sequence[int] | None = None,
                  slab: int = SLAB_SLICES) -> "CaseStream":
        """A loaded case as a stream: its slices ``rows`` (all by default) in slabs of ``slab`` slices."""
        picked = np.arange(volume.geometry.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        every = len(picked) == volume.geometry.shape[0]

        def slabs() -> Iterator[SourceSlab]:
            for start in range(0, len(picked), slab):
                part = slice(start, start + slab) if every else picked[start:start + slab]
                yield SourceSlab(start=start, hu=volume.hu[part],
                                 labels={name: _slab_of(label, part) for name, label in volume.labels.items()})

        return cls(ref=volume.ref, geometry=volume.geometry, source_grid=volume.source_grid,
                   label_specs=volume.label_specs, slabs=slabs(), rows=len(picked), inputs=lambda: volume.inputs,
                   annotations=volume.annotations, windows=volume.windows)

    def keeping(self, rows: np.ndarray) -> "CaseStream":
        """This stream with only its slices ``rows`` (sorted indices of its grid), numbered ``0 .. len(rows)``
        in that order, as :meth:`of_volume` numbers a selection: ``--slices lesion`` streamed."""
        position = {int(z): i for i, z in enumerate(rows)}

        def slabs() -> Iterator[SourceSlab]:
            for slab in self.slabs:
                kept = np.asarray([z - slab.start for z in range(slab.start, slab.start + len(slab.hu))
                                   if z in position], dtype=np.int64)
                if len(kept):
                    yield SourceSlab(start=position[slab.start + int(kept[0])], hu=slab.hu[kept],
                                     labels={name: _slab_of(label, kept) for name, label in slab.labels.items()})

        return replace(self, slabs=slabs(), rows=len(rows))


def _slab_of(label: np.ndarray | LazySlices, part: slice | np.ndarray) -> np.ndarray | LazySlices:
    if isinstance(label, LazySlices) and not isinstance(part, slice):
        return label.take(part)
    return label[part]


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items``, each made in a thread while the consumer works on the previous ones (at most ``depth``
    waiting). An error making an item is raised to the consumer in its place; when the consumer
    stops early, the producer stops at its next item and the iterable is closed in its thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not _offer(ready, (item, None), stop):
                    break
            else:
                _offer(ready, (done, None), stop)
        except BaseException as exc:  # handed over to the consumer
            _offer(ready, (done, exc), stop)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _offer(ready: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Put ``entry`` once there is room; False when the consumer stopped meanwhile."""
    while not stop.is_set():
        try:
            ready.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
