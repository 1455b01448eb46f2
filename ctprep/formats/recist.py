"""RECIST geometry: the one quarter-ellipse that a pair of RECIST axes spans, as a mask or an outline.

Convention: points are ``(x, y)`` = (column, row) pixels, pixel centres at integers. The
region is four quarter-ellipses joined at a centre on the long axis, one per quadrant
of the axes' frame (``u`` along the long axis, ``v`` perpendicular), each with the
half-lengths of the two half-axes bounding it, so its outline passes through the four
end points (an ellipse when the axes bisect each other, as they seldom exactly do).
Two centre rules, both kept because stored results depend on them:

* ``CROSSING`` (the DeepLesion source's ``recist_ellipse`` label): where the lines of the
  two axes cross (the long axis' midpoint if parallel); axes that do not cross give one
  centred ellipse on the long axis' midpoint with half the axes' lengths;
* ``CLAMPED`` (ctlabel's trimaps): the short axis' line crossing the long axis, clamped
  to 10-90 % of it, short half-lengths at least 0.5 px; axes too short raise
  :class:`~ctprep.errors.RecistAxesError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ctprep.errors import RecistAxesError

CROSSING = "crossing"
CLAMPED = "clamped"
CENTRE_RULES = (CROSSING, CLAMPED)

Axis = Sequence[Sequence[float]]  # ((x1, y1), (x2, y2))


@dataclass(frozen=True)
class QuarterEllipse:
    """The region RECIST axes span: centre, unit vectors and the four half-lengths (pixels)."""

    centre: np.ndarray
    u: np.ndarray  # along the long axis
    v: np.ndarray  # perpendicular to it
    u_pos: float  # half-lengths from the centre: along +u, -u, +v, -v
    u_neg: float
    v_pos: float
    v_neg: float

    def __post_init__(self) -> None:
        if any(np.shape(vector) != (2,) for vector in (self.centre, self.u, self.v)):
            raise RecistAxesError(f"a quarter-ellipse needs 2-D centre and axes, found {self.centre}, {self.u}, "
                                  f"{self.v}")

    @classmethod
    def from_axes(cls, long_axis: Axis, short_axis: Axis, centre: str = CROSSING) -> "QuarterEllipse":
        """The region of the long and short axes, centred by rule ``centre`` (module docstring)."""
        if centre == CROSSING:
            return _crossing_frame(long_axis, short_axis)
        if centre == CLAMPED:
            return _clamped_frame(long_axis, short_axis)
        raise RecistAxesError(f"centre rule must be one of {CENTRE_RULES}, found {centre!r}")

    def to_pixels(self, uv: np.ndarray) -> np.ndarray:
        """(n, 2) frame coordinates (along u, along v) -> (n, 2) (x, y) pixels."""
        return self.centre + uv[:, :1] * self.u + uv[:, 1:] * self.v

    def outline(self, *, scale: float = 1.0, points: int = 64) -> np.ndarray:
        """The closed outline as an (n, 2) polygon of (x, y) pixels; ``scale`` shrinks it about the centre."""
        theta = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
        cos, sin = np.cos(theta), np.sin(theta)
        a = np.where(cos >= 0, self.u_pos, self.u_neg)
        b = np.where(sin >= 0, self.v_pos, self.v_neg)
        return self.to_pixels(scale * np.stack([a * cos, b * sin], axis=1))

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """A (y, x) uint8 0/1 mask of the pixels whose centres lie inside; the pixel nearest the centre is always set.

        Rasterised here rather than with cv2.ellipse, which draws one centred ellipse on an
        integer (fixed-point) grid; the always-set centre pixel makes a sub-pixel lesion mark its slice.
        """
        centre, u, v = self.centre, self.u, self.v
        height, width = shape
        reach = max(self.u_pos, self.u_neg, self.v_pos, self.v_neg)  # a rotated quarter may bulge past its ends
        x0, y0 = np.maximum(np.floor(centre - reach).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(centre + reach).astype(int) + 1, [width - 1, height - 1])
        mask = np.zeros(shape, dtype=np.uint8)
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        dx, dy = xx - centre[0], yy - centre[1]
        s, t = dx * u[0] + dy * u[1], dx * v[0] + dy * v[1]
        a = np.where(s >= 0, self.u_pos, self.u_neg)
        b = np.where(t >= 0, self.v_pos, self.v_neg)
        mask[y0:y1 + 1, x0:x1 + 1] = (s / a) ** 2 + (t / b) ** 2 <= 1
        cx, cy = int(np.clip(np.rint(centre[0]), 0, width - 1)), int(np.clip(np.rint(centre[1]), 0, height - 1))
        mask[cy, cx] = 1
        return mask


def recist_mask(long_axis: Axis, short_axis: Axis, shape: tuple[int, int]) -> np.ndarray:
    """A (y, x) uint8 0/1 mask of the region the RECIST axes span (``CROSSING`` centre): an approximation of the lesion."""
    return QuarterEllipse.from_axes(long_axis, short_axis, CROSSING).mask(shape)


def _crossing_frame(long_axis: Axis, short_axis: Axis) -> QuarterEllipse:
    p1, p2 = np.asarray(long_axis, dtype=np.float64)
    q1, q2 = np.asarray(short_axis, dtype=np.float64)
    u = (p2 - p1) / np.linalg.norm(p2 - p1)
    v = np.array([-u[1], u[0]])
    centre = _crossing(p1, p2, q1, q2)
    a_pos, a_neg = (p2 - centre) @ u, (centre - p1) @ u
    b_q1, b_q2 = (q1 - centre) @ v, (q2 - centre) @ v
    b_pos, b_neg = max(b_q1, b_q2), -min(b_q1, b_q2)
    if min(a_pos, a_neg, b_pos, b_neg) <= 0:  # the axes do not cross: one ellipse on the long axis' midpoint
        centre = (p1 + p2) / 2
        a_pos = a_neg = float(np.linalg.norm(p2 - p1)) / 2
        b_pos = b_neg = float(np.linalg.norm(q2 - q1)) / 2
    return QuarterEllipse(centre=centre, u=u, v=v, u_pos=a_pos, u_neg=a_neg, v_pos=b_pos, v_neg=b_neg)


def _crossing(p1, p2, q1, q2) -> np.ndarray:
    """Where the lines through the two axes cross (the long axis' midpoint if they are parallel)."""
    d1, d2 = p2 - p1, q2 - q1
    det = d1[0] * (-d2[1]) - d1[1] * (-d2[0])
    if abs(det) < 1e-9 * np.linalg.norm(d1) * np.linalg.norm(d2):
        return (p1 + p2) / 2
    rhs = q1 - p1
    t = (rhs[0] * (-d2[1]) - rhs[1] * (-d2[0])) / det
    return p1 + t * d1


def _clamped_frame(long_axis: Axis, short_axis: Axis) -> QuarterEllipse:
    p1, p2 = (np.asarray(p, dtype=float) for p in long_axis)
    q1, q2 = (np.asarray(p, dtype=float) for p in short_axis)
    length = float(np.linalg.norm(p2 - p1))
    if length < 1.0:
        raise RecistAxesError(f"RECIST long axis is {length:.2f} pixels long; expected at least 1")
    u = (p2 - p1) / length
    v = np.array([-u[1], u[0]])
    short_dir = q2 - q1
    if np.linalg.norm(short_dir) < 0.5:
        raise RecistAxesError("RECIST short axis has zero length")
    # Where the short axis (as a line) crosses the long one; clamped onto the long axis so
    # that a sloppy annotation still gives an ellipse through its end points.
    denom = float(np.dot(short_dir, v))
    t = float(np.dot(q1 - p1, v)) / denom if abs(denom) > 1e-9 else 0.5
    q_at = q1 - t * short_dir
    along = float(np.clip(np.dot(q_at - p1, u), 0.1 * length, 0.9 * length))
    centre = p1 + along * u
    vs = [float(np.dot(q - centre, v)) for q in (q1, q2)]
    return QuarterEllipse(centre=centre, u=u, v=v, u_pos=length - along, u_neg=along,
                          v_pos=max(max(vs), 0.5), v_neg=max(-min(vs), 0.5))
