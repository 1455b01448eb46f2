"""Which lesions a case has: from RECIST annotations, as connected components of a mask per slice,
or as RECIST axes measured on a mask (:func:`measured_recist_lesions`, ``--recist-from``).

A :class:`SliceLesion` is one lesion on one stored slice, with its pixel box; :func:`crop_box`
grows that box by a margin into the crop that trimaps and matting work on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np

from ctlabel.errors import LesionError
from ctlabel.trimap import Recist, recist_from_mask
from ctprep.case import CaseRecord

ANNOTATION_KEY = "lesions"  # CaseRecord.annotations[...] written by the DeepLesion source


@dataclass(frozen=True, kw_only=True)
class SliceLesion:
    """One lesion on one stored slice ``z``: id unique in the case, box ``(x0, y0, x1, y1)`` (x1, y1 exclusive)."""

    lesion_id: str
    z: int
    box: tuple[int, int, int, int]
    recist: Recist | None = None
    component: int = 0  # --from mask/readers: the component's number on its slice (1-based)

    @property
    def size_px(self) -> int:
        """The box's larger side in pixels."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def recist_lesions(record: CaseRecord) -> tuple[list[SliceLesion], list[LesionError]]:
    """The lesions of ``annotations["lesions"]`` (the DeepLesion schema), and one error per unusable entry.

    Raises ``LookupError`` when the case has no such annotations at all (not a RECIST case).
    """
    entries = record.annotations.get(ANNOTATION_KEY)
    if entries is None:
        raise LookupError(f"case {record.case_id} has no RECIST annotations (annotations[{ANNOTATION_KEY!r}]); "
                          "--from recist needs a source that records them (deeplesion)")
    if not isinstance(entries, (list, tuple)):
        raise LookupError(f"case {record.case_id}: annotations[{ANNOTATION_KEY!r}] must be a list, "
                          f"found {type(entries).__name__}")
    _, height, width = record.geometry.shape
    lesions, problems, seen = [], [], set()
    for number, entry in enumerate(entries):
        try:
            lesion = _recist_lesion(entry, number, record.num_slices, height, width)
            if lesion.lesion_id in seen:
                raise LesionError(lesion.lesion_id, "lesion_id repeated in the case; expected unique ids")
            seen.add(lesion.lesion_id)
            lesions.append(lesion)
        except LesionError as exc:
            problems.append(exc)
    return lesions, problems


def _recist_lesion(entry: object, number: int, num_slices: int, height: int, width: int) -> SliceLesion:
    if not isinstance(entry, Mapping):
        raise LesionError(f"lesion #{number}", f"expected a mapping, found {type(entry).__name__}")
    lesion_id = str(entry.get("lesion_id", f"#{number}"))
    z = entry.get("z")
    if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= int(z) < num_slices:
        raise LesionError(lesion_id, f"z must be a stored slice index 0..{num_slices - 1}, found {z!r}")
    try:
        recist = Recist.from_dict(entry.get("recist"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise LesionError(lesion_id, str(exc)) from None
    points = recist.points()
    # Pixel centres are integers, so the slice spans -0.5 .. size - 0.5.
    outside = [(float(x), float(y)) for x, y in points
               if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5)]
    if outside:
        raise LesionError(lesion_id, f"RECIST point {outside[0]} lies outside the {width}x{height} slice")
    x0, y0 = np.floor(points.min(axis=0) + 0.5).astype(int)
    x1, y1 = np.floor(points.max(axis=0) + 0.5).astype(int) + 1
    return SliceLesion(lesion_id=lesion_id, z=int(z), recist=recist,
                  box=(int(max(x0, 0)), int(max(y0, 0)), int(min(x1, width)), int(min(y1, height))))


def component_lesions(mask: np.ndarray, zs: Sequence[int] | None = None) -> list[SliceLesion]:
    """One lesion per 8-connected component of each slice of a (n, y, x) mask.

    ``zs`` gives the stored slice index of each of the ``n`` slices (default ``0..n-1``).
    Ids are ``z<z>-<k>``, components numbered in raster order of their first pixel.
    """
    zs = list(range(mask.shape[0])) if zs is None else [int(z) for z in zs]
    lesions = []
    for i, z in enumerate(zs):
        plane = (mask[i] != 0).astype(np.uint8)
        if not plane.any():
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
        for k in range(1, count):
            x, y, w, h = (int(v) for v in stats[k, :4])
            lesions.append(SliceLesion(lesion_id=f"z{z}-{k}", z=z, box=(x, y, x + w, y + h), component=k))
    return lesions


def crop_box(box: Sequence[int], shape: tuple[int, int], spacing: Sequence[float],
             margin_mm: float) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) grown by ``margin_mm`` each side, clipped to ``shape`` (y, x): (y0, y1, x0, x1)."""
    sy, sx = (float(v) for v in spacing)
    my, mx = math.ceil(margin_mm / sy), math.ceil(margin_mm / sx)
    x0, y0, x1, y1 = (int(v) for v in box)
    return max(0, y0 - my), min(shape[0], y1 + my), max(0, x0 - mx), min(shape[1], x1 + mx)


def measured_recist_lesions(mask: np.ndarray, zs: Sequence[int], spacing: Sequence[float]
                            ) -> tuple[list[SliceLesion], list[LesionError]]:
    """RECIST axes measured on a (n, y, x) mask as DeepLesion's annotators did: one lesion per
    3D connected component (26-connected: a lesion is one object however it runs through the
    slices), measured on its largest slice (the slice where the component has most pixels; the
    first of equals) with :func:`ctlabel.trimap.recist_from_mask` (longest diameter, then the
    longest diameter perpendicular to it). ``zs`` are the stored indices of the ``n`` slices.

    Ids are ``c<k>-z<z>``, components numbered by scipy's raster order. A component too small
    to measure (one pixel on its largest slice, a line) is an error in the second list.
    """
    from scipy import ndimage

    zs = [int(z) for z in zs]
    components, count = ndimage.label(np.asarray(mask) != 0, structure=np.ones((3, 3, 3), dtype=bool))
    lesions, problems = [], []
    for k, found in enumerate(ndimage.find_objects(components), start=1):
        if found is None:
            continue
        part = components[found] == k
        largest = int(np.argmax(part.reshape(part.shape[0], -1).sum(axis=1)))
        plane = np.zeros(mask.shape[1:], dtype=bool)
        plane[found[1:]] = part[largest]
        i = found[0].start + largest
        lesion_id = f"c{k}-z{zs[i]}"
        try:
            recist = recist_from_mask(plane, spacing)
            ys, xs = np.nonzero(plane)
            lesions.append(SliceLesion(lesion_id=lesion_id, z=zs[i], recist=recist,
                                       box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
        except LesionError as exc:
            problems.append(LesionError(lesion_id, exc.reason))
        except ValueError as exc:
            problems.append(LesionError(lesion_id, f"RECIST cannot be measured: {exc}"))
    return lesions, problems
