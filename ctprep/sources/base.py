"""What every source provides: find cases in a download, load one onto the canonical grid."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from ctprep.case import CaseRef, CaseVolume, InputFile, LabelSpec
from ctprep.datasets import DatasetManifest, load_dataset_manifest
from ctprep.errors import CaseInputError
from ctprep.geometry import Geometry, SourceGrid, canonicalize, reorient
from ctprep.lookup import LazySlices, nonzero_per_slice
from ctprep.slabs import SLAB_SLICES, CaseStream, SourceSlab
from ctprep.formats.nifti import NiftiHeader, NiftiVolume, hu_int16, label_uint8, read_nifti, read_nifti_header
from ctprep.formats.nifti_stream import NiftiSlabReader
from lkbase.errors import ParameterError

log = logging.getLogger(__name__)


def refuse_duplicate_ids(refs: Sequence[CaseRef]) -> tuple[list[CaseRef], dict[str, str]]:
    """Split ``refs`` into those with a unique case id and a reason for each id found more than once.

    Two inputs with one id (``case_00000`` under two folders, ``volume-07.nii`` beside
    ``volume-7.nii``) would be written into one case; the id is refused and every file named.
    Used wherever discover's refs are collected (convert, check), for every source.
    """
    by_id: dict[str, list[CaseRef]] = {}
    for ref in refs:
        by_id.setdefault(ref.case_id, []).append(ref)
    reasons = {case_id: (f"case id {case_id!r} found {len(same)} times in the download: "
                         f"{' and '.join(str(_where(r)) for r in same)}; remove or rename all but one")
               for case_id, same in by_id.items() if len(same) > 1}
    return [r for r in refs if r.case_id not in reasons], reasons


#: The longest case id: the store names a folder, a lock and staging files after it, and a file name
#: holds at most 255 bytes (ENAMETOOLONG).
MAX_CASE_ID = 160


def refuse_long_ids(refs: Sequence[CaseRef]) -> tuple[list[CaseRef], dict[str, str]]:
    """Split ``refs`` into those whose id can name store files and a reason for each other one."""
    reasons = {r.case_id: (f"{str(_where(r))!r}: the file name gives a case id of {len(r.case_id.encode())} bytes, "
                           f"more than the {MAX_CASE_ID} a store's file names allow; rename it")
               for r in refs if len(r.case_id.encode("utf-8", "surrogateescape")) > MAX_CASE_ID}
    return [r for r in refs if r.case_id not in reasons], reasons


def not_the_layout(path: Path, layout: str) -> None:
    """Log one line for a file or folder that looks like the layout's but is not (``volume-\u0663.nii``,
    a name ending in a newline): it is not a case; ``ctprep check`` shows the warning."""
    log.warning("%r: does not match the layout %s; not a case", str(path), layout)


def _where(ref: CaseRef) -> Path:
    return Path(ref.root) / ref.files[0][1] if ref.files else Path(ref.root)


class Source(ABC):
    """A public dataset's raw layout. Subclasses set ``name`` and implement discover/load."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: Options this source understands (``ctprep convert`` flags), name -> help text.
    options_help: ClassVar[dict[str, str]] = {}

    def __init__(self, manifest: DatasetManifest | None = None, options: Mapping[str, Any] | None = None):
        self.manifest = manifest or load_dataset_manifest(self.name)
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.options_help))
        if unknown:
            takes = ", ".join(sorted(self.options_help)) or "none"
            raise ParameterError(f"source {self.name!r} does not take the option(s) {', '.join(unknown)} "
                                 f"(it takes: {takes})")

    @abstractmethod
    def discover(self, root: Path) -> list[CaseRef]:
        """Find the cases below ``root`` (cheap: no voxel data is read), sorted by case id."""

    @abstractmethod
    def load(self, ref: CaseRef) -> CaseVolume:
        """Decode a case onto the canonical grid; raise CaseInputError when it is unusable."""

    def stream(self, ref: CaseRef) -> CaseStream:
        """The case as slabs for the converter (ctprep/slabs.py); raise CaseInputError when it is unusable,
        before the first slab or, for input found bad part way, in place of a slab.

        This default loads the case whole; sources that can read a slab at a time override it."""
        return CaseStream.of_volume(self.load(ref))

    def lesion_stream(self, ref: CaseRef) -> tuple[np.ndarray, CaseStream] | None:
        """The lesion label's pixels in each slice of the case's grid, counted without reading the image, and
        the case's stream (not yet read), so that ``--slices lesion`` streams the case; or None: this
        source counts them only on the case loaded whole."""
        return None

    def _refuse_as_load(self, ref: CaseRef, exc: CaseInputError) -> NoReturn:
        """For a stream that found ``exc`` (on the way, or in its first read): raise the reason :meth:`load`
        gives for the case (it words whole-file counts and ranges), or ``exc`` if load finds none."""
        self.load(ref)
        raise exc

    def header_problem(self, ref: CaseRef) -> str | None:
        """A cheap check for ``ctprep check`` (headers only, no voxels): None, or '<file>: <problem>'.

        This default only checks that every file of the case exists."""
        for _, rel in ref.files:
            path = Path(ref.root) / rel
            if not path.exists():
                return f"{path}: file not found"
        return None

    def check_conversion(self, config) -> None:
        """Raise ValueError for conversion parameters (a ConvertConfig) this source cannot honour."""

    def adapt_annotations(self, annotations: Mapping[str, Any], *, before: Geometry, after: Geometry,
                          rows: Sequence[int]) -> Mapping[str, Any]:
        """The case's annotations for the stored case: grid ``before`` resampled onto ``after``, and only
        grid slices ``rows`` stored. Sources whose annotations hold pixel or slice positions override this."""
        return annotations


