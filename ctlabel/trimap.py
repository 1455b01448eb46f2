"""Trimaps: foreground, unknown and background around one lesion, from three kinds of evidence.

A trimap is a uint8 array of one slice (or a crop of it), stored as ``trimap_<name>``:

    0 background (alpha fixed at 0) . 128 unknown (solved by matting) . 255 foreground (alpha 1)

* :func:`trimap_from_mask`: a binary mask; erosion gives the foreground, dilation the
  background, the band between them is a fraction of the lesion's size (mm floor and cap);
* :func:`trimap_from_readers`: several readers' masks (LIDC); foreground where all agree,
  background outside their union dilated by a margin;
* :func:`trimap_from_recist`: RECIST long and short axes; OpenCV GrabCut initialised from
  the axes segments the lesion, then its mask gets the band of :func:`trimap_from_mask`.

Every width is in millimetres and becomes pixels through the slice's in-plane spacing
``(y, x)`` mm, so one setting means the same anatomy whatever the pixel size. Points are
``(x, y)`` = (column, row) pixel coordinates, pixel centres at integers. The functions here
only build trimaps; :func:`require_foreground_and_background` is the check a trimap must
pass before it goes to the matting solver.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Sequence

import cv2  # ~0.3 s to import, and every function here uses it
import numpy as np

from ctlabel.errors import LabelInputError, LesionError, TrimapError
from ctprep.errors import RecistAxesError
from ctprep.formats.recist import CLAMPED, QuarterEllipse
from lkbase.errors import ParameterError

BACKGROUND, UNKNOWN, FOREGROUND = 0, 128, 255
TRIMAP_VALUES = {"background": BACKGROUND, "unknown": UNKNOWN, "foreground": FOREGROUND}

Spacing = Sequence[float]  # in-plane (y, x) mm
Point = Sequence[float]  # (x, y) pixels


@dataclass(frozen=True, kw_only=True)
class TrimapParams:
    """How trimaps are built; stored with every trimap so a re-run with the same values resumes.

    The band (half-width of the unknown region on each side of the lesion border) is
    ``band_fraction`` x the lesion's equivalent diameter (that of the disc of equal area),
    clipped to ``[min_band_mm, max_band_mm]``: wide enough for the partial-volume rim of a
    big lesion, never so wide that a small one loses its foreground.
    """

    band_fraction: float = 0.1
    min_band_mm: float = 1.0
    max_band_mm: float = 10.0
    readers_margin_mm: float = 2.0  # --from readers: background starts this far outside the union
    grabcut_iterations: int = 2  # --from recist
    box_margin: float = 0.15  # GrabCut's probable-background box: RECIST extent + this x long axis ...
    min_box_margin_mm: float = 2.0  # ... and at least this
    seed_scale: float = 0.5  # definite foreground: the RECIST ellipse shrunk by this about its centre
    grabcut_max_side: int = 64  # GrabCut runs on the crop shrunk to at most this many pixels a side
    crop_margin_fraction: float = 0.5  # each lesion's crop: its box + this x its larger side ...
    min_crop_margin_mm: float = 5.0  # ... and at least this (context for GrabCut's background model)
    # --from recist: GrabCut is kept only when plausible against the RECIST ellipse (ctlabel/recist_check.py)
    max_area_ratio: float = 1.25  # its area within [1/r, r] x the ellipse's
    min_axis_cover: float = 0.9  # it covers this fraction of each axis
    max_diameter_error: float = 0.1  # and RECIST measured on it is within this fraction of the given axes

    def __post_init__(self) -> None:
        for name in ("band_fraction", "min_band_mm", "max_band_mm", "readers_margin_mm", "box_margin",
                     "min_box_margin_mm", "crop_margin_fraction", "min_crop_margin_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ParameterError(f"trimap parameter {name} must be a number >= 0, found {value!r}")
        if not (self.max_area_ratio >= 1 and 0 <= self.min_axis_cover <= 1 and 0 <= self.max_diameter_error):
            raise ParameterError(f"trimap parameters: max_area_ratio must be >= 1, min_axis_cover in [0, 1] and "
                                 f"max_diameter_error >= 0, found {self.max_area_ratio}, {self.min_axis_cover}, "
                                 f"{self.max_diameter_error}")
        if self.min_band_mm > self.max_band_mm:
            raise ParameterError(f"trimap parameters: min_band_mm {self.min_band_mm} > max_band_mm {self.max_band_mm}")
        if not 0 < self.seed_scale < 1:
            raise ParameterError(f"trimap parameter seed_scale must be in (0, 1), found {self.seed_scale}")
        if int(self.grabcut_iterations) != self.grabcut_iterations or self.grabcut_iterations < 1:
            raise ParameterError(f"trimap parameter grabcut_iterations must be an integer >= 1, "
                             f"found {self.grabcut_iterations!r}")
        if int(self.grabcut_max_side) != self.grabcut_max_side or self.grabcut_max_side < 16:
            raise ParameterError(f"trimap parameter grabcut_max_side must be an integer >= 16, "
                             f"found {self.grabcut_max_side!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "TrimapParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"unknown trimap parameters: {', '.join(unknown)}")
        return cls(**dict(data))


# ---- pixels and millimetres -----------------------------------------------------------------
def _spacing(spacing: Spacing) -> tuple[float, float]:
    sy, sx = (float(v) for v in spacing)
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise ParameterError(f"in-plane spacing must be two positive numbers (y, x) mm, found {tuple(spacing)}")
    return sy, sx


def kernel(radius_mm: float, spacing: Spacing) -> np.ndarray:
    """The elliptical structuring element of radius ``radius_mm`` on this pixel grid (>= 1 pixel).

    Anisotropic pixels give an ellipse in pixels, a disc in millimetres.
    """
    sy, sx = _spacing(spacing)
    ry, rx = (max(1, round(radius_mm / s)) for s in (sy, sx))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1))


def equivalent_diameter_mm(mask: np.ndarray, spacing: Spacing) -> float:
    """Diameter of the disc with the mask's area, in mm (0 for an empty mask)."""
    sy, sx = _spacing(spacing)
    return 2.0 * math.sqrt(np.count_nonzero(mask) * sy * sx / math.pi)


