"""LIDC-IDRI reader annotations: parsed XML as data, per-reader masks, nodule groups, consensus.

An LIDC-IDRI XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) holds
the reading sessions of (usually) four radiologists for one CT series. Each
session lists

* nodules >= 3 mm (``unblindedReadNodule`` with outlines): :class:`Nodule`,
  one :class:`Roi` per outline (``edgeMap`` points are pixel ``x`` = column,
  ``y`` = row on the slice named by ``imageSOP_UID`` / ``imageZposition``);
* nodules < 3 mm (an ``unblindedReadNodule`` with one roi of one point) and
  non-nodules (``nonNodule`` with one ``locus``): :class:`Point`, never rasterised.

Everything here works in the series' *native* layout ``(slice, row, col)``:
slices in the order of ``native_sop_uids`` / ``native_z_mm`` (the DICOM reader
sorts them ascending along the slice normal); moving the masks onto the
canonical grid is the DICOM reader's job.

Masks (:func:`reader_masks`)
    Each roi is filled on its slice with ``cv2.fillPoly``. LIDC readers were
    told to draw the outline *just outside* the nodule, so the outline pixels
    themselves are not nodule: on every slice the union of the inclusion
    fills loses the pixels of every inclusion outline (``cv2.polylines``,
    closed, thickness 1, 8-connected). This is pylidc's
    ``boolean_mask(include_contour_points=False)`` convention. An
    ``inclusion=FALSE`` roi outlines a region to remove (a hole): its fill,
    outline included, is subtracted. The rule is applied per slice and does
    not depend on roi order.

Groups (:func:`group_nodules`)
    Two readers' nodules are candidates for the same physical nodule when
    their masks share at least one voxel, or when their centroids are no
    farther apart than the larger of the two equivalent-sphere radii and
    one slice interval (a reader may start or stop a slice early). Candidate
    pairs are merged greedily, strongest first (Dice overlap, then distance),
    and a merge is refused when the two groups already hold a nodule of the
    same reader: a reader contributes at most one annotation to a group.
    This follows pylidc's ``cluster_annotations`` in spirit (distance based)
    but adds the overlap test and the one-per-reader constraint.

Consensus (:func:`consensus`)
    A voxel is in the level-``p`` consensus when at least
    ``max(1, ceil(p * N))`` masks contain it, where by default ``N`` is the
    number of readers who marked the nodule (the group's members, as
    pylidc's ``consensus(clevel=...)``): boundary agreement is separated
    from detection agreement, which stays available as the group's
    ``n_readers`` (filter groups with ``n_readers >= 3`` for the LUNA16
    reference standard). ``n_readers=4`` counts the readers who did not mark
    the nodule as voting "no" instead. Level 0 is the union ("any reader"),
    level 1 the intersection; a higher level never adds voxels.

Reader identity: ``reader_index`` is the session's position in the XML. The
XMLs do not link readers across scans (the first session of one XML is not
necessarily the same radiologist as the first of another), and the
``servicingRadiologistID`` is an anonymised id that is not reliable across
files either.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np

from ctprep.errors import CaseInputError, MissingInputError

NAMESPACE = "http://www.nih.gov"
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")

ReaderNoduleKey = tuple[int, str]  # (reader_index, nodule_id)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, kw_only=True)
class Roi:
    """One outline of a nodule on one slice; ``points`` are (x = column, y = row) pixels."""

    z_mm: float
    sop_uid: str
    inclusion: bool
    points: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return {"z_mm": self.z_mm, "sop_uid": self.sop_uid, "inclusion": self.inclusion,
                "points": [list(p) for p in self.points]}


@dataclass(frozen=True, kw_only=True)
class Nodule:
    """A nodule >= 3 mm as outlined by one reader; ``characteristics`` maps names to 1..5/6 ratings."""

    nodule_id: str
    characteristics: dict = field(default_factory=dict)
    rois: tuple[Roi, ...] = ()

    @property
    def inclusion_rois(self) -> tuple[Roi, ...]:
        return tuple(r for r in self.rois if r.inclusion)

    @property
    def exclusion_rois(self) -> tuple[Roi, ...]:
        return tuple(r for r in self.rois if not r.inclusion)

    def to_dict(self) -> dict:
        return {"nodule_id": self.nodule_id, "characteristics": dict(self.characteristics),
                "rois": [r.to_dict() for r in self.rois]}


@dataclass(frozen=True, kw_only=True)
class Point:
    """A nodule < 3 mm (its single edge point) or a non-nodule (its locus): a mark, not an outline."""

    nodule_id: str
    z_mm: float
    sop_uid: str
    x: int
    y: int

    def to_dict(self) -> dict:
        return {"nodule_id": self.nodule_id, "z_mm": self.z_mm, "sop_uid": self.sop_uid,
                "x": self.x, "y": self.y}


@dataclass(frozen=True, kw_only=True)
class ReadingSession:
    """One reader's marks; ``reader_index`` is the session's position in the XML (0-based)."""

    reader_index: int
    servicing_radiologist_id: str
    nodules: tuple[Nodule, ...] = ()
    small_nodules: tuple[Point, ...] = ()
    non_nodules: tuple[Point, ...] = ()

    def to_dict(self) -> dict:
        return {"reader_index": self.reader_index,
                "servicing_radiologist_id": self.servicing_radiologist_id,
                "nodules": [n.to_dict() for n in self.nodules],
                "small_nodules": [p.to_dict() for p in self.small_nodules],
                "non_nodules": [p.to_dict() for p in self.non_nodules]}


@dataclass(frozen=True, kw_only=True)
class LidcAnnotations:
    """Everything one LIDC XML says about one CT series; ``path`` is the XML it came from."""

    series_uid: str
    study_uid: str
    sessions: tuple[ReadingSession, ...]
    path: str = ""

    @property
    def nodules(self) -> tuple[tuple[int, Nodule], ...]:
        """Every (reader_index, nodule >= 3 mm) pair, in XML order."""
        return tuple((s.reader_index, n) for s in self.sessions for n in s.nodules)

    def to_dict(self) -> dict:
        return {"series_uid": self.series_uid, "study_uid": self.study_uid, "path": self.path,
                "sessions": [s.to_dict() for s in self.sessions]}


@dataclass(frozen=True, kw_only=True)
class NoduleGroup:
    """The readers' annotations of one physical nodule.

    ``centroid_voxel`` is (slice, row, col) in the native layout (fractional);
    ``centroid_mm`` is (z along the native slice axis in the series' z
    coordinate, row * row spacing, col * column spacing), the mean of the
    members' centroids; ``diameter_mm`` is the mean equivalent-sphere diameter.
    """

    group_id: int
    members: tuple[ReaderNoduleKey, ...]
    centroid_voxel: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    diameter_mm: float

    @property
    def n_readers(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict:
        return {"group_id": self.group_id, "members": [list(m) for m in self.members],
                "centroid_voxel": list(self.centroid_voxel), "centroid_mm": list(self.centroid_mm),
                "diameter_mm": self.diameter_mm, "n_readers": self.n_readers}


# --------------------------------------------------------------------------- parsing


def _local(tag: object) -> str:
    """An element's tag without namespace, lower case (tag spellings vary between XML versions)."""
    if not isinstance(tag, str):  # comments, processing instructions
        return ""
    return tag.rsplit("}", 1)[-1].lower()


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    name = name.lower()
    return [c for c in element if _local(c.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    for child in _children(element, name):
        if child.text is not None and child.text.strip():
            return child.text.strip()
    return None


def parse_lidc_xml(path: str | Path) -> LidcAnnotations:
    """Parse an LIDC-IDRI XML; :class:`CaseInputError` naming the file when it is unusable."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as exc:
        raise MissingInputError(path, "file not found") from exc
    except ET.ParseError as exc:
        raise CaseInputError(path, f"malformed XML ({exc})") from exc
    except OSError as exc:
        raise CaseInputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if _local(root.tag) != "lidcreadmessage":
        raise CaseInputError(path, f"expected an LIDC CT read message (root <LidcReadMessage>), "
                                   f"found root <{_local(root.tag) or root.tag}>")
    headers = _children(root, "ResponseHeader")
    search = headers + [root]
    series_uid = _find_uid(search, "seriesinstanceuid")
    study_uid = _find_uid(search, "studyinstanceuid") or ""
    if not series_uid:
        raise CaseInputError(path, "no SeriesInstanceUID in the ResponseHeader")
    sessions = tuple(_parse_session(path, index, element)
                     for index, element in enumerate(_children(root, "readingSession")))
    return LidcAnnotations(series_uid=series_uid, study_uid=study_uid, sessions=sessions, path=str(path))


def _find_uid(elements: Iterable[ET.Element], name: str) -> str | None:
    """The first non-empty child named ``name`` (any case) of ``elements``, then anywhere below them."""
    elements = list(elements)
    for element in elements:
        for child in element:
            if _local(child.tag) == name and child.text and child.text.strip():
                return child.text.strip()
    for element in elements:
        for child in element.iter():
            if _local(child.tag) == name and child.text and child.text.strip():
                return child.text.strip()
    return None


def _parse_session(path: Path, index: int, element: ET.Element) -> ReadingSession:
    nodules: list[Nodule] = []
    small: list[Point] = []
    non_nodules: list[Point] = []
    where = f"readingSession {index + 1}"
    for child in element:
        tag = _local(child.tag)
        if tag == "unblindedreadnodule":
            nodule_id = _text(child, "noduleID") or ""
            rois = tuple(_parse_roi(path, f"{where}, nodule {nodule_id!r}", roi)
                         for roi in _children(child, "roi"))
            if len(rois) == 1 and len(rois[0].points) == 1:
                roi = rois[0]
                (x, y), = roi.points
                small.append(Point(nodule_id=nodule_id, z_mm=roi.z_mm, sop_uid=roi.sop_uid, x=x, y=y))
            else:
                nodules.append(Nodule(nodule_id=nodule_id, characteristics=_characteristics(child),
                                      rois=rois))
        elif tag == "nonnodule":
            nodule_id = _text(child, "nonNoduleID") or ""
            context = f"{where}, non-nodule {nodule_id!r}"
            loci = _children(child, "locus")
            if not loci:
                raise CaseInputError(path, f"{context}: no <locus>")
            x, y = _xy(path, context, loci[0])
            non_nodules.append(Point(nodule_id=nodule_id, z_mm=_z(path, context, child),
                                     sop_uid=_text(child, "imageSOP_UID") or "", x=x, y=y))
    return ReadingSession(reader_index=index,
                          servicing_radiologist_id=_text(element, "servicingRadiologistID") or "",
                          nodules=tuple(nodules), small_nodules=tuple(small), non_nodules=tuple(non_nodules))


def _characteristics(nodule: ET.Element) -> dict:
    out: dict = {}
    for block in _children(nodule, "characteristics"):
        for item in block:
            name = item.tag.rsplit("}", 1)[-1] if isinstance(item.tag, str) else ""
            text = (item.text or "").strip()
            if not name or not text:
                continue
            try:
                out[name] = int(text)
            except ValueError:
                try:
                    out[name] = float(text)
                except ValueError:
                    out[name] = text
    return out


def _z(path: Path, context: str, element: ET.Element) -> float:
    text = _text(element, "imageZposition")
    try:
        z = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CaseInputError(path, f"{context}: imageZposition {text!r} is not a number") from None
    if not math.isfinite(z):
        raise CaseInputError(path, f"{context}: imageZposition {text!r} is not finite")
    return z


def _xy(path: Path, context: str, element: ET.Element) -> tuple[int, int]:
    xs, ys = _text(element, "xCoord"), _text(element, "yCoord")
    try:
        return int(round(float(xs))), int(round(float(ys)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise CaseInputError(path, f"{context}: edge point ({xs!r}, {ys!r}) is not a pair of numbers") from None


def _parse_roi(path: Path, context: str, element: ET.Element) -> Roi:
    z = _z(path, context, element)
    context = f"{context}, roi at z={z:g}"
    inclusion_text = (_text(element, "inclusion") or "TRUE").upper()
    if inclusion_text not in ("TRUE", "FALSE"):
        raise CaseInputError(path, f"{context}: inclusion must be TRUE or FALSE, found {inclusion_text!r}")
    points = tuple(_xy(path, context, edge) for edge in _children(element, "edgeMap"))
    return Roi(z_mm=z, sop_uid=_text(element, "imageSOP_UID") or "", inclusion=inclusion_text == "TRUE",
               points=points)


# --------------------------------------------------------------------------- masks


class SliceLocator:
    """Find a roi's native slice index: by SOP Instance UID, else by z within half a slice interval."""

    def __init__(self, native_sop_uids: Sequence[str], native_z_mm: Sequence[float],
                 z_tolerance_mm: float | None = None):
        if len(native_sop_uids) != len(native_z_mm):
            raise ValueError(f"{len(native_sop_uids)} SOP UIDs but {len(native_z_mm)} z positions")
        self.by_uid = {str(uid): k for k, uid in enumerate(native_sop_uids)}
        self.z = np.asarray(native_z_mm, dtype=np.float64)
        if z_tolerance_mm is None:
            steps = np.abs(np.diff(np.sort(self.z)))
            steps = steps[steps > 1e-6]
            z_tolerance_mm = 0.5 * float(np.median(steps)) if steps.size else 0.5
        self.tolerance = float(z_tolerance_mm)

    def index(self, sop_uid: str, z_mm: float) -> int | None:
        k = self.by_uid.get(sop_uid)
        if k is not None:
            return k
        if not self.z.size:
            return None
        k = int(np.argmin(np.abs(self.z - z_mm)))
        return k if abs(self.z[k] - z_mm) <= self.tolerance + 1e-6 else None


def rasterise_nodule(nodule: Nodule, locator: SliceLocator, shape: tuple[int, int, int],
                     source: str | Path = "") -> np.ndarray:
    """One reader's nodule as a (slice, row, col) uint8 {0, 1} mask (see the module docstring)."""
    n, rows, cols = shape
    by_slice: dict[int, list[Roi]] = {}
    for roi in nodule.rois:
        k = locator.index(roi.sop_uid, roi.z_mm)
        if k is None:
            raise CaseInputError(source, f"nodule {nodule.nodule_id!r}: roi at z={roi.z_mm:g} mm "
                                         f"(SOP {roi.sop_uid}) is on no slice of the series")
        if roi.points:
            pts = np.asarray(roi.points)
            if pts[:, 0].min() < 0 or pts[:, 0].max() >= cols or pts[:, 1].min() < 0 or pts[:, 1].max() >= rows:
                raise CaseInputError(source, f"nodule {nodule.nodule_id!r}: roi at z={roi.z_mm:g} mm has points "
                                             f"outside the {rows}x{cols} image")
        by_slice.setdefault(k, []).append(roi)
    mask = np.zeros(shape, dtype=np.uint8)
    for k, rois in by_slice.items():
        mask[k] = _slice_mask(rois, (rows, cols))
    return mask


def _slice_mask(rois: Sequence[Roi], shape: tuple[int, int]) -> np.ndarray:
    fill = np.zeros(shape, dtype=np.uint8)
    outline = np.zeros(shape, dtype=np.uint8)
    holes = np.zeros(shape, dtype=np.uint8)
    for roi in rois:
        if not roi.points:
            continue
        poly = [np.asarray(roi.points, dtype=np.int32).reshape(-1, 1, 2)]
        if roi.inclusion:
            cv2.fillPoly(fill, poly, 1, lineType=cv2.LINE_8)
            cv2.polylines(outline, poly, True, 1, thickness=1, lineType=cv2.LINE_8)
        else:
            cv2.fillPoly(holes, poly, 1, lineType=cv2.LINE_8)
            cv2.polylines(holes, poly, True, 1, thickness=1, lineType=cv2.LINE_8)
    fill[outline.astype(bool)] = 0
    fill[holes.astype(bool)] = 0
    return fill


def reader_masks(annotations: LidcAnnotations, native_sop_uids: Sequence[str],
                 native_z_mm: Sequence[float], shape: tuple[int, int, int],
                 z_tolerance_mm: float | None = None) -> dict[ReaderNoduleKey, np.ndarray]:
    """Every reader's nodule >= 3 mm as a (slice, row, col) uint8 mask, keyed by (reader_index, nodule_id).

    ``native_sop_uids`` / ``native_z_mm`` name the slices of the native layout
    (one per slice, ``shape[0]`` of them). A roi is placed by SOP UID, else by
    z within ``z_tolerance_mm`` (default half the median slice interval); a roi
    on no slice raises :class:`CaseInputError` naming the XML and the z.
    Small nodules and non-nodules (points) are never rasterised.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or len(native_sop_uids) != shape[0] or len(native_z_mm) != shape[0]:
        raise ValueError(f"shape {shape} needs one SOP UID and one z per slice, "
                         f"found {len(native_sop_uids)} and {len(native_z_mm)}")
    locator = SliceLocator(native_sop_uids, native_z_mm, z_tolerance_mm)
    out: dict[ReaderNoduleKey, np.ndarray] = {}
    for reader, nodule in annotations.nodules:
        key = (reader, nodule.nodule_id)
        if key in out:  # a reader reusing a nodule id: keep both, distinguished by a suffix
            suffix = 2
            while (reader, f"{nodule.nodule_id}#{suffix}") in out:
                suffix += 1
            key = (reader, f"{nodule.nodule_id}#{suffix}")
        out[key] = rasterise_nodule(nodule, locator, shape, annotations.path)
    return out


# --------------------------------------------------------------------------- grouping


@dataclass(frozen=True)
class _Stats:
    key: ReaderNoduleKey
    count: int
    centroid: np.ndarray  # voxel (slice, row, col)
    centroid_mm: np.ndarray
    diameter_mm: float
    bbox: tuple[slice, slice, slice] | None


def _stats(key: ReaderNoduleKey, mask: np.ndarray, z: np.ndarray, spacing: tuple[float, float],
           slice_interval: float) -> _Stats:
    idx = np.nonzero(mask)
    count = int(idx[0].size)
    if count == 0:
        nan = np.full(3, np.nan)
        return _Stats(key, 0, nan, nan, 0.0, None)
    centroid = np.array([i.mean() for i in idx])
    centroid_mm = np.array([float(np.interp(centroid[0], np.arange(z.size), z)),
                            centroid[1] * spacing[0], centroid[2] * spacing[1]])
    volume = count * spacing[0] * spacing[1] * slice_interval
    diameter = float((6.0 * volume / math.pi) ** (1.0 / 3.0))
    bbox = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    return _Stats(key, count, centroid, centroid_mm, diameter, bbox)  # type: ignore[arg-type]


def _overlap(a: _Stats, b: _Stats, masks: Mapping[ReaderNoduleKey, np.ndarray]) -> int:
    if a.bbox is None or b.bbox is None:
        return 0
    box = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a.bbox, b.bbox))
    if any(s.start >= s.stop for s in box):
        return 0
    return int(np.count_nonzero(masks[a.key][box] & masks[b.key][box]))


def group_nodules(masks: Mapping[ReaderNoduleKey, np.ndarray], native_z_mm: Sequence[float],
                  pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)) -> tuple[NoduleGroup, ...]:
    """Group the readers' nodule masks by physical nodule (rule in the module docstring).

    ``pixel_spacing_mm`` is (row, column) spacing. Empty masks form groups of
    their own. Groups are numbered from 0 in order of their centroid
    (slice, row, col); members are sorted by reader.
    """
    z = np.asarray(native_z_mm, dtype=np.float64)
    steps = np.abs(np.diff(np.sort(z)))
    steps = steps[steps > 1e-6]
    interval = float(np.median(steps)) if steps.size else 1.0
    spacing = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    stats = [_stats(key, np.asarray(mask), z, spacing, interval) for key, mask in masks.items()]

    pairs = []
    for i, a in enumerate(stats):
        for j in range(i + 1, len(stats)):
            b = stats[j]
            if a.key[0] == b.key[0] or a.count == 0 or b.count == 0:
                continue
            shared = _overlap(a, b, masks)
            distance = float(np.linalg.norm(a.centroid_mm - b.centroid_mm))
            tolerance = max(a.diameter_mm / 2, b.diameter_mm / 2, interval) + 1e-6
            if shared > 0 or distance <= tolerance:
                dice = 2.0 * shared / (a.count + b.count)
                pairs.append((-dice, distance, i, j))
    pairs.sort()

    parent = list(range(len(stats)))
    readers = [{s.key[0]} for s in stats]

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, _, i, j in pairs:
        ri, rj = find(i), find(j)
        if ri == rj or readers[ri] & readers[rj]:
            continue
        parent[rj] = ri
        readers[ri] |= readers[rj]

    clusters: dict[int, list[_Stats]] = {}
    for i, s in enumerate(stats):
        clusters.setdefault(find(i), []).append(s)
    groups = []
    for members in clusters.values():
        members.sort(key=lambda s: (s.key[0], s.key[1]))
        filled = [s for s in members if s.count]
        if filled:
            centroid = tuple(float(v) for v in np.mean([s.centroid for s in filled], axis=0))
            centroid_mm = tuple(float(v) for v in np.mean([s.centroid_mm for s in filled], axis=0))
            diameter = float(np.mean([s.diameter_mm for s in filled]))
        else:
            centroid = centroid_mm = (math.nan, math.nan, math.nan)
            diameter = 0.0
        groups.append((centroid, tuple(s.key for s in members), centroid_mm, diameter))
    groups.sort(key=lambda g: (math.isnan(g[0][0]), g[0] if not math.isnan(g[0][0]) else (0, 0, 0), g[1]))
    return tuple(NoduleGroup(group_id=k, members=members, centroid_voxel=centroid, centroid_mm=centroid_mm,
                             diameter_mm=diameter)
                 for k, (centroid, members, centroid_mm, diameter) in enumerate(groups))


# --------------------------------------------------------------------------- consensus


def votes_needed(level: float, n_readers: int) -> int:
    """How many of ``n_readers`` must agree at ``level`` (0 = any reader, 1 = all): ``max(1, ceil(level * n))``."""
    if not 0.0 <= level <= 1.0 or math.isnan(level):
        raise ValueError(f"consensus level must be in [0, 1], found {level}")
    return max(1, math.ceil(level * n_readers - 1e-9))


def _votes(masks: Sequence[np.ndarray]) -> np.ndarray:
    if not masks:
        raise ValueError("consensus of no masks")
    shape = np.shape(masks[0])
    votes = np.zeros(shape, dtype=np.uint16)
    for mask in masks:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"masks differ in shape: {shape} and {mask.shape}")
        votes += mask.astype(bool)
    return votes


def consensus(masks: Sequence[np.ndarray], level: float, n_readers: int | None = None) -> np.ndarray:
    """Voxels marked by at least ``max(1, ceil(level * N))`` of ``masks``, as uint8 {0, 1}.

    ``N`` defaults to ``len(masks)`` (the readers who marked the nodule);
    pass ``n_readers=4`` to count the LIDC readers who did not mark it as
    voting against (then 75 % of 4 readers needs 3 masks even when only two
    readers marked the nodule, and such a group's consensus is empty).
    """
    n = len(masks) if n_readers is None else int(n_readers)
    if n < len(masks):
        raise ValueError(f"n_readers={n} is fewer than the {len(masks)} masks given")
    return (_votes(masks) >= votes_needed(level, n)).astype(np.uint8)


def intersection(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels every mask marks (consensus at level 1)."""
    return (_votes(masks) >= len(masks)).astype(np.uint8)


def union(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels any mask marks (consensus at level 0)."""
    return (_votes(masks) >= 1).astype(np.uint8)


def group_consensus(groups: Iterable[NoduleGroup], masks: Mapping[ReaderNoduleKey, np.ndarray],
                    level: float, n_readers: int | None = None, min_readers: int = 1) -> np.ndarray:
    """One volume: the union over groups (with ``>= min_readers`` readers) of each group's consensus.

    With no group, a zero volume of the masks' shape (``masks`` must not be empty then).
    """
    out = None
    for group in groups:
        if group.n_readers < min_readers:
            continue
        part = consensus([masks[m] for m in group.members], level, n_readers)
        out = part if out is None else np.maximum(out, part)
    if out is None:
        if not masks:
            raise ValueError("no masks: cannot tell the volume's shape")
        out = np.zeros(np.shape(next(iter(masks.values()))), dtype=np.uint8)
    return out
