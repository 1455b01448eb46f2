"""Reading DICOM CT series (shared by the NSCLC-Radiomics and LIDC-IDRI sources).

* finding the series in a folder: :func:`ctprep.formats.dicom_scan.scan_dicom_folder`;
* :func:`read_ct_series` reads one series onto the canonical ``(z, y, x)`` grid
  (ctprep.geometry): slices sorted by ImagePositionPatient projected on the slice
  normal (never by file name or InstanceNumber), modality LUT to int16 HU,
  padding replaced by air, duplicates dropped, irregular spacing and gantry tilt
  resampled (or refused).

Privacy: only the tags named in ``_READ_TAGS`` (and dicom_scan's ``_SCAN_TAGS``) are parsed
(pydicom's ``specific_tags``), and only PatientID (the dataset's public id) and
the allowlisted technical attributes are kept.

Compressed transfer syntaxes are decoded by pydicom's plug-ins: JPEG 2000 by
``pylibjpeg-openjpeg`` (MIT), JPEG lossless and the other JPEG flavours by
``python-gdcm`` (BSD-style GDCM licence; preferred to the GPL-3 pylibjpeg-libjpeg).
Uncompressed little-endian pixel data are viewed straight out of the PixelData
bytes (pydicom's ``pixel_array`` costs more than the parsing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ctprep.errors import CaseInputError, MissingInputError
from ctprep.formats import dicom_scan
from ctprep.formats.dicom_regrid import Resampling, apply_resampling
from ctprep.formats.dicom_rescale import Rescale, check_series_rescale, read_rescale
from ctprep.geometry import Geometry, SourceGrid, canonicalize
from lkbase.errors import ParameterError

AIR_HU = -1024
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Tolerances (mm / unit vectors) for "the same" geometry across the slices of one series.
_ORIENTATION_TOL = 1e-4
_SPACING_TOL = 1e-3
_DUPLICATE_TOL_MM = 1e-3
# Slice steps within this fraction of the median step count as regular.
_STEP_REL_TOL = 0.01
# In-plane drift of the slice origins, as a fraction of a pixel, above which a series is tilted.
_TILT_PIXEL_TOL = 0.05

_TECHNICAL_TAGS = ["Modality", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel",
                   "SliceThickness", "KVP", "PixelSpacing", "RescaleType"]
# The header attributes kept per slice (CtSeries.headers) so that RTSTRUCT rasterising
# (ctprep.formats.rtstruct) needs no second pass over the files.
GEOMETRY_TAGS = ["SOPClassUID", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                 "PixelSpacing", "Rows", "Columns", "SliceThickness", "FrameOfReferenceUID"]
_READ_TAGS = sorted(set(_TECHNICAL_TAGS) | set(GEOMETRY_TAGS) | {
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "ImagePositionPatient",
    "ImageOrientationPatient", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "PixelData"})
_NATIVE_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
IRREGULAR_MODES = ("resample", "refuse")


# ---- reading a series ----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True, eq=False)
class CtSeries:
    """A CT series on the canonical grid.

    ``hu`` is a view of the native stack (slice, row, col) when no resampling was
    needed. ``native_sop_uids`` / ``native_z_mm`` describe the native stacked
    order (ascending along the slice normal, duplicates dropped), which is the
    layout :meth:`to_canonical` expects. ``files`` and ``headers`` are the files of those
    slices, in that order, and their headers as read (the attributes ctprep uses,
    :data:`GEOMETRY_TAGS` among them; no pixel data): what
    :func:`ctprep.formats.rtstruct.rasterise_rois` needs, without reading the files again.
    """

    hu: np.ndarray
    geometry: Geometry
    source_grid: SourceGrid
    native_sop_uids: tuple[str, ...]
    native_z_mm: tuple[float, ...]
    technical: dict
    notes: tuple[str, ...]
    files: tuple[Path, ...] = field(default=(), repr=False)
    headers: tuple[pydicom.Dataset, ...] = field(default=(), repr=False)
    _resampling: Resampling | None = field(default=None, repr=False)

    @property
    def resampled(self) -> bool:
        """Whether the native slices were put on another grid (tilt, irregular steps): see to_canonical."""
        return self._resampling is not None

    @property
    def native_shape(self) -> tuple[int, int, int]:
        return (len(self.native_sop_uids), int(self.technical["Rows"]), int(self.technical["Columns"]))

    def to_canonical(self, native: np.ndarray) -> np.ndarray:
        """Map an array in native stacked layout (slice, row, col) to the canonical grid.

        Applies exactly the transform applied to ``hu``: a view when no resampling was
        needed; otherwise the same in-plane shifts and z interpolation, linear for float
        arrays and nearest-neighbour for integer/bool arrays (masks stay masks).
        """
        native = np.asarray(native)
        if native.shape != self.native_shape:
            raise ParameterError(f"expected a native stack of shape {self.native_shape}, found {native.shape}")
        if self._resampling is not None:
            native = apply_resampling(native, self._resampling, linear=native.dtype.kind in "fc",
                                       fill=0)
        affine = np.asarray(self.source_grid.affine_ras).reshape(4, 4)
        return canonicalize(native.transpose(2, 1, 0), affine)[0]


@dataclass(kw_only=True)
class _Slice:
    path: Path
    sop_uid: str
    series_uid: str
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    shape: tuple[int, int]
    hu: np.ndarray
    padded: int
    technical: dict
    header: pydicom.Dataset
    rescale: Rescale
    raw_min: int


def _technical_value(value):
    """A JSON-friendly copy of a header value (DS -> float, IS -> int, multi-value -> list)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_technical_value(v) for v in value]
    for kind in (float, int, str):
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def _padding_range(ds, stored_dtype: np.dtype) -> tuple[int, int] | None:
    """PixelPaddingValue (and RangeLimit) in stored-value space, sign fixed for signed pixels."""
    value = ds.get("PixelPaddingValue", None)
    if value is None:
        return None
    bits = int(ds.get("BitsAllocated", 16) or 16)

    def as_stored(v) -> int:
        v = int(v)
        if stored_dtype.kind == "i" and v >= 2 ** (bits - 1):
            v -= 2 ** bits  # written as US although the pixels are signed
        return v

    lo = as_stored(value)
    limit = ds.get("PixelPaddingRangeLimit", None)
    hi = as_stored(limit) if limit is not None else lo
    return (min(lo, hi), max(lo, hi))


