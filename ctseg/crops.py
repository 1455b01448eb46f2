"""Where training crops are taken: on a lesion, elsewhere in the body, where the model is wrong.

Convention: arrays are (C, H, W); a crop is ``length`` x ``length`` centred on (cy, cx),
zero outside the slice. A model trained only on lesion-centred crops never sees the
soft tissue it must call "not lesion" on whole slices (heart, mediastinum, chest wall),
so the ``lesion`` crop mode mixes three kinds of centre (:func:`crop_kind`):

* ``lesion``: a random lesion pixel, jittered (share ``lesion_crops`` of lesion slices);
* ``elsewhere``: a random *body* pixel (brighter than the slice's mean, so soft tissue and
  bone rather than air) at least half a crop away from every lesion pixel: lesion-free
  slices always get one, lesion slices the rest of their crops;
* ``hard``: a pixel where the current model was most wrong on this slice (hard-negative
  mining, share ``hard_negatives``; the training loop refreshes the candidates).
"""

from __future__ import annotations

import numpy as np

CROP_KINDS = ("lesion", "elsewhere", "hard")


def crop_padded(array: np.ndarray, cy: int, cx: int, length: int) -> np.ndarray:
    """The ``length`` x ``length`` window of (C, H, W) ``array`` centred on (cy, cx), zero outside."""
    c, h, w = array.shape
    y0, x0 = cy - length // 2, cx - length // 2
    out = np.zeros((c, length, length), dtype=array.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + length, h), min(x0 + length, w)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[:, sy0:sy1, sx0:sx1]
    return out


def _clamp(v: float, n: int, size: int) -> int:
    return int(round(min(max(v, size / 2), n - size / 2))) if n >= size else n // 2


def crop_kind(has_lesion: bool, has_hard: bool, lesion_crops: float, hard_negatives: float,
              rng: np.random.Generator) -> str:
    """Which kind of centre this item gets (see the module docstring)."""
    if has_hard and rng.random() < hard_negatives:
        return "hard"
    if has_lesion and rng.random() < lesion_crops:
        return "lesion"
    return "elsewhere"


def body_centre(image: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random body pixel at least ``size / 2`` from every lesion pixel (any pixel when none qualifies)."""
    _, h, w = image.shape
    mean = image.mean(axis=0)
    body = mean > mean.mean()
    lesion = target.max(axis=0) > 0.5
    if lesion.any():
        ys, xs = np.nonzero(lesion)
        half = size // 2
        body[max(ys.min() - half, 0):ys.max() + half + 1, max(xs.min() - half, 0):xs.max() + half + 1] = False
    ys, xs = np.nonzero(body)
    if not len(ys):
        return _clamp(rng.uniform(0, h), h, size), _clamp(rng.uniform(0, w), w, size)
    i = rng.integers(len(ys))
    return _clamp(ys[i], h, size), _clamp(xs[i], w, size)


def crop_centre(mode: str, image: np.ndarray, target: np.ndarray, size: int, jitter: float,
                rng: np.random.Generator, *, kind: str = "lesion",
                hard: np.ndarray | None = None) -> tuple[int, int]:
    """Where to centre the crop: by ``kind`` in ``lesion`` mode, at random, or at the centre."""
    _, h, w = target.shape
    if mode == "lesion":
        if kind == "hard" and hard is not None and len(hard):
            y, x = hard[rng.integers(len(hard))]
            return _clamp(y, h, size), _clamp(x, w, size)
        ys, xs = np.nonzero(target[0] > 0.5)
        if kind == "lesion" and len(ys):
            i = rng.integers(len(ys))
            dy, dx = rng.uniform(-jitter * size, jitter * size, size=2)
            return _clamp(ys[i] + dy, h, size), _clamp(xs[i] + dx, w, size)
        return body_centre(image, target, size, rng)
    if mode == "random":
        return _clamp(rng.uniform(0, h), h, size), _clamp(rng.uniform(0, w), w, size)
    return h // 2, w // 2


def hard_pixels(prob: np.ndarray, truth: np.ndarray, count: int = 32) -> np.ndarray:
    """(count, 2) pixel positions (y, x) where |prob - truth| is largest (> 0.5 only): the model's worst errors."""
    error = np.abs(prob - truth)
    flat = np.argsort(error, axis=None)[::-1][:count]
    flat = flat[error.ravel()[flat] > 0.5]
    return np.stack(np.unravel_index(flat, error.shape), axis=1) if len(flat) else np.zeros((0, 2), dtype=np.int64)
