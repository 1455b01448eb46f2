"""ctlabel.trimap: invariants of mask and reader trimaps, millimetre widths, RECIST geometry and GrabCut."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctlabel.errors import LesionError, TrimapError
from ctlabel.trimap import (
    BACKGROUND,
    FOREGROUND,
    UNKNOWN,
    Recist,
    TrimapParams,
    band_width_mm,
    grabcut_from_recist,
    grabcut_init_mask,
    grabcut_region,
    kernel,
    recist_ellipse,
    recist_from_mask,
    require_foreground_and_background,
    trimap_from_mask,
    trimap_from_readers,
    trimap_from_recist,
)


def _window(hu: np.ndarray, lo: float = -1000.0, hi: float = 200.0) -> np.ndarray:
    return np.round((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@st.composite
def masks(draw):
    """Random blobs: a union of 1-3 rectangles and ellipses on a 40x48 slice."""
    mask = np.zeros((40, 48), dtype=np.uint8)
    for _ in range(draw(st.integers(1, 3))):
        x, y = draw(st.integers(0, 47)), draw(st.integers(0, 39))
        a, b = draw(st.integers(1, 14)), draw(st.integers(1, 14))
        if draw(st.booleans()):
            cv2.ellipse(mask, (x, y), (a, b), draw(st.integers(0, 179)), 0, 360, 1, -1)
        else:
            mask[max(0, y - b):y + b, max(0, x - a):x + a] = 1
    return mask


spacings = st.tuples(st.sampled_from([0.5, 0.7, 0.8, 1.0, 1.5]), st.sampled_from([0.5, 0.7, 0.8, 1.0, 1.5]))
band_params = st.builds(TrimapParams, band_fraction=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
                        min_band_mm=st.sampled_from([0.5, 1.0, 2.0]), max_band_mm=st.sampled_from([2.0, 5.0, 10.0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks(), spacing=spacings, params=band_params)
def test_mask_trimap_invariants(mask, spacing, params):
    trimap = trimap_from_mask(mask, spacing, params=params)
    fg, unknown, bg = trimap == FOREGROUND, trimap == UNKNOWN, trimap == BACKGROUND
    inside = mask.astype(bool)
    assert set(np.unique(trimap)) <= {BACKGROUND, UNKNOWN, FOREGROUND}
    assert trimap.dtype == np.uint8 and trimap.shape == mask.shape
    assert not (fg & ~inside).any(), "foreground must lie inside the mask"
    assert not (inside & ~(fg | unknown)).any(), "the mask must lie in foreground or unknown"
    assert not (bg & inside).any(), "background never touches the mask"
    # The band lies within one structuring element of the mask border.
    element = kernel(band_width_mm(mask, spacing, params), spacing)
    near_border = (cv2.dilate(mask, element) != 0) & (cv2.erode(mask, element) == 0)
    assert not (unknown & ~near_border).any()
    # Everything farther than the band from the mask is background.
    assert np.array_equal(bg, cv2.dilate(mask, element) == 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(union=masks(), spacing=spacings, margin=st.sampled_from([0.5, 1.0, 2.0, 4.0]), seed=st.integers(0, 2**31))
def test_readers_trimap_invariants(union, spacing, margin, seed):
    # The intersection: the union with a random part of it removed (readers disagree there).
    rng = np.random.default_rng(seed)
    intersection = union & (rng.random(union.shape) < 0.7).astype(np.uint8)
    trimap = trimap_from_readers(intersection, union, spacing, margin_mm=margin)
    assert np.array_equal(trimap == FOREGROUND, intersection.astype(bool))
    assert not ((trimap == BACKGROUND) & union.astype(bool)).any()
    assert np.array_equal(trimap == BACKGROUND, cv2.dilate(union, kernel(margin, spacing)) == 0)
    assert not ((trimap == UNKNOWN) & intersection.astype(bool)).any()


def test_band_is_relative_to_size_with_mm_bounds():
    params = TrimapParams(band_fraction=0.1, min_band_mm=1.0, max_band_mm=4.0)
    small, large = np.zeros((200, 200), np.uint8), np.zeros((200, 200), np.uint8)
    cv2.circle(small, (100, 100), 10, 1, -1)  # 20 px = 10 mm at 0.5 mm: 0.1 x 10 mm = 1 mm
    cv2.circle(large, (100, 100), 60, 1, -1)  # 60 mm: 6 mm, capped at 4
    assert band_width_mm(small, (0.5, 0.5), params) == pytest.approx(1.0, rel=0.05)
    assert band_width_mm(large, (0.5, 0.5), params) == 4.0
    tiny = np.zeros((50, 50), np.uint8)
    cv2.circle(tiny, (25, 25), 3, 1, -1)
    assert band_width_mm(tiny, (0.5, 0.5), params) == 1.0  # the floor


def test_widths_are_millimetres_whatever_the_pixel_size():
    # The same 20 mm disc at 0.5 mm and 1.0 mm pixels: the band covers the same millimetres.
    widths = []
    for pixel in (0.5, 1.0):
        size = round(80 / pixel)
        mask = np.zeros((size, size), np.uint8)
        cv2.circle(mask, (size // 2, size // 2), round(10 / pixel), 1, -1)
        trimap = trimap_from_mask(mask, (pixel, pixel), params=TrimapParams(band_fraction=0.0, min_band_mm=2.0))
        row = trimap[size // 2]
        widths.append(np.count_nonzero(row == UNKNOWN) * pixel)
    assert widths[0] == pytest.approx(widths[1], abs=1.0)  # both ~ 2 x 2 x 2 mm of band on one row
    assert kernel(2.0, (0.5, 1.0)).shape == (9, 5)  # anisotropic pixels: 4 px rows, 2 px columns


def test_anisotropic_spacing_validation():
    with pytest.raises(ValueError, match="spacing"):
        kernel(1.0, (0.0, 1.0))


def test_no_foreground_or_background_is_reported():
    tiny = np.zeros((30, 30), np.uint8)
    tiny[14:16, 14:16] = 1
    trimap = trimap_from_mask(tiny, (0.5, 0.5))
    with pytest.raises(TrimapError, match="no foreground"):
        require_foreground_and_background(trimap, "case/lesion-1")
    everything = np.ones((20, 20), np.uint8)
    with pytest.raises(TrimapError, match="no background"):
        require_foreground_and_background(trimap_from_mask(everything, (1.0, 1.0)))
    # The check can look at one lesion's pixels only: a neighbour's foreground does not count.
    two = np.zeros((40, 40), np.uint8)
    two[5:25, 5:25] = 1
    two[30:32, 30:32] = 1
    trimap = trimap_from_mask(two, (1.0, 1.0), band_mm=2.0)
    big_only = np.zeros_like(two)
    big_only[5:25, 5:25] = 1
    require_foreground_and_background(trimap, region=big_only)
    small_only = np.zeros_like(two)
    small_only[30:32, 30:32] = 1
    with pytest.raises(TrimapError):
        require_foreground_and_background(trimap, region=small_only)
    assert issubclass(TrimapError, ValueError)


def test_params_validate_and_round_trip():
    params = TrimapParams(band_fraction=0.2, grabcut_iterations=5)
    assert TrimapParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="grabcut_iterations"):
        TrimapParams(grabcut_iterations=0)
    with pytest.raises(ValueError, match="min_band_mm"):
        TrimapParams(min_band_mm=5.0, max_band_mm=1.0)
    with pytest.raises(ValueError, match="unknown trimap parameters"):
        TrimapParams.from_dict({"band": 1})


# ---- RECIST ------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [0.0, 0.4, 1.1, 2.0])
def test_recist_from_mask_measures_an_ellipse(angle):
    _, mask = _ellipse_mask((120, 120), (60.0, 58.0), (30.0, 12.0), angle)
    recist = recist_from_mask(mask, (0.7, 0.7))
    long_mm, short_mm = recist.diameters_mm((0.7, 0.7))
    assert long_mm == pytest.approx(60 * 0.7, abs=2 * 0.7)  # pixel centres: within 2 pixels
    assert short_mm == pytest.approx(24 * 0.7, abs=2 * 0.7)
    u = np.subtract(recist.long[1], recist.long[0])
    v = np.subtract(recist.short[1], recist.short[0])
    assert abs(np.dot(u, v)) / (np.linalg.norm(u) * np.linalg.norm(v)) < 1e-9  # perpendicular
    for x, y in recist.points():  # end points are mask pixels
        assert mask[round(y), round(x)]


def test_recist_from_mask_with_anisotropic_pixels():
    # A 20 mm x 10 mm rectangle drawn on 0.5 x 1.0 mm pixels: its diameters in mm.
    mask = np.zeros((60, 60), np.uint8)
    mask[20:40, 20:30] = 1  # 20 rows x 0.5 mm = 10 mm; 10 columns x 1 mm = 10 mm
    recist = recist_from_mask(mask, (0.5, 1.0))
    long_mm, short_mm = recist.diameters_mm((0.5, 1.0))
    assert long_mm == pytest.approx(math.hypot(9.5, 9.0), abs=0.01)  # the diagonal, between pixel centres
    assert 0 < short_mm <= long_mm
    with pytest.raises(LesionError):
        recist_from_mask(np.zeros((5, 5)), (1.0, 1.0))


def _ellipse_mask(shape, centre, radii, angle):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return None, ((u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1).astype(np.uint8)


def test_recist_ellipse_passes_through_the_end_points():
    # Axes crossing off-centre: the four quarter-ellipses still pass through every end point.
    recist = Recist.from_axes([[10, 30], [70, 30]], [[30, 12], [30, 40]])
    curve = recist_ellipse(recist, points=400)
    for point in recist.points():
        assert np.min(np.linalg.norm(curve - point, axis=1)) < 0.6
    seeds = recist_ellipse(recist, scale=0.5, points=400)
    kite = recist.points()[[0, 2, 1, 3]].astype(np.float32)
    assert all(cv2.pointPolygonTest(kite, (float(x), float(y)), False) > 0 for x, y in seeds)


def test_recist_validation():
    with pytest.raises(ValueError, match="long axis"):
        Recist.from_axes([[1, 2, 3], [4, 5, 6]], [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="finite"):
        Recist.from_axes([[1, float("nan")], [4, 5]], [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="'long' and 'short'"):
        Recist.from_dict({"long": [[0, 0], [1, 1]]})
    with pytest.raises(LesionError, match="long axis"):
        Recist.from_axes([[5, 5], [5, 5]], [[4, 5], [6, 5]]).frame()
    recist = Recist.from_axes([[1, 2], [9, 2]], [[5, 0], [5, 4]])
    assert Recist.from_dict(recist.to_dict()) == recist
    assert recist.shifted(1, 2).long == ((0.0, 0.0), (8.0, 0.0))


def test_grabcut_init_mask_layers():
    recist = Recist.from_axes([[20, 40], [60, 40]], [[40, 30], [40, 50]])
    labels = grabcut_init_mask((80, 80), recist, (1.0, 1.0), TrimapParams(box_margin=0.1, min_box_margin_mm=4))
    assert labels[40, 40] == cv2.GC_FGD  # the crossing
    assert labels[40, 21] == cv2.GC_FGD  # along the long axis
    assert labels[40, 57] in (cv2.GC_FGD, cv2.GC_PR_FGD)
    assert labels[33, 40] == cv2.GC_FGD  # along the short axis
    assert labels[34, 50] == cv2.GC_PR_FGD  # inside the ellipse, outside the seeds
    assert labels[28, 25] == cv2.GC_PR_BGD  # in the margin box, outside the ellipse
    assert labels[5, 5] == cv2.GC_BGD and labels[40, 70] == cv2.GC_BGD  # outside the box
    assert labels[40, 63] == cv2.GC_PR_BGD  # box margin: 4 mm beyond the long axis's end


def test_grabcut_trimap_contains_a_low_contrast_lesion():
    # A lesion 60 HU above its background with 25 HU noise: mask-initialised GrabCut finds it.
    hu, truth = _noisy_lesion()
    image = _window(hu, -100, 200)
    recist = recist_from_mask(truth, (0.8, 0.8))
    segmented = grabcut_from_recist(image, recist, (0.8, 0.8))
    assert _dice(segmented, truth) > 0.85
    trimap = trimap_from_recist(image, recist.long, recist.short, (0.8, 0.8))
    foreground = trimap == FOREGROUND
    assert np.count_nonzero(foreground & ~truth) <= 0.02 * np.count_nonzero(foreground)  # foreground is lesion
    assert np.count_nonzero(foreground) >= 0.4 * np.count_nonzero(truth)
    assert not ((trimap == BACKGROUND) & truth).any()
    border = (cv2.dilate(truth.astype(np.uint8), np.ones((3, 3))) != 0) & (cv2.erode(truth.astype(np.uint8), np.ones((3, 3))) == 0)
    assert np.mean(trimap[border] == UNKNOWN) > 0.9  # the true border lies in the unknown band
    require_foreground_and_background(trimap)


def _noisy_lesion(shape=(96, 96), seed=1):
    rng = np.random.default_rng(seed)
    _, truth = _ellipse_mask(shape, (46.0, 50.0), (22.0, 14.0), 0.6)
    smooth = cv2.GaussianBlur(truth.astype(np.float64), (0, 0), 0.8)
    hu = 0.0 + 60.0 * smooth + rng.normal(0, 25.0, size=shape)
    return hu, truth.astype(bool)


def test_grabcut_works_downscaled():
    # A crop larger than grabcut_max_side runs GrabCut shrunk; the result keeps the crop's size.
    hu, truth = _noisy_lesion((96, 96))
    big_hu = cv2.resize(hu, (192, 192), interpolation=cv2.INTER_LINEAR)
    big_truth = cv2.resize(truth.astype(np.uint8), (192, 192), interpolation=cv2.INTER_NEAREST).astype(bool)
    image = _window(big_hu, -100, 200)
    recist = recist_from_mask(big_truth, (0.4, 0.4))
    segmented = grabcut_from_recist(image, recist, (0.4, 0.4), TrimapParams(grabcut_max_side=48))
    assert segmented.shape == (192, 192)
    assert _dice(segmented, big_truth) > 0.85


def test_grabcut_rejects_bad_images():
    recist = Recist.from_axes([[10, 10], [20, 10]], [[15, 8], [15, 12]])
    with pytest.raises(ValueError, match="uint8"):
        grabcut_from_recist(np.zeros((30, 30), np.float32), recist, (1.0, 1.0))


def test_recist_trimap_does_not_depend_on_the_crop_size():
    # GrabCut runs around the axes only: a small lesion in a large image gives the same trimap as in a tight crop.
    hu, truth = _noisy_lesion((96, 96))
    big = np.full((256, 256), 0.0) + np.random.default_rng(5).normal(0, 25.0, size=(256, 256))
    big[100:196, 60:156] = hu
    big_truth = np.zeros((256, 256), bool)
    big_truth[100:196, 60:156] = truth
    image = _window(big, -100, 200)
    recist = recist_from_mask(big_truth, (0.8, 0.8))
    whole = trimap_from_recist(image, recist.long, recist.short, (0.8, 0.8))
    rows, cols = grabcut_region((256, 256), recist, (0.8, 0.8))
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < 0.25 * 256 * 256  # GrabCut's share of the image
    tight = trimap_from_recist(image[80:220, 40:180], recist.shifted(40, 80).long, recist.shifted(40, 80).short,
                               (0.8, 0.8))
    assert np.array_equal(whole[80:220, 40:180], tight)
    assert not (whole[:80] != BACKGROUND).any() and not (whole[220:] != BACKGROUND).any()
    assert _dice(whole != BACKGROUND, big_truth) > 0.7 and _dice(whole == FOREGROUND, big_truth) > 0.6
