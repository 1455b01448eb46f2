"""RECIST trimaps that are never worse than their evidence: GrabCut checked against the RECIST ellipse.

SoftGAN (Wang et al., section 3.1.2 "Trimap Generation with RECIST annotations") builds the
trimap from GrabCut initialised by the RECIST axes, then the band of "Trimap Generation with
binary masks". GrabCut can fail on CT (a lesion touching tissue of its density, a window
that hides its border); the RECIST ellipse (:func:`ctlabel.trimap.recist_ellipse`) is the
radiologist's own evidence. :func:`checked_recist_trimap` takes GrabCut's mask only when it
is plausible against the ellipse, and otherwise the ellipse itself (the "binary mask" of
section 3.1.2); either mask then gets the same band, and the seed ellipse stays foreground.

Kept, it is not used alone: :func:`consensus_trimap` treats GrabCut and the ellipse as two
readers (foreground where both agree, background outside either, the image decides between).

GrabCut is implausible (path ``ellipse``, with the reason) when
  * its area is off the ellipse's by more than ``max_area_ratio`` either way;
  * it does not span the RECIST axes: less than ``min_axis_cover`` of the points along the
    short (or long) axis lie inside it;
  * it leaks into the box margin: it touches the edge of GrabCut's probable-background box
    (no lesion pixel lies beyond the long axis's ends, so a mask reaching that box is leakage);
  * RECIST measured on it (:func:`ctlabel.trimap.recist_from_mask`: longest diameter, longest
    perpendicular) differs from the given long or short diameter by more than
    ``max_diameter_error`` (10 %). The evidence is two diameters, not an ellipse: a mask is
    plausible when a reader measuring it would report the same lesion. 10 % is half of RECIST
    1.1's smallest response step (a 20 % increase is progression), fixed from that rule, not
    fitted; the earlier "Dice with the ellipse >= 0.95" rejected masks for disagreeing with an
    ellipse that real lesions themselves match with Dice 0.73-0.96 (docs/labels.md's table).
The path taken is recorded per lesion (labels' attributes, run summary).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ctlabel.trimap import (
    BACKGROUND,
    FOREGROUND,
    UNKNOWN,
    Recist,
    TrimapParams,
    _draw_seeds,
    _fixed,
    _mean_spacing,
    _SHIFT,
    band_width_mm,
    grabcut_from_recist,
    kernel,
    recist_box,
    recist_ellipse,
    recist_from_mask,
    trimap_from_mask,
)
from lkbase.errors import ParameterError

RECIST_PATHS = ("grabcut", "ellipse")


@dataclass(frozen=True, kw_only=True)
class RecistTrimap:
    """A RECIST lesion's trimap, and which mask it was built from (``grabcut`` or ``ellipse``) and why."""

    trimap: np.ndarray
    path: str
    why: str = ""

    def __post_init__(self) -> None:
        if self.path not in RECIST_PATHS:
            raise ParameterError(f"RECIST path must be one of {', '.join(RECIST_PATHS)}, found {self.path!r}")


def ellipse_mask(shape: tuple[int, int], recist: Recist, lesion: str = "lesion") -> np.ndarray:
    """The RECIST ellipse (four quarter-ellipses through the axes' end points) rasterised: bool of ``shape``."""
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(canvas, [_fixed(recist_ellipse(recist, lesion=lesion))], 1, cv2.LINE_8, _SHIFT)
    return canvas.astype(bool)


def _axis_cover(mask: np.ndarray, segment, samples: int = 33) -> float:
    """The fraction of points along ``segment`` (x, y pixels) inside ``mask``; ends excluded by half a pixel."""
    (x1, y1), (x2, y2) = segment
    t = np.linspace(0.1, 0.9, samples)
    xs = np.clip(np.round(x1 + t * (x2 - x1)).astype(int), 0, mask.shape[1] - 1)
    ys = np.clip(np.round(y1 + t * (y2 - y1)).astype(int), 0, mask.shape[0] - 1)
    return float(mask[ys, xs].mean())


