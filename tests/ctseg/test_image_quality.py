"""PSNR and SSIM (ctseg.image_quality) against scikit-image and against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctseg.image_quality import psnr, ssim, ssim_map


def pair(seed: int = 0, shape=(40, 37), noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = rng.random(shape)
    return np.clip(clean + rng.normal(0, noise, shape), 0, 1), clean


@pytest.mark.parametrize("seed,noise", [(0, 0.02), (1, 0.1), (2, 0.3)])
def test_ssim_matches_scikit_image_with_the_papers_settings(seed, noise):
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (test extra) is the independent SSIM")
    a, b = pair(seed, noise=noise)
    expected = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                             data_range=1.0)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_psnr_matches_scikit_image_and_the_formula():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (test extra) is the independent PSNR")
    a, b = pair(3)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(b, a, data_range=1.0), abs=1e-12)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / np.mean((a - b) ** 2)), abs=1e-12)
    assert psnr(a * 255, b * 255, data_range=255) == pytest.approx(psnr(a, b), abs=1e-9)


def test_identical_images_score_one_and_infinity():
    a, _ = pair(4)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, a) == math.inf


def test_ssim_properties():
    a, b = pair(5, noise=0.05)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)  # symmetric
    noisier, _ = pair(5, noise=0.2)
    assert ssim(noisier, b) < ssim(a, b) < 1
    assert ssim(1 - b, b) < 0  # inverted structure: negative correlation
    # A constant offset lowers only the luminance term: SSIM stays high but below 1.
    assert 0.9 < ssim(np.clip(b + 0.05, 0, 1.2), b, data_range=1.2) < 1
    assert ssim_map(a, b).shape == a.shape


def test_leading_axes_are_scored_separately():
    a, b = pair(6, shape=(2, 3, 24, 24))
    scores = ssim(a, b)
    assert scores.shape == (2, 3)
    assert scores[1, 2] == pytest.approx(ssim(a[1, 2], b[1, 2]), abs=1e-12)
    assert psnr(a, b)[0, 1] == pytest.approx(psnr(a[0, 1], b[0, 1]), abs=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(np.zeros((16, 16)), np.zeros((16, 15)))
    with pytest.raises(ValueError, match="larger than 11x11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