def _raw_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise CaseInputError(path, f"expected one sample per pixel, found {ds.SamplesPerPixel}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise CaseInputError(path, f"multi-frame images are not supported ({ds.NumberOfFrames} frames)")
    if "PixelData" not in ds:
        raise CaseInputError(path, "no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if ds.file_meta else ImplicitVRLittleEndian
    bits = int(ds.get("BitsAllocated", 16))
    if syntax in _NATIVE_SYNTAXES and bits == 16:
        return _native_raw(path, ds, ds.PixelData)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoder missing, corrupt or truncated stream
        raise CaseInputError(path, f"cannot decode pixel data ({syntax.name}): {exc}") from exc
    if raw.shape != (rows, cols):
        raise CaseInputError(path, f"pixel data decode to shape {raw.shape}, expected {(rows, cols)}")
    return raw


def _native_raw(path: Path, ds: pydicom.Dataset, data: bytes) -> np.ndarray:
    """The stored values of uncompressed 16-bit pixel data ``data`` (a view), high bits masked or sign-extended."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    need = rows * cols * 2
    if len(data) < need:
        raise CaseInputError(path, f"truncated pixel data: {len(data)} bytes, expected {need}")
    raw = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
    stored = int(ds.get("BitsStored", 16) or 16)
    if stored < 16:  # mask unused high bits (overlays), sign-extend signed values
        if signed:
            raw = (raw << (16 - stored)) >> (16 - stored)
        else:
            raw = raw & np.uint16((1 << stored) - 1)
    return raw


def with_pixels(path: Path, header: pydicom.Dataset) -> _Slice:
    """The slice of a file read before without pixels (``header``: read_slice's, CtSeries.headers), now with
    them: for an uncompressed 16-bit file whose last element is its PixelData, straight from the end of
    the file (no second parse of the header); otherwise read_slice again. Its HU are read_slice's."""
    ds = header
    syntax = ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if ds.file_meta else ImplicitVRLittleEndian
    if (syntax not in _NATIVE_SYNTAXES or int(ds.get("BitsAllocated", 16)) != 16
            or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1):
        return read_slice(path)
    need = int(ds.Rows) * int(ds.Columns) * 2
    explicit = b"" if syntax == ImplicitVRLittleEndian else b"OW\x00\x00"
    tag = b"\xe0\x7f\x10\x00" + explicit + need.to_bytes(4, "little")
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - need - len(tag)))
            data = handle.read()
    except OSError as exc:
        raise CaseInputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if len(data) != need + len(tag) or not data.startswith(tag):  # PixelData is not the file's last element
        return read_slice(path)
    return _slice_of(Path(path), ds, False, lambda: _native_raw(path, ds, memoryview(data)[len(tag):]))


def _to_hu(path: Path, raw: np.ndarray, slope: float, inter: float,
           padding: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    if slope == 1.0 and float(inter).is_integer() and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2:
        lo_raw, hi_raw = int(raw.min()), int(raw.max())
        if -32768 <= lo_raw + int(inter) and hi_raw + int(inter) <= 32767:
            # Fast path: no int32 temporary; the range check above makes the cast exact.
            values = np.add(raw, int(inter), dtype=np.int16, casting="unsafe")
        else:
            values = raw.astype(np.int32)
            values += int(inter)
    elif slope == 1.0 and float(inter).is_integer():
        values = raw.astype(np.int32)
        values += int(inter)
    else:
        values = raw.astype(np.float32) * np.float32(slope) + np.float32(inter)
        if not np.isfinite(values).all():
            raise CaseInputError(path, "rescale gives NaN or infinite HU")
        np.rint(values, out=values)
    padded = 0
    if padding is not None:
        lo, hi = padding
        mask = (raw == lo) if lo == hi else ((raw >= lo) & (raw <= hi))
        padded = int(np.count_nonzero(mask))
        if padded:
            values[mask] = AIR_HU
    lo_hu, hi_hu = values.min(), values.max()
    if lo_hu < -32768 or hi_hu > 32767:
        raise CaseInputError(path, f"HU range [{lo_hu}, {hi_hu}] does not fit int16; is this a CT?")
    return values.astype(np.int16), padded


def read_slice(path: Path, with_technical: bool = False, pixels: bool = True) -> _Slice:
    """One file of a series, checked; without ``pixels`` only its header (``hu`` None, no pixel checks)."""
    path = Path(path)
    try:
        ds = dicom_scan.read_header(path, _READ_TAGS, stop_before_pixels=not pixels)
    except FileNotFoundError as exc:
        raise MissingInputError(path, "file not found") from exc
    except CaseInputError:
        raise
    except Exception as exc:
        raise CaseInputError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    return _slice_of(path, ds, with_technical, (lambda: _raw_pixels(path, ds)) if pixels else lambda: None)


def _slice_of(path: Path, ds: pydicom.Dataset, with_technical: bool, pixels) -> _Slice:
    """The checked slice of header ``ds``; ``pixels()`` gives its stored values (None: a header only)."""
    sop_class = dicom_scan.sop_class(ds)
    if sop_class != CTImageStorage:
        name = getattr(pydicom.uid.UID(sop_class), "name", sop_class) if sop_class else "no SOP class"
        raise CaseInputError(path, f"not a CT Image Storage object ({name})")
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        if ds.get(key, None) in (None, ""):
            raise CaseInputError(path, f"missing {key}")
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
        if position.shape != (3,) or orientation.shape != (6,) or len(spacing) != 2:
            raise ValueError("wrong number of values")
        raw = pixels()
        rescale = read_rescale(path, ds)
    except CaseInputError:
        raise
    except Exception as exc:
        raise CaseInputError(path, f"bad geometry or pixel attributes ({type(exc).__name__}: {exc})") from exc
    if not (np.all(np.isfinite(position)) and np.all(np.isfinite(orientation))) or min(spacing) <= 0:
        raise CaseInputError(path, "non-finite position/orientation or non-positive pixel spacing")
    hu, padded = _to_hu(path, raw, rescale.slope, rescale.inter, _padding_range(ds, raw.dtype)) \
        if raw is not None else (None, 0)
    technical = {}
    if with_technical:  # converting the values costs as much as the pixels: first slice only
        for key in _TECHNICAL_TAGS:
            value = ds.get(key, None)
            if value not in (None, ""):
                technical[key] = _technical_value(value)
    technical["TransferSyntaxUID"] = str(ds.file_meta.get("TransferSyntaxUID", "")) if ds.file_meta else ""
    if "PixelData" in ds:
        del ds["PixelData"]  # the header stays (CtSeries.headers); the pixels now live in ``hu``
    return _Slice(header=ds, path=path, sop_uid=dicom_scan.sop_instance(ds), series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                  position=position, orientation=orientation, spacing=spacing,  # type: ignore[arg-type]
                  shape=(int(ds.Rows), int(ds.Columns)), hu=hu, padded=padded, technical=technical,
                  rescale=rescale, raw_min=int(raw.min()) if raw is not None and raw.size else 0)


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if s.series_uid != first.series_uid:
            raise CaseInputError(s.path, f"mixed series: SeriesInstanceUID {s.series_uid!r} differs from "
                                         f"{first.series_uid!r} of {first.path.name}")
        if s.shape != first.shape:
            raise CaseInputError(s.path, f"rows/columns {s.shape} differ from {first.shape} of {first.path.name}")
        if np.max(np.abs(s.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise CaseInputError(s.path, f"ImageOrientationPatient {s.orientation.round(5).tolist()} differs "
                                         f"from {first.orientation.round(5).tolist()} of {first.path.name}")
        if max(abs(a - b) for a, b in zip(s.spacing, first.spacing)) > _SPACING_TOL:
            raise CaseInputError(s.path, f"PixelSpacing {list(s.spacing)} differs from {list(first.spacing)} "
                                         f"of {first.path.name}")


def _dedupe(path_for_error: Path, slices: list[_Slice], d: np.ndarray, notes: list[str]):
    keep = [0]
    dropped = []
    for i in range(1, len(slices)):
        j = keep[-1]
        if abs(d[i] - d[j]) <= _DUPLICATE_TOL_MM:
            a, b = slices[j], slices[i]
            if np.array_equal(a.hu, b.hu) and np.allclose(a.position, b.position, atol=_DUPLICATE_TOL_MM):
                dropped.append(b.path.name)
                continue
            raise CaseInputError(b.path, f"two different slices at the same position {d[i]:.3f} mm along the "
                                         f"normal: {a.path.name} and {b.path.name}")
        keep.append(i)
    if dropped:
        notes.append(f"dropped {len(dropped)} duplicate slice(s) identical to another at the same position: "
                     + ", ".join(sorted(dropped)[:5]) + (" ..." if len(dropped) > 5 else ""))
    return [slices[i] for i in keep], d[keep]


def pixel_notes(slices: Sequence[_Slice]) -> list[str]:
    """What a series' pixels add to its notes (sorted, de-duplicated slices): the rescale checks, padding replaced."""
    notes = check_series_rescale([s.path for s in slices], [s.rescale for s in slices],
                                 min(s.raw_min for s in slices))
    padded = sum(s.padded for s in slices)
    if padded:
        notes.append(f"replaced {padded} padding voxels (PixelPaddingValue) with {AIR_HU} HU (air)")
    return notes


def _check_unique_sop_uids(slices: list[_Slice]) -> None:
    """Annotations (RTSTRUCT contours, LIDC rois) name slices by SOPInstanceUID: two slices
    sharing one would put an outline on the wrong slice. (Identical copies are dropped before.)"""
    seen: dict[str, _Slice] = {}
    for s in slices:
        other = seen.setdefault(s.sop_uid, s) if s.sop_uid else s
        if other is not s:
            raise CaseInputError(s.path, f"same SOPInstanceUID as {other.path.name}, a different slice; "
                                         "annotations name slices by it, so it must be unique")


def read_ct_series(files: Sequence[Path], *, irregular: str = "resample", pixels: bool = True) -> CtSeries:
    """Read one CT series onto the canonical grid (see the module docstring).

    ``irregular``: ``"resample"`` puts irregularly spaced or gantry-tilted series on a
    regular grid perpendicular to the slices (linear interpolation, recorded in
    ``notes``); ``"refuse"`` raises :class:`CaseInputError` for them instead.
    Without ``pixels``, only the headers are read: the series' plan (see :func:`series_of`).
    """
    if irregular not in IRREGULAR_MODES:
        raise ParameterError(f"irregular must be one of {IRREGULAR_MODES}, not {irregular!r}")
    files = [Path(f) for f in files]
    if not files:
        raise CaseInputError("<empty series>", "no DICOM files given")
    # Serial on purpose: parsing holds the GIL, and threads measured slower (benchmarks/bench_dicom.py).
    slices = [read_slice(f, with_technical=(i == 0), pixels=pixels) for i, f in enumerate(files)]
    return series_of(slices, irregular)


def series_of(slices: list[_Slice], irregular: str = "resample") -> CtSeries:
    """The series of ``slices`` (read_slice of its files, the first with its technical values) on the
    canonical grid: sorted, checked, de-duplicated, resampled when irregular (see read_ct_series).

    Slices read without pixels give the series' plan only: its ``hu`` a read-only placeholder of
    the right shape, no rescale or padding checks, and duplicates taken as identical (noted).
    """
    pixels = slices[0].hu is not None
    _check_consistent(slices)
    notes: list[str] = []
    first = slices[0]
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3 \
            or abs(float(row_cos @ col_cos)) > 1e-3:
        raise CaseInputError(first.path, f"ImageOrientationPatient {first.orientation.tolist()} is not two "
                                         "orthogonal unit vectors")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    d = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(d, kind="stable")
    slices = [slices[i] for i in order]
    d = d[order]
    slices, d = _dedupe(first.path, slices, d, notes)
    _check_unique_sop_uids(slices)
    if pixels:
        notes += pixel_notes(slices)
    n = len(slices)
    row_spacing, col_spacing = first.spacing  # DICOM: between rows, between columns

    # Gantry tilt: slice origins drift in-plane as we go along the normal.
    origin = slices[0].position
    offsets = np.array([s.position - (origin + (dk - d[0]) * normal) for s, dk in zip(slices, d)])
    shifts_px = np.stack([offsets @ col_cos / row_spacing, offsets @ row_cos / col_spacing], axis=1)
    tilted = n > 1 and float(np.abs(shifts_px).max()) > _TILT_PIXEL_TOL
    steps = np.diff(d)
    if n > 1:
        median = float(np.median(steps))
        irregular_steps = bool(np.any(np.abs(steps - median) > _STEP_REL_TOL * median))
    else:
        thickness = first.technical.get("SliceThickness")
        median = float(thickness) if isinstance(thickness, (int, float)) and thickness > 0 else 1.0
        notes.append(f"single-slice series: slice step set to {median} mm (SliceThickness or 1 mm)")
        irregular_steps = False

    problems = []
    if tilted:
        stack_dir = slices[-1].position - slices[0].position
        angle = math.degrees(math.acos(min(1.0, abs(float(stack_dir @ normal)) / np.linalg.norm(stack_dir))))
        problems.append(f"gantry tilt: slice origins drift up to {float(np.abs(shifts_px).max()):.2f} pixels "
                        f"in-plane (stacking direction {angle:.2f} deg from the slice normal)")
    if irregular_steps:
        problems.append(f"irregular slice spacing: steps {steps.min():.3f}..{steps.max():.3f} mm "
                        f"(median {median:.3f} mm)")
    plan = None
    native_hu = None
    step = median
    if problems:
        if irregular == "refuse":
            raise CaseInputError(first.path.parent, "; ".join(problems))
        lower = weight = None
        if irregular_steps:
            extent = float(d[-1] - d[0])
            count = max(1, round(extent / median))
            step = extent / count
            targets = d[0] + step * np.arange(count + 1)
            lower = np.clip(np.searchsorted(d, targets, side="right") - 1, 0, n - 1)
            gap = np.where(lower + 1 < n, d[np.minimum(lower + 1, n - 1)] - d[lower], 1.0)
            weight = np.clip((targets - d[lower]) / gap, 0.0, 1.0)
            weight[lower + 1 >= n] = 0.0
            notes.append(f"irregular slice spacing ({steps.min():.3f}..{steps.max():.3f} mm): resampled "
                         f"{n} slices onto {count + 1} at {step:.4f} mm (linear in z)")
        if tilted:
            notes.append(problems[0] + "; slices shifted in-plane onto a grid perpendicular to them "
                                       "(bilinear, air outside)")
        plan = Resampling(shifts=shifts_px if tilted else None, lower=lower, weight=weight)
    if pixels:
        stack = np.empty((n,) + first.shape, dtype=np.int16)
        for i, s in enumerate(slices):
            stack[i] = s.hu
            s.hu = None  # type: ignore[assignment]  # free as we go
        native_hu = stack if plan is None else apply_resampling(stack, plan, linear=True, fill=AIR_HU)
    else:
        count = n if plan is None or plan.lower is None else len(plan.lower)
        native_hu = np.broadcast_to(np.int16(0), (count,) + first.shape)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * col_spacing   # array x = column index
    affine_lps[:3, 1] = col_cos * row_spacing   # array y = row index
    affine_lps[:3, 2] = normal * step           # array z = slice index
    affine_lps[:3, 3] = origin
    hu, geometry, source_grid = canonicalize(native_hu.transpose(2, 1, 0), _RAS_FROM_LPS @ affine_lps)

    technical = dict(first.technical)  # the first file given (allowlisted values only)
    technical["Rows"], technical["Columns"] = first.shape
    technical["NumberOfSlices"] = n
    if len({s.technical.get("TransferSyntaxUID") for s in slices}) > 1:
        technical["TransferSyntaxUID"] = sorted({s.technical.get("TransferSyntaxUID", "") for s in slices})
    return CtSeries(hu=hu, geometry=geometry, source_grid=source_grid,
                    native_sop_uids=tuple(s.sop_uid for s in slices),
                    native_z_mm=tuple(float(v) for v in d), technical=technical,
                    notes=tuple(notes), files=tuple(s.path for s in slices),
                    headers=tuple(s.header for s in slices), _resampling=plan)
