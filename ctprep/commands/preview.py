"""``ctprep preview``: PNG of stored slices with label contours, to see what a conversion did.

Convention: the image is a header (one caption line per slice tile, then a legend with one
entry per drawn label, wrapped across lines) above the slice tiles side by side. Every label
has its own colour (:func:`label_colour`; the palette never repeats within a preview). Binary
and integer labels are outlined where they are non-zero, float labels (probabilities, soft
masks: ``pred_*``, ``soft_*``) at their 0.5 level. Each tile carries the store's canonical
orientation (ctprep/geometry.py: x towards the patient's left, y towards posterior, so R on
the left edge, L on the right, A at the top, P at the bottom) and a scale bar in millimetres
from the case's in-plane spacing.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.store import SliceStore, WithPredictions, open_for_reading
from lkbase.atomic import atomic_path
from lkbase.errors import ParameterError

MIN_TILE = 384
CAPTION_HEIGHT = 20  # one header line
FONT_SCALE, MIN_FONT_SCALE = 0.42, 0.3
FLOAT_LEVEL = 0.5  # float labels are outlined here
# BGR: green, red, orange, yellow, magenta, then hues spaced by the golden angle (never repeating).
FIRST_COLOURS = [(0, 255, 0), (0, 0, 255), (255, 128, 0), (0, 255, 255), (255, 0, 255)]
ORIENTATION = {"left": "R", "right": "L", "top": "A", "bottom": "P"}  # canonical LPS, as displayed
SCALE_COLOUR = (255, 255, 0)  # BGR cyan: never a grey pixel of the slice
NICE_MM = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def label_colour(index: int) -> tuple[int, int, int]:
    """The BGR colour of the ``index``-th drawn label; distinct for every index."""
    if index < len(FIRST_COLOURS):
        return FIRST_COLOURS[index]
    hue = (0.13 + 0.618034 * index) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75 + 0.25 * (index % 2), 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


@dataclass(frozen=True, kw_only=True)
class LegendEntry:
    """One label's legend entry: its text, colour and place (header line, x pixel)."""

    name: str
    colour: tuple[int, int, int]
    line: int
    x: int

    def __post_init__(self) -> None:
        if self.line < 0 or self.x < 0:
            raise ParameterError(f"legend entry must lie in the header, found line {self.line}, x {self.x}")


def _text_width(text: str, scale: float = FONT_SCALE) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def legend(names: Sequence[str], floats: Sequence[bool], width: int) -> list[LegendEntry]:
    """One entry per label, in order, wrapped onto new lines where the next one would not fit ``width``."""
    entries, line, x = [], 0, 4
    for i, (name, is_float) in enumerate(zip(names, floats)):
        text = f"{name} (>= {FLOAT_LEVEL})" if is_float else name
        w = _text_width(text) + 16
        if x > 4 and x + w > width:
            line, x = line + 1, 4
        entries.append(LegendEntry(name=text, colour=label_colour(i), line=line, x=x))
        x += w
    return entries


def fitted_caption(text: str, width: int) -> tuple[list[str], float]:
    """``text`` shrunk (down to MIN_FONT_SCALE) and then wrapped at spaces so each line fits ``width``."""
    scale = FONT_SCALE
    while scale > MIN_FONT_SCALE and _text_width(text, scale) + 8 > width:
        scale = round(scale - 0.02, 2)
    lines, current = [], ""
    for word in text.split(" "):
        trial = f"{current} {word}".strip()
        if current and _text_width(trial, scale) + 8 > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return lines + [current], scale


def default_slice(store: SliceStore, case_id: str) -> int:
    """The stored slice with the most lesion pixels, or the middle one."""
    pixels = np.asarray(store.record(case_id).lesion_pixels)
    return int(pixels.argmax()) if pixels.any() else len(pixels) // 2


def outline_mask(label: np.ndarray) -> np.ndarray:
    """What a label's contour surrounds: non-zero for integer labels, >= 0.5 for float ones (uint8 0/1)."""
    label = np.asarray(label)
    return (label >= FLOAT_LEVEL if np.issubdtype(label.dtype, np.floating) else label != 0).astype(np.uint8)