def _touches_box_edge(mask: np.ndarray, recist: Recist, spacing, params: TrimapParams, lesion: str) -> bool:
    long_mm = recist.diameters_mm(spacing)[0]
    margin_px = max(params.box_margin * long_mm, params.min_box_margin_mm) / _mean_spacing(spacing)
    edge = np.zeros(mask.shape, dtype=np.uint8)
    cv2.polylines(edge, [_fixed(recist_box(recist, margin_px, lesion))], True, 1, 1, cv2.LINE_8, _SHIFT)
    return bool((mask & (edge != 0)).any())


def implausible(segmented: np.ndarray, ellipse: np.ndarray, recist: Recist, spacing,
                params: TrimapParams = TrimapParams(), lesion: str = "lesion") -> str:
    """Why GrabCut's ``segmented`` mask is implausible against the RECIST ellipse ('' when plausible)."""
    seg, ell = segmented.astype(bool), ellipse.astype(bool)
    area, expected = np.count_nonzero(seg), max(np.count_nonzero(ell), 1)
    ratio = area / expected
    if not 1 / params.max_area_ratio <= ratio <= params.max_area_ratio:
        return f"area {ratio:.2f} x the ellipse's"
    for name, segment in (("short", recist.short), ("long", recist.long)):
        cover = _axis_cover(seg, segment)
        if cover < params.min_axis_cover:
            return f"spans {cover:.0%} of the {name} axis"
    if _touches_box_edge(seg, recist, spacing, params, lesion):
        return "leaks into the box margin"
    measured = recist_from_mask(seg, spacing).diameters_mm(spacing)
    for name, got, given in zip(("long", "short"), measured, recist.diameters_mm(spacing)):
        if abs(got / given - 1) > params.max_diameter_error:
            return f"measures {got:.1f} mm on the {name} axis, given {given:.1f} mm"
    return ""


def consensus_trimap(segmented: np.ndarray, ellipse: np.ndarray, spacing,
                     params: TrimapParams = TrimapParams()) -> np.ndarray:
    """GrabCut and the ellipse as two readers (SoftGAN's "inconsistent annotations" trimap): foreground
    where both agree, eroded by the band; background outside either, dilated by it; unknown between.

    Where a plausible GrabCut mask and the ellipse disagree, the image decides (matting), not
    either estimate: on the real set of docs/labels.md this never scored below GrabCut's mask alone
    on the gallbladder's largest slice, where GrabCut alone fell below the ellipse.
    """
    seg, ell = segmented.astype(bool), ellipse.astype(bool)
    element = kernel(band_width_mm(ell, spacing, params), spacing)
    trimap = np.full(seg.shape, UNKNOWN, dtype=np.uint8)
    trimap[cv2.dilate((seg | ell).astype(np.uint8), element) == 0] = BACKGROUND
    trimap[cv2.erode((seg & ell).astype(np.uint8), element) != 0] = FOREGROUND
    return trimap


def checked_recist_trimap(image: np.ndarray, recist: Recist, spacing, params: TrimapParams = TrimapParams(),
                          lesion: str = "lesion") -> RecistTrimap:
    """The lesion's trimap from GrabCut when plausible, else from the RECIST ellipse (see the module)."""
    segmented = grabcut_from_recist(image, recist, spacing, params, lesion)
    ellipse = ellipse_mask(segmented.shape, recist, lesion)
    why = implausible(segmented, ellipse, recist, spacing, params, lesion)
    if why:
        trimap, path = trimap_from_mask(ellipse, spacing, params=params), "ellipse"
    else:
        trimap, path = consensus_trimap(segmented, ellipse, spacing, params), "grabcut"
    seeds = np.zeros(segmented.shape, dtype=np.uint8)
    _draw_seeds(seeds, recist, params, lesion, with_axes=False)
    trimap[seeds != 0] = FOREGROUND
    return RecistTrimap(trimap=trimap, path=path, why=why)
