"""Soft masks by closed-form matting (Levin et al. 2008) with pymatting, on a crop around one lesion.

The 3-channel input. Closed-form matting models each small window's colours as lying on a
line in a 3-channel colour space; a CT slice has one intensity, which the store keeps as one
uint8 channel per HU window. :func:`matting_image` uses the stored windows as the colour
channels, cycled to three: 1 window -> (w0, w0, w0), 2 -> (w0, w1, w0), 3 or more -> the
first three. Windows are what a reader sees (a lung nodule in the lung window, a liver
lesion in the liver window), their order is the conversion's ``--window`` order, and no HU
need be stored. A repeated channel adds no information and makes each window's colour
covariance rank-deficient; the solver's epsilon regularises it (pymatting's formula stays
exact on such input, checked by the flat-background test).

Where it is solved. Closed-form matting couples pixels only within ``2 * radius`` of each
other (both in one (2r+1)^2 window), so the alpha of the unknown pixels depends only on the
image and trimap within ``2 * radius`` of the unknown band. :func:`estimate_alpha` therefore
solves on the band's bounding box grown by ``2 * radius``: the same linear system as on the
whole crop, hence the same alpha (tests check equality), at a fraction of the cost. A wide
band around a big lesion (more than ``max_unknown`` unknown pixels, default 1000) is solved
on a grid coarser by an integer factor and alpha interpolated back: the solver's cost (its
incomplete-Cholesky preconditioner) grows faster than the unknown count, and this bounds it.

numba. pymatting compiles its kernels with numba when they are loaded and caches them on
disk; ctlabel loads only the three closed-form ones (:mod:`ctlabel._pymatting`: ~15 s the
first time on two cores, instead of ~75 s for ``import pymatting``). :func:`ctlabel.numba_cache.configure_numba_cache`
points the cache at a persistent folder, ``~/.cache/lesionkit/numba`` (``$XDG_CACHE_HOME``
respected), unless ``NUMBA_CACHE_DIR`` is already set, before numba is imported: the compile
then happens once per machine (and pymatting version) instead of on every run. The kernels
are loaded inside functions only, so importing ctlabel stays instant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping

import numpy as np

from ctlabel.errors import TrimapError
from ctlabel.numba_cache import configure_numba_cache
from lkbase.errors import ParameterError
from ctlabel.trimap import BACKGROUND, FOREGROUND, UNKNOWN, require_foreground_and_background


@dataclass(frozen=True, kw_only=True)
class MattingParams:
    """Closed-form matting settings (pymatting's ``cf_laplacian``): window radius and regularisation."""

    epsilon: float = 1e-7  # pymatting's default; larger gives smoother alpha
    radius: int = 1  # windows of (2r+1)^2 pixels
    max_unknown: int = 1000  # more unknown pixels: solve on a coarser grid (0: never); bounds the cost

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ParameterError(f"matting epsilon must be a number > 0, found {self.epsilon!r}")
        if int(self.radius) != self.radius or self.radius < 1:
            raise ParameterError(f"matting radius must be an integer >= 1, found {self.radius!r}")
        if int(self.max_unknown) != self.max_unknown or self.max_unknown < 0:
            raise ParameterError(f"matting max_unknown must be an integer >= 0, found {self.max_unknown!r}")

    def factor(self, unknown: int) -> int:
        """The coarsening factor for ``unknown`` pixels: 1, or the integer bringing them under max_unknown."""
        if not self.max_unknown or unknown <= self.max_unknown:
            return 1
        return math.ceil(math.sqrt(unknown / self.max_unknown))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "MattingParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"unknown matting parameters: {', '.join(unknown)}")
        return cls(**dict(data))


def load_pymatting():
    """pymatting's closed-form kernels (``cf_laplacian``, ``ichol``, ``cg``), compiled or loaded from the cache.

    Only the three files closed-form matting needs are loaded (see :mod:`ctlabel._pymatting`),
    once the numba cache is configured (:mod:`ctlabel.numba_cache`).
    """
    configure_numba_cache()
    from ctlabel import _pymatting

    return _pymatting


def matting_image(channels: np.ndarray) -> np.ndarray:
    """The (y, x, 3) uint8 matting/GrabCut input from a stored slice's (channel, y, x) windows.

    Channels cycle to three (see the module docstring): C=1 -> (0, 0, 0), C=2 -> (0, 1, 0), C>=3 -> (0, 1, 2).
    """
    channels = np.asarray(channels)
    if channels.ndim == 2:
        channels = channels[None]
    if channels.ndim != 3 or channels.shape[0] < 1 or channels.dtype != np.uint8:
        raise ParameterError(f"expected uint8 windows (channel, y, x), found {channels.dtype} {channels.shape}")
    order = [i % channels.shape[0] for i in range(3)]
    return np.ascontiguousarray(np.moveaxis(channels[order], 0, -1))


def solve_region(trimap: np.ndarray, radius: int = 1) -> tuple[slice, slice]:
    """The unknown band's bounding box grown by ``2 * radius`` (clipped): where the solve is identical."""
    ys, xs = np.nonzero(trimap == UNKNOWN)
    if len(ys) == 0:
        return slice(0, 0), slice(0, 0)
    grow = 2 * int(radius)
    h, w = trimap.shape
    return (slice(max(0, ys.min() - grow), min(h, ys.max() + grow + 1)),
            slice(max(0, xs.min() - grow), min(w, xs.max() + grow + 1)))


def estimate_alpha(image: np.ndarray, trimap: np.ndarray, *, params: MattingParams = MattingParams(),
                   restrict: bool = True, lesion: str = "lesion") -> np.ndarray:
    """Alpha in [0, 1] (float32, the trimap's shape) by closed-form matting.

    ``image`` is (y, x, 3) uint8 (see :func:`matting_image`) or float in [0, 1]; ``trimap``
    uses the ctlabel values (0 / 128 / 255). A trimap without foreground or background raises
    :class:`TrimapError` (the solve would be ill-posed). ``restrict`` solves on
    :func:`solve_region` only; ``False`` solves on the whole array (same result, slower).
    With more than ``params.max_unknown`` unknown pixels (a wide band around a big lesion)
    the solve runs on a grid coarser by :meth:`MattingParams.factor` and alpha is
    interpolated back: the cost stays bounded, the transition is smoothed over that factor.
    """
    trimap = np.asarray(trimap)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != trimap.shape:
        raise ParameterError(f"matting needs a (y, x, 3) image of the trimap's shape {trimap.shape}, "
                             f"found {image.shape}")
    invalid = ~np.isin(trimap, (BACKGROUND, UNKNOWN, FOREGROUND))
    if invalid.any():
        raise ParameterError(f"trimap values must be {BACKGROUND}, {UNKNOWN} or {FOREGROUND}, found "
                         f"{sorted(set(np.unique(trimap[invalid]).tolist()))[:5]}")
    require_foreground_and_background(trimap, lesion)
    alpha = (trimap == FOREGROUND).astype(np.float32)
    unknown = int(np.count_nonzero(trimap == UNKNOWN))
    if not unknown:
        return alpha
    factor = params.factor(unknown)
    grow_radius = params.radius * factor  # the coarse windows' reach, in pixels of this grid
    rows, cols = solve_region(trimap, grow_radius) if restrict else (slice(None), slice(None))
    pixels = image[rows, cols]
    pixels = pixels.astype(np.float64) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float64)
    part = trimap[rows, cols]
    while True:
        try:
            solved = _coarse_solve(pixels, part, factor, params, lesion) if factor > 1 \
                else _solve(pixels, part, params, lesion)
            break
        except _CoarseTooThin:
            factor -= 1  # a thin lesion vanished on the coarse grid: a finer one
    alpha[rows, cols] = solved
    return alpha