class NiftiPairSource(Source):
    """A source whose case is an image NIfTI plus a segmentation NIfTI on the same grid."""

    # An affine entry may differ between image and segmentation by this much (mm) before
    # the pair counts as misaligned; NIfTI writers round float32 affines differently.
    affine_tolerance_mm: ClassVar[float] = 1e-2
    # Voxel bytes (image + segmentation) kept per pass over files whose slice axis is not their last:
    # with the writer's slabs, a 1,500-slice 512^2 case converts in well under 600 MB (issue 19).
    pass_bytes: ClassVar[int] = 192 << 20

    def load(self, ref: CaseRef) -> CaseVolume:
        # Both files inflate at once: ISA-L and sha256 release the GIL (benchmarks/bench_convert.py).
        with ThreadPoolExecutor(max_workers=2) as pool:
            image_job = pool.submit(read_nifti, ref.path("image"))
            label_job = pool.submit(read_nifti, ref.path("label"))
            image, label = image_job.result(), label_job.result()
        self._check_same_grid(image, label)
        values = label_uint8(label)
        self._check_label_values(label.path, values)
        hu = hu_int16(image)
        hu_canonical, geometry, source_grid = canonicalize(hu, image.affine)
        seg_canonical, _, _ = canonicalize(values, image.affine)
        labels = {spec.name: binary_label(seg_canonical, spec) for spec in self.manifest.labels}
        root = Path(ref.root)
        inputs = tuple(InputFile(role=role, path=str(vol.path.relative_to(root)), size=vol.size, sha256=vol.sha256)
                       for role, vol in (("image", image), ("label", label)))
        return CaseVolume(ref=ref, hu=hu_canonical, labels=labels, label_specs=self.manifest.labels,
                          geometry=geometry, source_grid=source_grid, inputs=inputs)

    def stream(self, ref: CaseRef) -> CaseStream:
        """Both files read a slab at a time, in one pass each, when the file's last axis is the slice axis
        (as CT is stored); otherwise in passes over both files, each keeping one range of slices
        (:meth:`_slabs_in_passes`). Input found bad on the way (a truncated file, a label value
        outside the map) is reported as :meth:`load` reports it."""
        try:
            image, label = _open_pair(ref)
        except CaseInputError as exc:
            self._refuse_as_load(ref, exc)
        try:
            self._check_same_grid(image, label)
            _, geometry, source_grid = canonicalize(np.broadcast_to(np.int16(0), image.shape), image.affine)
        except BaseException:
            image.close(), label.close()
            raise
        sums: dict[str, tuple[int, str]] = {}
        if source_grid.axes[2][0] == 2:
            slabs = self._slabs(ref, image, label, source_grid, sums)
        else:  # the file's slices are not axial (KiTS19 stores z first): no slab of the file is one of ours
            image.close(), label.close()
            slabs = self._slabs_in_passes(ref, image.shape, (image.dtype, label.dtype), source_grid, sums)

        def inputs() -> tuple[InputFile, ...]:
            root = Path(ref.root)
            return tuple(InputFile(role=role, path=str(reader.path.relative_to(root)), size=sums[role][0],
                                   sha256=sums[role][1]) for role, reader in (("image", image), ("label", label)))

        return CaseStream(ref=ref, geometry=geometry, source_grid=source_grid, label_specs=self.manifest.labels,
                          slabs=slabs, rows=geometry.shape[0], inputs=inputs)

    def _slabs(self, ref: CaseRef, image: NiftiSlabReader, label: NiftiSlabReader, grid: SourceGrid,
               sums: dict[str, tuple[int, str]]) -> Iterator[SourceSlab]:
        """The canonical slabs of the pair, in file order (from the top when the file is stored feet first);
        both files inflate at once (ISA-L and sha256 release the GIL). ``sums`` gets each file's
        (size, sha256) after the last slab."""
        nz, flip = image.shape[2], grid.axes[2][1]
        try:
            with image, label, ThreadPoolExecutor(max_workers=2) as pool:
                for _, n, start in _slabs_of(0, nz, nz, flip):
                    raw_image, raw_label = (job.result() for job in [pool.submit(r.read, n) for r in (image, label)])
                    yield self._slab(image, label, raw_image, raw_label, grid, start)
                for role, reader in (("image", image), ("label", label)):
                    sums[role] = reader.finish()
        except CaseInputError as exc:
            self._refuse_as_load(ref, exc)

    def _slabs_in_passes(self, ref: CaseRef, shape: tuple[int, int, int], dtypes: tuple[np.dtype, np.dtype],
                         grid: SourceGrid, sums: dict[str, tuple[int, str]]) -> Iterator[SourceSlab]:
        """The canonical slabs of a pair whose slice axis is not the files' last: each pass inflates both
        files once, keeping the slices of one range of the slice axis, at most :attr:`pass_bytes` of
        voxels. Memory stays bounded whatever the slice count (a case loaded whole grows with it),
        for one more inflation of the files per ``pass_bytes`` of voxels."""
        axis, flip = _slice_axis(grid)
        nz = shape[axis]
        try:
            for first, last in self._passes(shape, axis, sum(d.itemsize for d in dtypes)):
                image, label = _open_pair(ref, hashing=first == 0)  # the first pass hashes the files
                with image, label, ThreadPoolExecutor(max_workers=2) as pool:
                    raw_image, raw_label = (job.result() for job in
                                            [pool.submit(r.read_range, axis, first, last) for r in (image, label)])
                    for role, reader in (("image", image), ("label", label)):
                        size, sha256 = reader.finish()
                        if sha256 is not None:
                            sums[role] = (size, sha256)
                        elif size != sums[role][0]:
                            raise CaseInputError(reader.path, "changed while it was read (its size differs "
                                                              "between two passes); convert the case again")
                for done, n, start in _slabs_of(first, last, nz, flip):
                    rows = (slice(None),) * axis + (slice(done - first, done - first + n),)
                    # copies: a slab still being written must not keep this pass's voxels alive into the next
                    yield self._slab(image, label, raw_image[rows].copy(order="F"), raw_label[rows].copy(order="F"),
                                     grid, start)
                del raw_image, raw_label  # before the next pass reads its own
        except CaseInputError as exc:
            self._refuse_as_load(ref, exc)

    def lesion_stream(self, ref: CaseRef) -> tuple[np.ndarray, CaseStream] | None:
        """The segmentation read alone first (a slab at a time, or in passes) for the lesion label's pixels
        per slice, and the case's stream."""
        spec = next((s for s in self.manifest.labels if s.name == self.manifest.lesion_label), None)
        if spec is None:
            return None
        stream = self.stream(ref)
        grid = stream.source_grid
        counts = np.zeros(stream.geometry.shape[0], dtype=np.int64)
        try:
            for start, values in self._label_slabs(ref, grid):
                mask = binary_label(reorient(values, grid), spec)
                counts[start:start + mask.shape[0]] = nonzero_per_slice(mask, threads=1)
        except CaseInputError as exc:
            self._refuse_as_load(ref, exc)
        return counts, stream

    def _label_slabs(self, ref: CaseRef, grid: SourceGrid) -> Iterator[tuple[int, np.ndarray]]:
        """The segmentation's values (uint8, source layout) a slab of slices at a time, with each slab's
        first canonical slice: in one pass when its slice axis is its last, else in :meth:`_passes`."""
        axis, flip = _slice_axis(grid)
        with NiftiSlabReader(ref.path("label"), hashing=False) as header:
            shape, itemsize = header.shape, header.dtype.itemsize
        for first, last in self._passes(shape, axis, itemsize):
            with NiftiSlabReader(ref.path("label"), hashing=False) as label:
                whole = None if axis == 2 else label.read_range(axis, first, last)
                for done, n, start in _slabs_of(first, last, shape[axis], flip):
                    rows = (slice(None),) * axis + (slice(done - first, done - first + n),)
                    yield start, label_uint8(_slab_volume(label, label.read(n) if whole is None else whole[rows]))

    def _passes(self, shape: tuple[int, int, int], axis: int, itemsize: int) -> list[tuple[int, int]]:
        """The ranges of file slices each pass over a file keeps: all in one when ``axis`` (the slice axis) is
        the file's last, else at most :attr:`pass_bytes` of voxels (``itemsize`` bytes each) a pass."""
        nz = shape[axis]
        plane_bytes = int(np.prod(shape)) // nz * itemsize
        per_pass = nz if axis == 2 else max(SLAB_SLICES, self.pass_bytes // plane_bytes // SLAB_SLICES * SLAB_SLICES)
        return [(first, min(nz, first + per_pass)) for first in range(0, nz, per_pass)]

    def _slab(self, image: NiftiSlabReader, label: NiftiSlabReader, raw_image: np.ndarray, raw_label: np.ndarray,
              grid: SourceGrid, start: int) -> SourceSlab:
        """Canonical slices ``start ..`` from the files' voxels ``raw_*`` (source layout, a slab along the
        slice axis): HU, label values checked, one binary label per spec."""
        hu = hu_int16(_slab_volume(image, raw_image))
        values = label_uint8(_slab_volume(label, raw_label))
        self._check_label_values(label.path, values)
        segmentation = reorient(values, grid)
        return SourceSlab(start=start, hu=reorient(hu, grid),
                          labels={spec.name: binary_label(segmentation, spec) for spec in self.manifest.labels})

    def header_problem(self, ref: CaseRef) -> str | None:
        """Read only the headers (no voxels): each file exists and is a NIfTI of real voxels, as
        :meth:`load` reads it, and the segmentation's shape and affine match the image's."""
        try:
            self._check_same_grid(read_nifti_header(ref.path("image")), read_nifti_header(ref.path("label")))
        except CaseInputError as exc:
            return str(exc)
        return None

    def _check_same_grid(self, image: NiftiVolume | NiftiHeader | NiftiSlabReader,
                         label: NiftiVolume | NiftiHeader | NiftiSlabReader) -> None:
        if image.shape != label.shape:
            raise CaseInputError(label.path, f"segmentation shape {label.shape} differs from "
                                             f"image shape {image.shape} ({image.path.name})")
        worst = float(np.abs(image.affine - label.affine).max())
        if worst > self.affine_tolerance_mm:
            raise CaseInputError(label.path, f"segmentation affine differs from the image's by up to "
                                             f"{worst:.3g} mm (tolerance {self.affine_tolerance_mm} mm)")

    def _check_label_values(self, path: Path, values: np.ndarray) -> None:
        # Fast path: when the map holds every value 0..max, the maximum alone decides.
        # (np.bincount would first copy the volume into 8-byte integers.)
        top = int(values.max()) if values.size else 0
        if all(v in self.manifest.label_values for v in range(top + 1)):
            return
        counts = np.zeros(256, dtype=np.int64)
        flat = values.ravel(order="K")
        for start in range(0, flat.size, _COUNT_BLOCK):
            counts += np.bincount(flat[start:start + _COUNT_BLOCK], minlength=256)
        unknown = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v not in self.manifest.label_values}
        if unknown:
            found = ", ".join(f"{v} ({n} voxels)" for v, n in sorted(unknown.items()))
            raise CaseInputError(path, f"label values outside the label map "
                                       f"{sorted(self.manifest.label_values)}: {found}")


