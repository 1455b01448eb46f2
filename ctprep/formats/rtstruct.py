"""RTSTRUCT ROIs rasterised onto their CT series with rt-utils.

``rasterise_rois`` returns, for each ROI asked for, one ``(rows, cols)`` uint8
0/1 mask per CT slice of the series, keyed by the slice's SOPInstanceUID, so
the caller stacks them in whatever slice order its CT reader uses.

The polygons are filled by rt-utils' per-slice rasteriser
(``image_helper.get_slice_mask_from_slice_contour_data``, which calls OpenCV's
``fillPoly`` once per slice with all of that slice's contours, placed with
rt-utils' own patient-to-pixel transform). The contours are grouped by slice
here rather than through ``RTStruct.get_roi_mask_by_name``: that scans every
contour for every slice (O(slices x contours) in pydicom attribute lookups,
4 of the 6 s of converting a 300-slice series) and allocates a whole-series
mask per ROI. rt-utils trusts its input, so everything it would silently get
wrong or crash on is checked here first, and only cleaned contours reach it.
What rt-utils (1.2.7) does, and what we do about it:

* **Holes.** One ``fillPoly`` call with every contour of a slice fills with the
  even-odd rule: a contour drawn inside another (NSCLC-Radiomics GTVs draw
  cavities that way) comes out as a hole, and the inner contour's own pixels
  stay foreground, which is what OpenCV's ``findContours`` (rt-utils' writer)
  traces around a hole. Overlapping, non-nested contours of one ROI on one
  slice therefore cancel where they overlap (the usual XOR reading of DICOM).
  The tests pin this behaviour (a ring round-trips with its hole).
* **Contours with fewer than 3 points** (and POINT / OPEN_PLANAR contours)
  enclose no area: rt-utils crashes on a 1-point contour (``squeeze`` turns it
  into a bare (x, y) pair that ``fillPoly`` rejects) and paints a 2-point one
  as a line. They are dropped; an ROI left with none is an error.
* **Contours outside the field of view** are clipped by ``fillPoly``; an ROI
  whose contours cover no pixel at all is an error (wrong series or frame of
  reference), as are non-finite or absurd coordinates (int32 overflow).
* **Contours referring to SOP instances not in the series** are silently
  skipped by rt-utils' rasteriser (its own check, in ``create_from``, only
  looks at the structure set's image list and stops at the first miss with a
  bare ``Exception``). We count them per ROI and raise :class:`CaseInputError`.
* **Contours without a ContourImageSequence** (optional in DICOM) crash
  rt-utils; they are assigned to the slice whose plane they lie in.
  A contour whose points do not lie in the plane of the slice it refers to is
  an error.
* rt-utils places every contour with the **first slice's origin and pixel
  spacing** and builds masks as ``(Columns, Rows)``: series with non-square
  images or pixels, differing orientations or sizes, or in-plane origins that
  move from slice to slice (gantry tilt) are refused rather than mis-placed.

The series is not loaded with ``RTStructBuilder.create_from``: that walks a
folder and decodes every image's pixel data only to test that it is an image,
silently dropping files it cannot decode (JPEG 2000 without a plugin), which
would shift masks off slices without an error. The headers are read here with
pydicom, sorted with rt-utils' own slice-position key, and every mask is keyed
by the SOPInstanceUID of the slice it was drawn on, never by an assumed order.

Errors and return values carry only file paths, ROI names and UIDs: never
patient names, IDs or dates. An ROI name is free text (people write "Jane Doe lesion"): it is
shown only when the conversion asked for it (``--roi``, the GTV rule, the default tumour ROI),
any other as ``roi-<first 8 hex of its sha256>`` (:func:`shown_rois`), in records and errors alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from rt_utils import RTStructBuilder
from rt_utils import image_helper as rt_image

from ctprep.formats.dicom import GEOMETRY_TAGS
from ctprep.errors import CaseInputError, MissingInputError
from lkbase.errors import ParameterError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

# Pixel coordinates beyond this are corrupt data (fillPoly works in int32 with sub-pixel shifts).
_MAX_PIXEL_COORD = 1e5
# Relative tolerance for "same" spacing / orientation, and in-plane origin drift in pixels.
_REL_TOL = 1e-4
_INPLANE_TOL_PX = 0.05

_CONTOUR_DATA = 0x30060050

_SEPARATORS = re.compile(r"[\s_\-]+")
_GTV_RULE = re.compile(r"gtv0*([1-9][0-9]*)")


# --------------------------------------------------------------------------- names


def roi_names(rtstruct_path: str | Path) -> list[str]:
    """The ROI names of an RTSTRUCT's StructureSetROISequence, in file order."""
    ds = _read_rtstruct(Path(rtstruct_path))
    return [str(item.get("ROIName", "")) for item in ds.get("StructureSetROISequence", [])]


