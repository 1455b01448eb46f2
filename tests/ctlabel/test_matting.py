"""ctlabel.matting: alpha on a known lesion, the band-restricted solve, the 3-channel input, the numba cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctlabel.errors import TrimapError
from ctlabel.matting import MattingParams, estimate_alpha, matting_image, solve_region
from ctlabel.numba_cache import configure_numba_cache, default_numba_cache_dir
from ctlabel.trimap import BACKGROUND, FOREGROUND, UNKNOWN, trimap_from_mask


def _grey3(hu: np.ndarray, lo: float = -1000.0, hi: float = 200.0) -> np.ndarray:
    grey = np.round((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    return matting_image(grey[None])


def test_flat_background_lesion_alpha(lk):
    # One window repeated into three channels (the 1-window case of matting_image).
    hu, truth = lk.lesion_slice(edge=3.0)
    image = _grey3(hu)
    trimap = trimap_from_mask(truth, (1.0, 1.0), band_mm=4.0)
    alpha = estimate_alpha(image, trimap)
    assert alpha.dtype == np.float32 and alpha.shape == truth.shape
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    unknown = trimap == UNKNOWN
    inner = truth & unknown & (hu > -800 + 0.95 * 840)  # band pixels that are (almost) pure lesion
    outer = ~truth & unknown & (hu < -800 + 0.05 * 840)
    assert inner.any() and outer.any()
    assert alpha[inner].min() > 0.9
    assert alpha[outer].max() < 0.1
    # Alpha follows the partial-volume ramp: it is the true mixing fraction, so monotone across the border.
    truth_alpha = (hu + 800) / 840
    assert np.abs(alpha[unknown] - truth_alpha[unknown]).max() < 0.05
    row = alpha[50, 48:]  # from the centre outwards along x
    assert np.all(np.diff(row) <= 1e-4)
    assert row[0] == 1.0 and row[-1] == 0.0


def test_restricted_solve_equals_the_whole_crop(lk):
    hu, truth = lk.lesion_slice(shape=(128, 120), edge=2.0, noise=20.0)
    image = matting_image(np.stack([np.round((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
                                    for lo, hi in ((-1000, 200), (-160, 240))]))
    trimap = trimap_from_mask(truth, (0.8, 0.8), band_mm=2.0)
    rows, cols = solve_region(trimap, radius=1)
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < 0.5 * trimap.size  # a real saving
    full = MattingParams(max_unknown=0)  # the full-resolution solve, whatever the band's size
    restricted = estimate_alpha(image, trimap, params=full)
    whole = estimate_alpha(image, trimap, params=full, restrict=False)
    # The same linear system, so the same numbers (bit for bit, not just close).
    np.testing.assert_array_equal(restricted, whole)
    assert 0.1 < np.mean(restricted[trimap == UNKNOWN]) < 0.9
    params = MattingParams(radius=2, max_unknown=0)
    np.testing.assert_array_equal(estimate_alpha(image, trimap, params=params),
                                  estimate_alpha(image, trimap, params=params, restrict=False))


def test_solve_region_grows_the_band_by_two_radii():
    trimap = np.zeros((50, 60), np.uint8)
    trimap[10:20, 20:30] = UNKNOWN
    trimap[14:16, 24:26] = FOREGROUND
    assert solve_region(trimap, 1) == (slice(8, 22), slice(18, 32))
    assert solve_region(trimap, 3) == (slice(4, 26), slice(14, 36))
    trimap[0:3, 0:3] = UNKNOWN
    assert solve_region(trimap, 1) == (slice(0, 22), slice(0, 32))  # clipped at the edge


def test_ill_posed_trimaps_are_refused():
    image = np.zeros((20, 20, 3), np.uint8)
    only_bg = np.full((20, 20), BACKGROUND, np.uint8)
    only_bg[5:8, 5:8] = UNKNOWN
    with pytest.raises(TrimapError, match="no foreground"):
        estimate_alpha(image, only_bg)
    only_fg = np.full((20, 20), FOREGROUND, np.uint8)
    only_fg[5:8, 5:8] = UNKNOWN
    with pytest.raises(TrimapError, match="no background"):
        estimate_alpha(image, only_fg)
    bad = np.full((20, 20), 7, np.uint8)
    with pytest.raises(ValueError, match="trimap values"):
        estimate_alpha(image, bad)
    with pytest.raises(ValueError, match="image"):
        estimate_alpha(image[:, :, :2], only_bg)


def test_no_unknown_gives_the_trimap_itself():
    trimap = np.zeros((10, 10), np.uint8)
    trimap[3:6, 3:6] = FOREGROUND
    alpha = estimate_alpha(np.zeros((10, 10, 3), np.uint8), trimap)
    assert np.array_equal(alpha, (trimap == FOREGROUND).astype(np.float32))


def test_matting_image_cycles_windows():
    windows = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)
    assert np.array_equal(matting_image(windows[:1]), np.stack([windows[0]] * 3, axis=-1))
    assert np.array_equal(matting_image(windows[:2]), np.stack([windows[0], windows[1], windows[0]], axis=-1))
    assert np.array_equal(matting_image(windows), np.stack([windows[0], windows[1], windows[2]], axis=-1))
    with pytest.raises(ValueError, match="uint8"):
        matting_image(windows.astype(np.float32))


def test_params_validate():
    assert MattingParams.from_dict(MattingParams(epsilon=1e-5).to_dict()) == MattingParams(epsilon=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        MattingParams(epsilon=0)
    with pytest.raises(ValueError, match="radius"):
        MattingParams(radius=0)


def test_numba_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "given"))
    assert configure_numba_cache() == tmp_path / "given"  # an existing setting is respected
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_numba_cache_dir() == tmp_path / "xdg" / "lesionkit" / "numba"
    assert configure_numba_cache() == tmp_path / "xdg" / "lesionkit" / "numba"
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "xdg" / "lesionkit" / "numba")
    assert (tmp_path / "xdg" / "lesionkit" / "numba").is_dir()


def test_importing_ctlabel_does_not_import_pymatting():
    code = ("import sys, ctlabel.cli, ctlabel.label, ctlabel.matting, ctlabel.preview, ctlabel.soften; "
            "print('pymatting' in sys.modules, 'numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["False", "False"]


def test_matting_loads_only_the_closed_form_kernels():
    # Solving loads pymatting's three closed-form files, never the whole package (whose import compiles
    # every kernel it has); the numba cache folder comes from the environment (conftest).
    code = ("import sys, numpy as np; from ctlabel.matting import estimate_alpha; "
            "t = np.zeros((12, 12), np.uint8); t[3:9, 3:9] = 128; t[5:7, 5:7] = 255; "
            "a = estimate_alpha(np.zeros((12, 12, 3), np.uint8), t); "
            "print('pymatting' in sys.modules, 'ctlabel._pymatting' in sys.modules, float(a[6, 6]), float(a[0, 0]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ})
    assert done.stdout.split() == ["False", "True", "1.0", "0.0"]


def test_kernels_cache_apart_from_pymatting():
    # The private modules' numba cache lies in its own subfolder: pymatting's own entries (which a normal
    # `import pymatting` reads) never name a ctlabel module, and ours never name pymatting's.
    from ctlabel.matting import load_pymatting

    kernels = load_pymatting()
    cache = Path(os.environ["NUMBA_CACHE_DIR"]) / kernels.CACHE_SUBFOLDER
    laplacian = sys.modules["ctlabel._pymatting_cf_laplacian"]._cf_laplacian
    assert Path(laplacian._cache._cache_path).is_relative_to(cache)


def test_wide_bands_are_solved_coarser_and_stay_close(lk):
    # A big lesion with a wide band: above max_unknown the solve runs on 2x2 blocks.
    hu, truth = lk.lesion_slice(shape=(200, 200), centre=(100, 96), radii=(70, 50), edge=2.5, noise=15.0)
    image = _grey3(hu)
    trimap = trimap_from_mask(truth, (1.0, 1.0), band_mm=8.0)
    unknown = int(np.count_nonzero(trimap == UNKNOWN))
    params = MattingParams(max_unknown=unknown // 3)
    assert params.factor(unknown) == 2 and MattingParams(max_unknown=0).factor(unknown) == 1
    coarse = estimate_alpha(image, trimap, params=params)
    full = estimate_alpha(image, trimap, params=MattingParams(max_unknown=0))
    band = trimap == UNKNOWN
    assert np.abs(coarse - full)[band].mean() < 0.05
    assert np.array_equal(coarse[~band], full[~band])  # known pixels keep the trimap's value
    hard_coarse, hard_full = coarse >= 0.5, full >= 0.5
    assert 2 * np.count_nonzero(hard_coarse & hard_full) / (hard_coarse.sum() + hard_full.sum()) > 0.98
    assert 0.0 <= coarse.min() and coarse.max() <= 1.0
