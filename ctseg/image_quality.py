"""Image fidelity for super-resolution: PSNR and SSIM (numpy + scipy, no torch).

* :func:`psnr` — 10 log10(L^2 / MSE) per image, L = ``data_range``; identical images give +inf.
* :func:`ssim` — the structural similarity index of Wang, Bovik, Sheikh and Simoncelli,
  "Image quality assessment: from error visibility to structural similarity", IEEE TIP
  13(4), 2004, eq. 13: local means, variances and covariance under an 11x11 circular
  Gaussian window (sigma 1.5, normalised), C1 = (0.01 L)^2, C2 = (0.03 L)^2, the map
  averaged over the positions where the window lies inside the image (the paper's
  mean SSIM, eq. 17). Population (not sample) statistics, as in the paper.

Written here rather than taken from scikit-image so that the package needs no image
library at run time; the tests check it against ``skimage.metrics.structural_similarity``
(gaussian_weights=True, sigma=1.5, use_sample_covariance=False: the paper's settings).
Images are (..., H, W): leading axes (batch, channels) are scored separately and returned
as an array of that shape (a float for a single 2D image).
"""

from __future__ import annotations

import numpy as np

from lkbase.errors import ParameterError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # 3.5 sigma: an 11-tap window at sigma 1.5, as in the paper
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ParameterError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim < 2:
        raise ParameterError(f"images must be (..., H, W), found shape {a.shape}")
    return a, b


def _scalar_or_array(value: np.ndarray) -> float | np.ndarray:
    return float(value) if value.ndim == 0 else value


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB of each (H, W) image against ``reference``."""
    a, b = _pair(image, reference)
    mse = ((a - b) ** 2).mean(axis=(-2, -1))
    with np.errstate(divide="ignore"):
        return _scalar_or_array(10 * np.log10(data_range ** 2 / mse))


def _gaussian(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = [0.0] * (x.ndim - 2) + [SSIM_SIGMA, SSIM_SIGMA]  # filter the image axes only
    return gaussian_filter(x, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")


def ssim_map(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """The local SSIM (eq. 13) at every pixel, border included (reflected)."""
    x, y = _pair(image, reference)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = _gaussian(x), _gaussian(y)
    vx = _gaussian(x * x) - mx * mx
    vy = _gaussian(y * y) - my * my
    cxy = _gaussian(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float | np.ndarray:
    """Mean SSIM of each (H, W) image over the positions where the whole window fits."""
    smap = ssim_map(image, reference, data_range)
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # the window's radius (5)
    h, w = smap.shape[-2:]
    if h <= 2 * pad or w <= 2 * pad:
        raise ParameterError(f"SSIM needs images larger than {2 * pad + 1}x{2 * pad + 1}, found {h}x{w}")
    return _scalar_or_array(smap[..., pad:h - pad, pad:w - pad].mean(axis=(-2, -1)))