def band_width_mm(mask: np.ndarray, spacing: Spacing, params: TrimapParams = TrimapParams()) -> float:
    """The unknown band's half-width for this lesion: a fraction of its size, within the mm bounds."""
    size = params.band_fraction * equivalent_diameter_mm(mask, spacing)
    return float(min(max(size, params.min_band_mm), params.max_band_mm))


def _mean_spacing(spacing: Spacing) -> float:
    # Distances along arbitrary directions (RECIST axes) use the geometric mean pixel size;
    # CT pixels are square in practice, so this is exact there.
    sy, sx = _spacing(spacing)
    return math.sqrt(sy * sx)


# ---- trimaps from masks ---------------------------------------------------------------------
def _as_mask(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ParameterError(f"{what} must be a 2-D slice, found shape {mask.shape}")
    return (mask != 0).astype(np.uint8)


def trimap_from_mask(mask: np.ndarray, spacing: Spacing, *, band_mm: float | None = None,
                     params: TrimapParams = TrimapParams()) -> np.ndarray:
    """Foreground = mask eroded by the band, background = outside the mask dilated by it, unknown between.

    ``band_mm`` defaults to :func:`band_width_mm` of ``mask``; pass it to size the band on one
    lesion while ``mask`` also holds its neighbours. The result can lack foreground (a lesion
    thinner than twice the band): check with :func:`require_foreground_and_background`.
    """
    binary = _as_mask(mask, "mask")
    band = band_width_mm(binary, spacing, params) if band_mm is None else float(band_mm)
    element = kernel(band, spacing)
    trimap = np.full(binary.shape, UNKNOWN, dtype=np.uint8)
    trimap[cv2.dilate(binary, element) == 0] = BACKGROUND
    trimap[cv2.erode(binary, element) != 0] = FOREGROUND  # outside the image counts as lesion: crops may cut it
    return trimap


def trimap_from_readers(intersection: np.ndarray, union: np.ndarray, spacing: Spacing, *,
                        margin_mm: float = TrimapParams().readers_margin_mm) -> np.ndarray:
    """Foreground where every reader marked the lesion, background beyond ``margin_mm`` outside the union.

    A pixel of the intersection belongs to the union by definition, so it is added to it.
    """
    inter = _as_mask(intersection, "intersection")
    uni = _as_mask(union, "union")
    if inter.shape != uni.shape:
        raise ParameterError(f"intersection {inter.shape} and union {uni.shape} differ in shape")
    uni |= inter
    trimap = np.full(inter.shape, UNKNOWN, dtype=np.uint8)
    trimap[cv2.dilate(uni, kernel(margin_mm, spacing)) == 0] = BACKGROUND
    trimap[inter != 0] = FOREGROUND
    return trimap


def require_foreground_and_background(trimap: np.ndarray, lesion: str = "lesion",
                                      region: np.ndarray | None = None) -> None:
    """Raise :class:`TrimapError` unless the trimap has foreground (within ``region``, if given) and background."""
    foreground = trimap == FOREGROUND
    if region is not None:
        foreground &= region.astype(bool)
    if not foreground.any():
        raise TrimapError(lesion, "trimap has no foreground (lesion thinner than twice the unknown band, "
                                  "or readers that do not overlap); skipped")
    if not (trimap == BACKGROUND).any():
        raise TrimapError(lesion, "trimap has no background (the crop lies inside the lesion's band); skipped")


# ---- RECIST ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Recist:
    """RECIST long and short axes on a slice: two segments ``((x1, y1), (x2, y2))`` in pixels."""

    long: tuple[tuple[float, float], tuple[float, float]]
    short: tuple[tuple[float, float], tuple[float, float]]

    def __post_init__(self) -> None:
        points = np.asarray([*self.long, *self.short], dtype=float)
        if points.shape != (4, 2) or not np.all(np.isfinite(points)):
            raise LabelInputError(f"RECIST axes need 2 finite (x, y) points each, found long={self.long} "
                             f"short={self.short}")

    @classmethod
    def from_axes(cls, long_axis: Sequence[Point], short_axis: Sequence[Point]) -> "Recist":
        """From two point pairs, validating their form (ValueError naming what was found)."""
        return cls(long=_segment(long_axis, "long axis"), short=_segment(short_axis, "short axis"))

    @classmethod
    def from_dict(cls, data: Mapping) -> "Recist":
        """From the annotation schema's ``{"long": [[x1, y1], [x2, y2]], "short": [...]}``."""
        if not isinstance(data, Mapping) or "long" not in data or "short" not in data:
            raise LabelInputError(f"RECIST must be a mapping with 'long' and 'short', found {data!r}")
        return cls.from_axes(data["long"], data["short"])

    def to_dict(self) -> dict:
        return {"long": [list(p) for p in self.long], "short": [list(p) for p in self.short]}

    def points(self) -> np.ndarray:
        """The four end points (long 1, long 2, short 1, short 2) as a (4, 2) float array of (x, y)."""
        return np.asarray([*self.long, *self.short], dtype=float)

    def shifted(self, dx: float, dy: float) -> "Recist":
        """The same axes in a crop whose top-left pixel is ``(dx, dy)`` of this slice."""
        return self._mapped(lambda p: (p[0] - dx, p[1] - dy))

    def scaled(self, factor: float) -> "Recist":
        """The axes on the slice resized by ``factor`` (pixel centres map to pixel centres)."""
        return self._mapped(lambda p: ((p[0] + 0.5) * factor - 0.5, (p[1] + 0.5) * factor - 0.5))

    def _mapped(self, f) -> "Recist":
        return Recist(long=(f(self.long[0]), f(self.long[1])), short=(f(self.short[0]), f(self.short[1])))

    def diameters_mm(self, spacing: Spacing) -> tuple[float, float]:
        """Long and short diameters in mm."""
        sy, sx = _spacing(spacing)
        return tuple(math.hypot((b[0] - a[0]) * sx, (b[1] - a[1]) * sy)  # type: ignore[return-value]
                     for a, b in (self.long, self.short))

    def frame(self, lesion: str = "lesion") -> QuarterEllipse:
        """The axes' own frame: centre where they cross (clamped onto the long axis), unit vectors,
        and the four half-lengths (ctprep.formats.recist, rule CLAMPED)."""
        try:
            return QuarterEllipse.from_axes(self.long, self.short, CLAMPED)
        except RecistAxesError as exc:
            raise LesionError(lesion, str(exc)) from None


def _segment(points: Sequence[Point], what: str) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise LabelInputError(f"RECIST {what}: expected [[x1, y1], [x2, y2]], found {points!r}") from None
    if array.shape != (2, 2) or not np.all(np.isfinite(array)):
        raise LabelInputError(f"RECIST {what}: expected [[x1, y1], [x2, y2]] of finite numbers, found {points!r}")
    return (float(array[0, 0]), float(array[0, 1])), (float(array[1, 0]), float(array[1, 1]))


def recist_ellipse(recist: Recist, *, scale: float = 1.0, points: int = 64, lesion: str = "lesion") -> np.ndarray:
    """The closed curve the axes span, as an (n, 2) polygon of (x, y) pixels.

    Four quarter-ellipses, one per quadrant of the axes' frame, each with the half-lengths of
    the axes bounding it, so the curve passes exactly through the four RECIST end points even
    when the axes do not cross at their middles. ``scale`` shrinks it about the crossing.
    """
    return recist.frame(lesion).outline(scale=scale, points=points)


def recist_box(recist: Recist, margin_px: float, lesion: str = "lesion") -> np.ndarray:
    """The rectangle along the axes holding their extent plus ``margin_px`` each side: (4, 2) corners.

    No lesion pixel can lie beyond the long axis's ends (it is the longest diameter), so this
    box, with a margin for annotation error, bounds where GrabCut may grow the lesion.
    """
    f = recist.frame(lesion)
    m = margin_px
    corners = np.array([[-f.u_neg - m, -f.v_neg - m], [f.u_pos + m, -f.v_neg - m],
                        [f.u_pos + m, f.v_pos + m], [-f.u_neg - m, f.v_pos + m]])
    return f.to_pixels(corners)


_SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel RECIST coordinates are kept


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def grabcut_init_mask(shape: tuple[int, int], recist: Recist, spacing: Spacing,
                      params: TrimapParams = TrimapParams(), lesion: str = "lesion") -> np.ndarray:
    """GrabCut's initial labels (cv2.GC_*) from the RECIST axes.

    Definite foreground: the axes and their ellipse shrunk by ``seed_scale`` (inside the lesion
    for any convex lesion: the shrunk ellipse lies inside the quadrilateral of the end points);
    probable foreground: the ellipse; probable background: the rest of the margin box;
    definite background: outside the box.
    """
    long_mm = recist.diameters_mm(spacing)[0]
    margin_px = max(params.box_margin * long_mm, params.min_box_margin_mm) / _mean_spacing(spacing)
    labels = np.full(shape, cv2.GC_BGD, dtype=np.uint8)
    cv2.fillConvexPoly(labels, _fixed(recist_box(recist, margin_px, lesion)), cv2.GC_PR_BGD, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(labels, [_fixed(recist_ellipse(recist, lesion=lesion))], cv2.GC_PR_FGD, cv2.LINE_8, _SHIFT)
    seeds = np.zeros(shape, dtype=np.uint8)
    _draw_seeds(seeds, recist, params, lesion)
    labels[seeds != 0] = cv2.GC_FGD
    return labels


def _draw_seeds(canvas: np.ndarray, recist: Recist, params: TrimapParams, lesion: str,
                with_axes: bool = True) -> None:
    cv2.fillPoly(canvas, [_fixed(recist_ellipse(recist, scale=params.seed_scale, lesion=lesion))], 1,
                 cv2.LINE_8, _SHIFT)
    if with_axes:
        for a, b in (recist.long, recist.short):
            cv2.line(canvas, tuple(int(v) for v in _fixed([a])[0]), tuple(int(v) for v in _fixed([b])[0]), 1, 1,
                     cv2.LINE_8, _SHIFT)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ParameterError(f"GrabCut needs a uint8 (y, x) or (y, x, 3) image, found {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def grabcut_region(shape: tuple[int, int], recist: Recist, spacing: Spacing,
                   params: TrimapParams = TrimapParams(), lesion: str = "lesion") -> tuple[slice, slice]:
    """Where GrabCut runs: the margin box's bounding box plus a context margin, within ``shape``.

    The context (``crop_margin_fraction`` x the long axis, at least ``min_crop_margin_mm``) is
    definite background that teaches GrabCut's background model; farther pixels add cost only.
    """
    long_mm = recist.diameters_mm(spacing)[0]
    pixel = _mean_spacing(spacing)
    box_px = max(params.box_margin * long_mm, params.min_box_margin_mm) / pixel
    context_px = max(params.crop_margin_fraction * long_mm, params.min_crop_margin_mm) / pixel
    corners = recist_box(recist, box_px, lesion)
    (x0, y0), (x1, y1) = corners.min(axis=0) - context_px, corners.max(axis=0) + context_px
    h, w = shape
    rows = slice(int(np.clip(np.floor(y0), 0, h)), int(np.clip(np.ceil(y1) + 1, 0, h)))
    cols = slice(int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.ceil(x1) + 1, 0, w)))
    if rows.stop - rows.start < 2 or cols.stop - cols.start < 2:
        raise LesionError(lesion, f"RECIST axes lie outside the {w}x{h} image")
    return rows, cols