def _slice_axis(grid: SourceGrid) -> tuple[int, int]:
    """The file axis that runs along the canonical z, and its direction (-1: the file is stored feet first)."""
    axis = next(i for i, (canonical, _) in enumerate(grid.axes) if canonical == 2)
    return axis, grid.axes[axis][1]


def _slabs_of(first: int, last: int, nz: int, flip: int) -> Iterator[tuple[int, int, int]]:
    """The slabs of file slices ``first .. last`` of ``nz``: each one's first file slice, its slice count,
    and its first canonical slice (``flip`` -1: counted from the other end)."""
    for done in range(first, last, SLAB_SLICES):
        n = min(SLAB_SLICES, last - done)
        yield done, n, done if flip == 1 else nz - done - n


def _open_pair(ref: CaseRef, hashing: bool = True) -> tuple[NiftiSlabReader, NiftiSlabReader]:
    image = NiftiSlabReader(ref.path("image"), hashing)
    try:
        return image, NiftiSlabReader(ref.path("label"), hashing)
    except BaseException:
        image.close()
        raise


def _slab_volume(reader: NiftiSlabReader, array: np.ndarray) -> NiftiVolume:
    """A slab read by ``reader`` as a NiftiVolume, for the per-volume conversions (hu_int16, label_uint8)."""
    return NiftiVolume(path=reader.path, array=array, affine=reader.affine, slope=reader.slope, inter=reader.inter,
                       size=0, sha256="")


# Voxels counted per np.bincount call when a label map has gaps (bounds its int64 copy).
_COUNT_BLOCK = 1 << 22


def binary_label(segmentation: np.ndarray, spec: LabelSpec) -> LazySlices:
    """The (z, y, x) uint8 0/1 mask of the voxels whose value is in ``spec.values``, computed per slice."""
    values = sorted(set(spec.values))

    def make_slice(z: int) -> np.ndarray:
        plane = segmentation[z]
        out = np.equal(plane, values[0])
        for value in values[1:]:  # comparisons vectorise better than a table lookup here
            out |= plane == value
        return out.view(np.uint8)  # same bytes: True is 1

    return LazySlices(segmentation.shape, np.uint8, make_slice)
