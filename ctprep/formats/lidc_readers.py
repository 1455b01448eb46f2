"""LIDC-IDRI readers' annotations as voxels: per-reader masks, nodule groups across readers, consensus.

Convention: everything works in the series' *native* layout ``(slice, row, col)``
(see :mod:`ctprep.formats.lidc_xml`, whose data this module rasterises); a reader's
nodule is keyed ``(reader_index, nodule_id)``.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np

from ctprep.errors import CaseInputError
from ctprep.formats.lidc_xml import LidcAnnotations, Nodule, NoduleGroup, ReaderNoduleKey, Roi
from lkbase.errors import ParameterError


# --------------------------------------------------------------------------- masks


class SliceLocator:
    """Find a roi's native slice index: by SOP Instance UID, else by z within half a slice interval."""

    def __init__(self, native_sop_uids: Sequence[str], native_z_mm: Sequence[float],
                 z_tolerance_mm: float | None = None):
        if len(native_sop_uids) != len(native_z_mm):
            raise ParameterError(f"{len(native_sop_uids)} SOP UIDs but {len(native_z_mm)} z positions")
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
        raise ParameterError(f"shape {shape} needs one SOP UID and one z per slice, "
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
        raise ParameterError(f"consensus level must be in [0, 1], found {level}")
    return max(1, math.ceil(level * n_readers - 1e-9))


def _votes(masks: Sequence[np.ndarray]) -> np.ndarray:
    if not masks:
        raise ParameterError("consensus of no masks")
    shape = np.shape(masks[0])
    votes = np.zeros(shape, dtype=np.uint16)
    for mask in masks:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ParameterError(f"masks differ in shape: {shape} and {mask.shape}")
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
        raise ParameterError(f"n_readers={n} is fewer than the {len(masks)} masks given")
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
            raise ParameterError("no masks: cannot tell the volume's shape")
        out = np.zeros(np.shape(next(iter(masks.values()))), dtype=np.uint8)
    return out