def grabcut_from_recist(image: np.ndarray, recist: Recist, spacing: Spacing,
                        params: TrimapParams = TrimapParams(), lesion: str = "lesion") -> np.ndarray:
    """The lesion segmented by GrabCut from RECIST seeds: a bool mask of ``image``'s shape.

    GrabCut runs on :func:`grabcut_region` only (whatever the size of ``image``), shrunk to at
    most ``grabcut_max_side`` pixels a side (its cost grows with the pixel count; the trimap's
    band and the matting at full resolution absorb the coarser border); it keeps the parts
    touching the seeds and fills holes.
    """
    image = _as_bgr(image)
    sy, sx = _spacing(spacing)
    rows, cols = grabcut_region(image.shape[:2], recist, spacing, params, lesion)
    region = image[rows, cols]
    region_recist = recist.shifted(cols.start, rows.start)
    h, w = region.shape[:2]
    factor = min(1.0, params.grabcut_max_side / max(h, w))
    if factor < 1.0:
        small = cv2.resize(region, (max(1, round(w * factor)), max(1, round(h * factor))),
                           interpolation=cv2.INTER_AREA)
        factor_y, factor_x = small.shape[0] / h, small.shape[1] / w
        small_recist = region_recist.scaled(min(factor_x, factor_y))
        small_spacing = (sy / factor_y, sx / factor_x)
    else:
        small, small_recist, small_spacing = np.ascontiguousarray(region), region_recist, (sy, sx)
    labels = grabcut_init_mask(small.shape[:2], small_recist, small_spacing, params, lesion)
    background_model = np.zeros((1, 65), dtype=np.float64)
    foreground_model = np.zeros((1, 65), dtype=np.float64)
    # GrabCut seeds its colour models with k-means++ drawing from OpenCV's per-thread RNG, which
    # every call advances: reset it (0 = OpenCV's initial state) so a lesion's result does not
    # depend on which lesions this thread labelled before (--workers, --dask give the same bytes).
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(small, labels, None, background_model, foreground_model, int(params.grabcut_iterations),
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:
        raise TrimapError(lesion, f"GrabCut failed: {str(exc).strip().splitlines()[-1]}") from None
    segmented = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    segmented = _seeded_filled(segmented, labels == cv2.GC_FGD)
    if factor < 1.0:
        segmented = cv2.resize(segmented.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    out = np.zeros(image.shape[:2], dtype=bool)
    out[rows, cols] = segmented
    return out


def _seeded_filled(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that touch a seed, holes filled (uint8 0/1)."""
    count, components = cv2.connectedComponents(mask, connectivity=8)
    keep = np.unique(components[seeds & (mask != 0)])
    kept = np.isin(components, keep[keep != 0]).astype(np.uint8)
    contours, _ = cv2.findContours(kept, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(kept)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def trimap_from_recist(image: np.ndarray, long_axis: Sequence[Point], short_axis: Sequence[Point],
                       spacing: Spacing, *, params: TrimapParams = TrimapParams(),
                       lesion: str = "lesion") -> np.ndarray:
    """Trimap of the lesion the RECIST axes measure, on ``image`` (a crop around it, uint8 grey or 3-channel).

    GrabCut (:func:`grabcut_from_recist`) segments the lesion; that mask gets the band of
    :func:`trimap_from_mask`; the seed ellipse stays foreground whatever GrabCut decided.
    """
    recist = Recist.from_axes(long_axis, short_axis)
    image = _as_bgr(image)
    segmented = grabcut_from_recist(image, recist, spacing, params, lesion)
    trimap = trimap_from_mask(segmented, spacing, params=params)
    seeds = np.zeros(image.shape[:2], dtype=np.uint8)
    _draw_seeds(seeds, recist, params, lesion, with_axes=False)
    trimap[seeds != 0] = FOREGROUND
    return trimap


def recist_from_mask(mask2d: np.ndarray, spacing: Spacing) -> Recist:
    """RECIST axes measured on a mask: its longest diameter and the longest chord perpendicular to it.

    Measured between pixel centres in millimetres (anisotropic pixels allowed). The long axis
    joins the two farthest points of the convex hull; the short axis is the longest extent of
    the mask along the perpendicular, over one-pixel-wide strips along the long axis.
    """
    mask = _as_mask(mask2d, "mask")
    sy, sx = _spacing(spacing)
    ys, xs = np.nonzero(mask)
    if len(xs) < 2:
        raise LesionError("mask", f"RECIST needs a lesion of at least 2 pixels, found {len(xs)}")
    mm = np.stack([xs * sx, ys * sy], axis=1).astype(np.float64)
    hull = cv2.convexHull(mm.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    distances = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(distances.argmax()), distances.shape)
    p1, p2 = hull[i], hull[j]
    u = (p2 - p1) / np.linalg.norm(p2 - p1)
    v = np.array([-u[1], u[0]])
    along, across = (mm - p1) @ u, (mm - p1) @ v
    strip = min(sx, sy)
    bins = np.round(along / strip).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    bins, across = bins[order], across[order]
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    highs, lows = np.maximum.reduceat(across, starts), np.minimum.reduceat(across, starts)
    best = int(np.argmax(highs - lows))
    at = bins[starts[best]] * strip
    q1, q2 = p1 + at * u + lows[best] * v, p1 + at * u + highs[best] * v

    def pixels(point: np.ndarray) -> tuple[float, float]:
        return float(point[0] / sx), float(point[1] / sy)

    return Recist(long=(pixels(p1), pixels(p2)), short=(pixels(q1), pixels(q2)))