def roi_hash(name: str) -> str:
    """``roi-<8 hex>``: an ROI name that may not be shown (module docstring)."""
    return "roi-" + hashlib.sha256(str(name).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def shown_rois(available: Sequence[str], known: Sequence[str]) -> list[str]:
    """``available`` with every name not in ``known`` (the ROIs the mapping chose) as its hash."""
    known = set(known)
    return [name if name in known else roi_hash(name) for name in available]


def _normalise(name: str) -> str:
    return _SEPARATORS.sub("", str(name)).casefold()


def match_roi(available: Sequence[str], wanted: str, aliases: Sequence[str] = (),
              *, path: str | Path = "RTSTRUCT") -> str | None:
    """The name in ``available`` that means ``wanted``, or None.

    Names compare case-insensitively and ignoring whitespace, ``_`` and ``-``
    (``"GTV-1"`` matches ``"gtv_1"`` and ``"GTV 1"``). Candidates are tried in
    order: ``wanted`` exactly as written, ``wanted`` normalised, then each alias
    exactly and normalised. If one step matches several different names
    (``"GTV-1"`` and ``"GTV 1"`` both present, neither exact), a
    :class:`CaseInputError` naming ``path`` is raised rather than guessing.
    """
    available = [str(a) for a in available]
    for candidate in (wanted, *aliases):
        if candidate in available:
            return candidate
        key = _normalise(candidate)
        hits = list(dict.fromkeys(a for a in available if _normalise(a) == key))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise CaseInputError(path, f"ROI name {candidate!r} is ambiguous: it matches {hits}")
    return None


def find_gtvs(available: Sequence[str]) -> list[str]:
    """The numbered GTVs among ``available`` (NSCLC-Radiomics naming), ordered by number.

    Rule: a name is a GTV when, lower-cased and without whitespace, ``_`` and
    ``-``, it is ``gtv`` followed by a positive number (leading zeros allowed):
    ``GTV-1``, ``GTV1``, ``gtv-2``, ``GTV_03``, ``GTV 4``. Not GTVs: bare
    ``GTV``, ``GTV-0``, ``GTVp``, ``GTV-1vol``, ``GTV-1 ring``, ``CTV-1``,
    ``PTV``. Names are returned as written; two spellings of one number (both
    ``GTV-1`` and ``GTV 1``) are both returned, ordered by number then name.
    """
    found = []
    for name in dict.fromkeys(str(a) for a in available):
        m = _GTV_RULE.fullmatch(_normalise(name))
        if m:
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


# --------------------------------------------------------------------------- rasterising


def rasterise_rois(series_files: Sequence[str | Path], rtstruct_path: str | Path,
                   rois: Sequence[str], *, headers: Sequence[Dataset] = ()) -> dict[str, dict[str, np.ndarray]]:
    """Rasterise ROIs (exact names; see :func:`match_roi`) onto the CT slices of ``series_files``.

    Returns ``{roi: {SOPInstanceUID: (rows, cols) uint8 0/1 mask}}`` with one
    entry per file of the series (zeros where the ROI has no contour). Raises
    :class:`CaseInputError` (naming the RTSTRUCT or the CT file at fault) for
    an unreadable file, a missing or empty ROI, contours on slices that are not
    in the series, or a series geometry rt-utils cannot rasterise correctly.
    ``headers`` (``CtSeries.headers``, one per file, with ``CtSeries.files``) spares reading
    the CT headers again; that series has its identical copies of a slice already dropped.
    """
    rtstruct_path = Path(rtstruct_path)
    ds = _read_rtstruct(rtstruct_path)
    files = [Path(f) for f in series_files]
    if headers and len(headers) != len(files):
        raise ParameterError(f"{len(headers)} headers given for {len(files)} series files")
    series = _check_series(files, list(headers) or _read_series(files), rtstruct_path)
    # rt-utils' own slice order (ascending along the normal; get_slice_position, vectorised
    # since _check_series made every slice share the orientation) and its patient-to-pixel transform.
    positions = _slice_positions(series)
    order = np.argsort(positions, kind="stable")
    series, positions = [series[i] for i in order], positions[order]
    to_pixel = rt_image.get_patient_to_pixel_transformation_matrix(series)
    names = [str(i.get("ROIName", "")) for i in ds.StructureSetROISequence]
    uids = [str(s.SOPInstanceUID) for s in series]
    empty = np.zeros((int(series[0].Rows), int(series[0].Columns)), dtype=np.uint8)
    empty.flags.writeable = False  # shared by every slice without contours

    result: dict[str, dict[str, np.ndarray]] = {}
    for roi in dict.fromkeys(rois):
        item = _structure_set_item(ds, rtstruct_path, roi, names)
        contours = _contours_of(ds, rtstruct_path, roi, item.ROINumber)
        by_slice: dict[int, list] = {}
        for index, contour_data in _clean_contours(rtstruct_path, roi, contours, series, positions):
            by_slice.setdefault(index, []).append(contour_data)
        masks = dict.fromkeys(uids, empty)
        for index, slice_contours in by_slice.items():
            try:
                mask = rt_image.get_slice_mask_from_slice_contour_data(series[index], slice_contours, to_pixel)
            except Exception as exc:  # rt-utils / OpenCV raise plain Exceptions and cv2.error
                raise CaseInputError(rtstruct_path, f"ROI {roi!r}: rt-utils could not rasterise it ({exc})") from exc
            # rt-utils builds (Columns, Rows) masks; equal to (Rows, Columns) for the square images allowed.
            masks[uids[index]] = np.asarray(mask, dtype=np.uint8)
        if not any(masks[uids[i]].any() for i in by_slice):
            raise CaseInputError(rtstruct_path, f"ROI {roi!r}: its contours cover no pixel of the CT "
                                                "slices (outside the field of view?)")
        result[roi] = masks
    return result


def _read_rtstruct(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise MissingInputError(path, "file not found") from exc
    except IsADirectoryError as exc:
        raise CaseInputError(path, "is a folder, expected an RTSTRUCT file") from exc
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise CaseInputError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != RTSTRUCT_SOP_CLASS:
        raise CaseInputError(path, f"not an RTSTRUCT (SOP class {sop_class or 'missing'}, "
                                   f"modality {ds.get('Modality', 'missing')})")
    try:
        RTStructBuilder.validate_rtstruct(ds)
    except Exception as exc:
        raise CaseInputError(path, "RTSTRUCT lacks ROIContourSequence, StructureSetROISequence "
                                   "or RTROIObservationsSequence (truncated or incomplete file?)") from exc
    if not ds.get("ReferencedFrameOfReferenceSequence"):
        raise CaseInputError(path, "RTSTRUCT lacks ReferencedFrameOfReferenceSequence")
    return ds


def _read_series(files: list[Path]) -> list[Dataset]:
    series = []
    for f in files:
        try:
            # Only the tags rt-utils and the checks below use: parsing whole headers was half the time.
            series.append(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=GEOMETRY_TAGS))
        except FileNotFoundError as exc:
            raise MissingInputError(f, "file not found") from exc
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise CaseInputError(f, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    return series


def _check_series(files: list[Path], series: list[Dataset], rtstruct_path: Path) -> list[Dataset]:
    """The series' headers, checked for what rt-utils needs to place contours correctly."""
    if not files:
        raise CaseInputError(rtstruct_path, "no CT series files given to rasterise onto")
    for f, ds in zip(files, series):
        for tag in ("SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing", "Rows", "Columns"):
            if ds.get(tag) in (None, ""):
                raise CaseInputError(f, f"CT slice lacks {tag}")

    uids = [str(s.SOPInstanceUID) for s in series]
    if len(set(uids)) != len(uids):
        first_of = {}
        for f, uid in zip(files, uids):
            if first_of.setdefault(uid, f) is not f:
                raise CaseInputError(f, f"same SOPInstanceUID as {first_of[uid].name}; contours name slices "
                                        "by it, so it must be unique in the series")
    first, path0 = series[0], files[0]
    rows, cols = int(first.Rows), int(first.Columns)
    spacing = np.asarray(first.PixelSpacing, dtype=np.float64)
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    # rt-utils makes (Columns, Rows) masks and divides x by the row spacing: only square is right.
    if rows != cols:
        raise CaseInputError(path0, f"image is {rows}x{cols}; rt-utils rasterises only square images")
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or spacing.min() <= 0:
        raise CaseInputError(path0, f"PixelSpacing {spacing.tolist()} is not two positive numbers")
    if abs(spacing[0] - spacing[1]) > _REL_TOL * spacing.max():
        raise CaseInputError(path0, f"PixelSpacing {spacing.tolist()} is not square; rt-utils "
                                    "rasterises only square pixels")
    try:
        row_dir, col_dir, _ = rt_image.get_slice_directions(first)
    except Exception as exc:
        raise CaseInputError(path0, f"invalid ImageOrientationPatient {orientation.tolist()}") from exc
    origin0 = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    for f, s in zip(files, series):
        if (int(s.Rows), int(s.Columns)) != (rows, cols):
            raise CaseInputError(f, f"image is {s.Rows}x{s.Columns}, the series' first is {rows}x{cols}")
        if not np.allclose(np.asarray(s.PixelSpacing, dtype=np.float64), spacing, rtol=_REL_TOL, atol=0):
            raise CaseInputError(f, f"PixelSpacing {list(s.PixelSpacing)} differs from the series' "
                                    f"{spacing.tolist()}")
        if not np.allclose(np.asarray(s.ImageOrientationPatient, dtype=np.float64), orientation, atol=_REL_TOL):
            raise CaseInputError(f, "ImageOrientationPatient differs from the series' first slice")
        # rt-utils maps every contour with the first slice's origin: the in-plane origin must not move.
        shift = np.asarray(s.ImagePositionPatient, dtype=np.float64) - origin0
        drift = max(abs(shift @ row_dir), abs(shift @ col_dir)) / spacing[0]
        if not np.isfinite(drift) or drift > _INPLANE_TOL_PX:
            raise CaseInputError(f, f"slice origin is shifted in-plane by {drift:.2f} pixels from the "
                                    "series' first slice (gantry tilt?); rt-utils cannot place contours")
    return series


def _structure_set_item(ds: Dataset, path: Path, roi: str, names: list[str]) -> Dataset:
    items = [i for i in ds.StructureSetROISequence if str(i.get("ROIName", "")) == roi]
    if not items:
        raise CaseInputError(path, f"no ROI named {roi!r}; available ROIs: {shown_rois(names, [roi])}")
    if len(items) > 1:
        raise CaseInputError(path, f"{len(items)} ROIs are named {roi!r}")
    return items[0]


def _contours_of(ds: Dataset, path: Path, roi: str, number) -> list[Dataset]:
    for item in ds.ROIContourSequence:
        if str(item.get("ReferencedROINumber", "")) == str(number):
            contours = list(item.get("ContourSequence", []) or [])
            if not contours:
                break
            return contours
    raise CaseInputError(path, f"ROI {roi!r} has no contours")


def _contour_data(contour: Dataset) -> np.ndarray:
    """ContourData as float64, parsed straight from its bytes when pydicom has not converted it yet.

    pydicom converts a DS value to one Python object per number; a lung contour has
    thousands, and this conversion was the larger part of rasterising a series.
    """
    element = contour.get_item(_CONTOUR_DATA)
    if element is None:
        return np.zeros(0)
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        text = value.decode("ascii", errors="replace").strip(" \x00")
        try:
            return np.array(text.split("\\"), dtype=np.float64) if text else np.zeros(0)
        except ValueError:  # not plain decimal strings: let pydicom convert (and complain)
            value = contour.ContourData
    return np.asarray(value if value is not None else [], dtype=np.float64).ravel()


def _slice_positions(series: list[Dataset]) -> np.ndarray:
    """Each slice's ImagePositionPatient along the (shared) slice normal, as rt-utils computes it."""
    _, _, normal = rt_image.get_slice_directions(series[0])
    return np.array([[float(v) for v in s.ImagePositionPatient] for s in series]) @ normal


def _clean_contours(path: Path, roi: str, contours: list[Dataset], series: list[Dataset],
                    positions: np.ndarray) -> list[tuple[int, list[float]]]:
    """The area contours of one ROI as (index of their slice in ``series``, ContourData); see the module doc.

    ``positions`` are the slices' positions along the normal, ascending (:func:`_slice_positions`).
    """
    normal = np.cross(*(np.asarray(series[0].ImageOrientationPatient, dtype=np.float64).reshape(2, 3)))
    if len(series) > 1:
        tolerance = 0.5 * float(np.diff(positions).min())
    else:
        tolerance = 0.5 * float(series[0].get("SliceThickness") or 1.0)
    by_uid = {str(s.SOPInstanceUID): i for i, s in enumerate(series)}
    to_pixel = rt_image.get_patient_to_pixel_transformation_matrix(series)

    kept, missing, short = [], set(), 0
    referenced = set()
    for n, contour in enumerate(contours):
        try:
            data = _contour_data(contour)
        except (ValueError, TypeError) as exc:  # pydicom's DS conversion of a corrupt value
            raise CaseInputError(path, f"ROI {roi!r}: contour {n} ContourData is not a list of numbers "
                                       f"({exc})") from exc
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
        if data.size % 3:
            raise CaseInputError(path, f"ROI {roi!r}: contour {n} has {data.size} coordinates, "
                                       "not a multiple of 3")
        points = data.reshape(-1, 3)
        if kind != "CLOSED_PLANAR" or len(points) < 3:
            short += 1
            continue
        if not np.all(np.isfinite(points)):
            raise CaseInputError(path, f"ROI {roi!r}: contour {n} has non-finite coordinates")
        pixels = rt_image.apply_transformation_to_3d_points(points, to_pixel)[:, :2]
        if np.abs(pixels).max() > _MAX_PIXEL_COORD:
            raise CaseInputError(path, f"ROI {roi!r}: contour {n} lies {np.abs(pixels).max():.0f} pixels "
                                       "from the image (corrupt coordinates?)")
        heights = points @ normal
        images = contour.get("ContourImageSequence") or []
        uid = str(images[0].get("ReferencedSOPInstanceUID", "")) if images else ""
        if uid:
            referenced.add(uid)
            if uid not in by_uid:
                missing.add(uid)
                continue
            index = by_uid[uid]
            off = float(np.abs(heights - positions[index]).max())
            if off > tolerance:
                raise CaseInputError(path, f"ROI {roi!r}: contour {n} lies {off:.2f} mm off the plane of "
                                           f"slice {uid} it refers to")
        else:
            # No reference (optional in DICOM): use the slice whose plane holds the contour.
            index = int(np.abs(positions - heights.mean()).argmin())
            off = float(np.abs(heights - positions[index]).max())
            if off > tolerance:
                raise CaseInputError(path, f"ROI {roi!r}: contour {n} has no ContourImageSequence and lies "
                                           f"{off:.2f} mm from the nearest CT slice")
        kept.append((index, data))

    if missing:
        shown = sorted(missing)[:3]
        raise CaseInputError(path, f"ROI {roi!r}: {len(missing)} of the {len(referenced)} CT slices its "
                                   f"contours refer to are not in the series ({len(series)} slices), "
                                   f"e.g. SOPInstanceUID {', '.join(shown)}")
    if not kept:
        raise CaseInputError(path, f"ROI {roi!r} has no closed contour of 3 or more points "
                                   f"({short} point/line/open contours ignored)")
    return kept