class _CoarseTooThin(Exception):
    pass


def _solve(pixels: np.ndarray, trimap: np.ndarray, params: MattingParams, lesion: str) -> np.ndarray:
    """Closed-form alpha: pymatting's ``estimate_alpha_cf`` (same kernels, same system, same solver).

    The matting Laplacian L is split into unknown (U) and known (K) pixels and
    ``L_UU x = -L_UK alpha_K`` solved by conjugate gradients with pymatting's incomplete
    Cholesky preconditioner (Grady et al.'s formulation, as pymatting does).
    """
    kernels = load_pymatting()
    known = (trimap != UNKNOWN).ravel()
    unknown = ~known
    foreground = (trimap == FOREGROUND).ravel()
    try:
        laplacian = kernels.cf_laplacian(pixels, float(params.epsilon), int(params.radius), known)
        l_unknown = laplacian[unknown, :][:, unknown]
        coupling = laplacian[unknown, :][:, known]
        x = foreground.astype(np.float64)
        x[unknown] = kernels.cg(l_unknown, -coupling.dot(foreground[known].astype(np.float64)),
                                M=kernels.ichol(l_unknown))
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # e.g. a singular preconditioner
        raise TrimapError(lesion, f"matting failed: {type(exc).__name__}: {exc}") from None
    if not np.all(np.isfinite(x)):
        raise TrimapError(lesion, "matting produced non-finite alpha")
    return np.clip(x, 0.0, 1.0).reshape(trimap.shape).astype(np.float32)


def _coarse_solve(pixels: np.ndarray, trimap: np.ndarray, factor: int, params: MattingParams,
                  lesion: str) -> np.ndarray:
    """Solve on blocks of ``factor`` x ``factor`` pixels, then interpolate alpha back into the unknown band.

    A coarse pixel is foreground (background) only if its whole block is; image blocks are
    averaged. Known pixels keep their trimap value.
    """
    import cv2

    h, w = trimap.shape
    ch, cw = -(-h // factor), -(-w // factor)
    pad = ((0, ch * factor - h), (0, cw * factor - w))
    blocks = np.pad(pixels, (*pad, (0, 0)), mode="edge").reshape(ch, factor, cw, factor, 3).mean(axis=(1, 3))
    padded = np.pad(trimap, pad, mode="edge").reshape(ch, factor, cw, factor)
    coarse = np.full((ch, cw), UNKNOWN, dtype=np.uint8)
    coarse[(padded == FOREGROUND).all(axis=(1, 3))] = FOREGROUND
    coarse[(padded == BACKGROUND).all(axis=(1, 3))] = BACKGROUND
    if not (coarse == FOREGROUND).any() or not (coarse == BACKGROUND).any():
        raise _CoarseTooThin()
    solved = _solve(blocks, coarse, params, lesion)
    fine = cv2.resize(solved, (cw * factor, ch * factor), interpolation=cv2.INTER_LINEAR)[:h, :w]
    fine = np.clip(fine, 0.0, 1.0)
    fine[trimap == FOREGROUND] = 1.0
    fine[trimap == BACKGROUND] = 0.0
    return fine
