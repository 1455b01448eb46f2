"""``ctprep preview``: PNG of stored slices with label contours, to see what a conversion did."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.store import SliceStore
from lkbase.atomic import atomic_path
from lkbase.errors import ParameterError

# BGR colours of label contours, in label order.
MIN_TILE = 384
CAPTION_HEIGHT = 20
COLOURS = [(0, 255, 0), (0, 0, 255), (255, 128, 0), (0, 255, 255), (255, 0, 255)]


def default_slice(store: SliceStore, case_id: str) -> int:
    """The stored slice with the most lesion pixels, or the middle one."""
    pixels = np.asarray(store.record(case_id).lesion_pixels)
    return int(pixels.argmax()) if pixels.any() else len(pixels) // 2


def render_preview(store: SliceStore, case_id: str, zs: Sequence[int] = (), channel: int = 0,
                   labels: Sequence[str] | None = None) -> np.ndarray:
    """A BGR uint8 image: the chosen slices side by side, one window, contours of each label."""
    import cv2

    record = store.record(case_id)
    zs = list(zs) or [default_slice(store, case_id)]
    for z in zs:  # a ValueError naming the store, so the CLI reports it as one line
        if not 0 <= z < record.num_slices:
            raise ParameterError(f"{store.path}: case {case_id!r} has {record.num_slices} stored slices "
                                 f"(z 0..{record.num_slices - 1}), asked z={z}")
    names = list(labels) if labels is not None else store.label_names(case_id)
    batch = store.read_slices([(case_id, z) for z in zs], labels=names)
    if not 0 <= channel < batch.image.shape[1]:
        raise ParameterError(f"channel {channel} out of range: the store has {batch.image.shape[1]} windows")
    scale = max(1, MIN_TILE // max(batch.image.shape[2:]))
    tiles = []
    for i, z in enumerate(zs):
        gray = np.kron(batch.image[i, channel], np.ones((scale, scale), dtype=np.uint8))
        tile = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        for j, name in enumerate(names):
            mask = np.kron(batch.labels[name][i], np.ones((scale, scale), dtype=np.uint8))
            contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(tile, contours, -1, COLOURS[j % len(COLOURS)], 1)
        strip = np.zeros((2 * CAPTION_HEIGHT, tile.shape[1], 3), dtype=np.uint8)
        caption = f"{case_id} z={z} ({record.z_positions[z]:.1f} mm) window {record.windows[channel].name}"
        _text(strip, caption, 0, (255, 255, 255))
        x = 4
        for j, name in enumerate(names):
            _text(strip, name, 1, COLOURS[j % len(COLOURS)], x)
            x += 10 * len(name) + 12
        tiles.append(np.concatenate([strip, tile], axis=0))
    return np.concatenate(tiles, axis=1)


def _text(strip: np.ndarray, text: str, row: int, colour, x: int = 4) -> None:
    import cv2

    cv2.putText(strip, text, (x, CAPTION_HEIGHT * row + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)


def write_preview(store_path: str | Path, case_id: str, out: str | Path, zs: Sequence[int] = (),
                  channel: int = 0) -> Path:
    import cv2

    image = render_preview(SliceStore.open(store_path), case_id, zs, channel)
    out = Path(out)
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"{out}: OpenCV could not write the PNG")
    return out