def _scale_bar(tile: np.ndarray, pixel_mm: float) -> None:
    import cv2

    h, w = tile.shape[:2]
    length_mm = max([n for n in NICE_MM if n / pixel_mm <= w / 4] or [NICE_MM[0]])
    length = int(round(length_mm / pixel_mm))
    y, x0 = h - 12, 10
    cv2.line(tile, (x0, y), (x0 + length, y), SCALE_COLOUR, 2)
    for x in (x0, x0 + length):
        cv2.line(tile, (x, y - 4), (x, y + 4), SCALE_COLOUR, 1)
    cv2.putText(tile, f"{length_mm} mm", (x0, y - 7), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, SCALE_COLOUR, 1,
                cv2.LINE_AA)


def _orientation(tile: np.ndarray) -> None:
    import cv2

    h, w = tile.shape[:2]
    places = {"left": (4, h // 2 + 5), "right": (w - 14, h // 2 + 5), "top": (w // 2 - 4, 16),
              "bottom": (w // 2 - 4, h - 6)}
    for side, letter in ORIENTATION.items():
        cv2.putText(tile, letter, places[side], cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1, cv2.LINE_AA)


def render_preview(store: SliceStore | WithPredictions, case_id: str, zs: Sequence[int] = (), channel: int = 0,
                   labels: Sequence[str] | None = None) -> np.ndarray:
    """A BGR uint8 image: header (captions, legend) above the chosen slices side by side, one window,
    the contour of each label (``labels``: default all), orientation letters and a scale bar."""
    import cv2

    record = store.record(case_id)
    zs = list(zs) or [default_slice(store, case_id)]
    for z in zs:  # a ValueError naming the store, so the CLI reports it as one line
        if not 0 <= z < record.num_slices:
            raise ParameterError(f"{store.path}: case {case_id!r} has {record.num_slices} stored slices "
                                 f"(z 0..{record.num_slices - 1}), asked z={z}")
    available = store.label_names(case_id)
    names = list(labels) if labels else available
    missing = [n for n in names if n not in available]
    if missing:
        raise ParameterError(f"{store.path}: case {case_id!r} has no label {missing[0]!r} "
                             f"(labels: {', '.join(available) or 'none'})")
    batch = store.read_slices([(case_id, z) for z in zs], labels=names)
    if not 0 <= channel < batch.image.shape[1]:
        raise ParameterError(f"channel {channel} out of range: the store has {batch.image.shape[1]} windows")
    scale = max(1, MIN_TILE // max(batch.image.shape[2:]))
    pixel_mm = float(record.geometry.spacing[2]) / scale
    tiles = []
    for i, z in enumerate(zs):
        gray = np.kron(batch.image[i, channel], np.ones((scale, scale), dtype=np.uint8))
        tile = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        for j, name in enumerate(names):
            mask = np.kron(outline_mask(batch.labels[name][i]), np.ones((scale, scale), dtype=np.uint8))
            contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(tile, contours, -1, label_colour(j), 1)
        _orientation(tile)
        _scale_bar(tile, pixel_mm)
        tiles.append(tile)
    body = np.concatenate(tiles, axis=1)
    captions = [fitted_caption(f"{case_id} z={z} ({record.z_positions[z]:.1f} mm) window "
                               f"{record.windows[channel].name}", tiles[0].shape[1]) for z in zs]
    caption_lines = max(len(lines) for lines, _ in captions)
    entries = legend(names, [np.issubdtype(batch.labels[n].dtype, np.floating) for n in names], body.shape[1])
    legend_lines = (entries[-1].line + 1) if entries else 0
    header = np.zeros(((caption_lines + legend_lines) * CAPTION_HEIGHT, body.shape[1], 3), dtype=np.uint8)
    for i, (lines, font) in enumerate(captions):
        for row, text in enumerate(lines):
            _text(header, text, row, (255, 255, 255), i * tiles[0].shape[1] + 4, font)
    for entry in entries:
        _text(header, entry.name, caption_lines + entry.line, entry.colour, entry.x)
    return np.concatenate([header, body], axis=0)


def _text(strip: np.ndarray, text: str, row: int, colour, x: int = 4, scale: float = FONT_SCALE) -> None:
    import cv2

    cv2.putText(strip, text, (x, CAPTION_HEIGHT * row + 14), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1,
                cv2.LINE_AA)


def write_preview(store_path: str | Path, case_id: str, out: str | Path, zs: Sequence[int] = (),
                  channel: int = 0, labels: Sequence[str] | None = None) -> Path:
    import cv2

    image = render_preview(open_for_reading(store_path), case_id, zs, channel, labels)
    out = Path(out)
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"{out}: OpenCV could not write the PNG")
    return out
