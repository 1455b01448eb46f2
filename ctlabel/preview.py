"""``ctlabel preview``: one PNG showing, for several lesions of a case, what ctlabel made of them.

Each lesion is a tile of three titled panels over its crop: "CT + RECIST" (or "CT + outlines" without RECIST), the slice (one
stored window) with the RECIST axes (red long, blue short), the outline of the evidence mask
(yellow: --from mask, the readers' union, or the store's lesion label for RECIST) and the
binarised soft mask's outline (green); "trimap" (black background / grey unknown / white
foreground); "alpha", the soft mask in a colour map with a colour bar from 0 to 1 and the same
green outline. A crop that is not square is centred in its panel on the canvas colour (no
black bars that could read as image). Tiles are laid out in a grid. OpenCV only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ctlabel.config import ATTRIBUTE_KEY
from ctlabel.errors import LabelInputError
from ctlabel.soften import DEFAULT_THRESHOLD
from ctprep.store import SliceStore
from ctprep.store.layout import soft_base, soft_label, trimap_label
from lkbase.atomic import atomic_path
from lkbase.errors import ParameterError

PANEL = 160  # pixels a side of each panel
CAPTION = 18
TITLE = 16  # the row of panel titles
BAR = 14  # width of alpha's colour bar (plus its labels)
CANVAS = 32  # grey of the background and of a non-square crop's surroundings
MAX_COLUMNS = 3
RED, BLUE, GREEN, YELLOW, WHITE = (0, 0, 255), (255, 96, 0), (0, 220, 0), (0, 220, 255), (255, 255, 255)


def ctlabel_names(store: SliceStore, case_id: str) -> list[str]:
    """The ``<name>`` of every ``trimap_<name>`` label of the case."""
    prefix = trimap_label("")
    return sorted(n.removeprefix(prefix) for n in store.label_names(case_id) if n.startswith(prefix))


def _choose_name(store: SliceStore, case_id: str, name: str | None) -> str:
    names = ctlabel_names(store, case_id)
    if name is not None:
        base = soft_base(name).removeprefix(trimap_label(""))  # NAME, soft_NAME or trimap_NAME
        if base not in names:
            raise LabelInputError(f"{store.path}: case {case_id!r} has no {trimap_label(name)} "
                                  f"(ctlabel labels: {', '.join(names) or 'none'})")
        return base
    if len(names) != 1:
        raise LabelInputError(f"{store.path}: case {case_id!r} has "
                              f"{'no ctlabel labels (run ctlabel softmask first)' if not names else 'several: ' + ', '.join(names) + '; choose one with --name'}")
    return names[0]


def render_lesion_preview(store: SliceStore, case_id: str, *, name: str | None = None, channel: int = 0,
                          max_lesions: int = 12, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The BGR uint8 grid of lesion tiles for ``case_id`` (see the module docstring)."""
    name = _choose_name(store, case_id, name)
    record = store.record(case_id)
    if not 0 <= channel < len(record.windows):
        raise ParameterError(f"channel {channel} out of range: the store has {len(record.windows)} windows")
    info = store.label_attributes(case_id, trimap_label(name)).get(ATTRIBUTE_KEY, {})
    lesions = [entry for entry in info.get("lesions", []) if entry.get("status") == "done" and entry.get("crop")]
    if not lesions:
        raise LabelInputError(f"{store.path}: case {case_id!r} has no labelled lesion in {trimap_label(name)}")
    lesions = lesions[:max_lesions]
    available = set(store.label_names(case_id))
    labels = [trimap_label(name)] + [n for n in (soft_label(name),) if n in available]
    evidence = info.get("parameters", {}).get("evidence", {})
    outline = evidence.get("label") or evidence.get("union") or record.lesion_label  # RECIST: the store's mask
    if outline in available:
        labels.append(outline)
    zs = sorted({int(entry["z"]) for entry in lesions})
    batch = store.read_slices([(case_id, z) for z in zs], labels=labels)
    row = {z: i for i, z in enumerate(zs)}
    recists = {str(a.get("lesion_id")): a.get("recist") for a in record.annotations.get("lesions", [])
               if isinstance(a, dict)}
    tiles = []
    for entry in lesions:
        i = row[int(entry["z"])]
        y0, y1, x0, x1 = (int(v) for v in entry["crop"])
        crop = lambda array: array[i, y0:y1, x0:x1]  # noqa: E731
        soft = crop(batch.labels[soft_label(name)]) if soft_label(name) in batch.labels else None
        tiles.append(_tile(
            gray=batch.image[i, channel, y0:y1, x0:x1], trimap=crop(batch.labels[trimap_label(name)]), soft=soft,
            outline=crop(batch.labels[outline]) if outline in batch.labels else None,
            recist=recists.get(str(entry["lesion_id"])), origin=(x0, y0), threshold=threshold,
            caption=f"{case_id} {entry['lesion_id']} z={entry['z']}"))
    return _grid(tiles)


def _tile(*, gray, trimap, soft, outline, recist, origin, threshold, caption) -> np.ndarray:
    h, w = gray.shape
    scale = PANEL / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))

    def grow(array: np.ndarray, nearest: bool = True) -> np.ndarray:
        return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

    image = cv2.cvtColor(grow(gray, nearest=False), cv2.COLOR_GRAY2BGR)
    trimap_panel = cv2.cvtColor(grow(trimap), cv2.COLOR_GRAY2BGR)
    if soft is not None:
        soft_panel = cv2.applyColorMap(grow(np.round(soft * 255).astype(np.uint8), nearest=False), cv2.COLORMAP_VIRIDIS)
        binary = grow((soft >= threshold).astype(np.uint8))
    else:
        soft_panel = np.zeros_like(image)
        cv2.putText(soft_panel, "no soft mask", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, WHITE, 1, cv2.LINE_AA)
        binary = None
    if outline is not None:
        _outline(image, grow(outline.astype(np.uint8)), YELLOW)
    if binary is not None:
        for panel in (image, soft_panel):
            _outline(panel, binary, GREEN)
    if isinstance(recist, dict):
        _axes(image, recist, origin, scale)
    panels = [_titled(_padded(p), title) for p, title in
              ((image, "CT + RECIST" if isinstance(recist, dict) else "CT + outlines"), (trimap_panel, "trimap"),
               (soft_panel, "alpha"))]
    panels[2] = np.concatenate([panels[2], _colour_bar(panels[2].shape[0])], axis=1)
    body = np.concatenate([np.concatenate([p, np.full((p.shape[0], 2, 3), 64, np.uint8)], axis=1) for p in panels],
                          axis=1)
    strip = np.full((CAPTION, body.shape[1], 3), CANVAS, dtype=np.uint8)
    cv2.putText(strip, caption, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, WHITE, 1, cv2.LINE_AA)
    return np.concatenate([strip, body], axis=0)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    strip = np.full((TITLE, panel.shape[1], 3), CANVAS, dtype=np.uint8)
    cv2.putText(strip, title, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, WHITE, 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def _colour_bar(height: int) -> np.ndarray:
    """Alpha's colour map from 1 (top) to 0 (bottom), labelled, beside the alpha panel."""
    bar = np.full((height, BAR + 14, 3), CANVAS, dtype=np.uint8)
    ramp = np.linspace(255, 0, height - TITLE - 8).astype(np.uint8)[:, None].repeat(BAR - 6, axis=1)
    bar[TITLE + 4:height - 4, 2:BAR - 4] = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)
    cv2.putText(bar, "1", (BAR - 2, TITLE + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, WHITE, 1, cv2.LINE_AA)
    cv2.putText(bar, "0", (BAR - 2, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, WHITE, 1, cv2.LINE_AA)
    return bar


def _outline(panel: np.ndarray, mask: np.ndarray, colour) -> None:
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(panel, contours, -1, colour, 1)


def _axes(panel: np.ndarray, recist: dict, origin: tuple[int, int], scale: float) -> None:
    for key, colour in (("long", RED), ("short", BLUE)):
        try:
            (xa, ya), (xb, yb) = recist[key]
        except (KeyError, TypeError, ValueError):
            continue
        a = (round((xa - origin[0] + 0.5) * scale), round((ya - origin[1] + 0.5) * scale))
        b = (round((xb - origin[0] + 0.5) * scale), round((yb - origin[1] + 0.5) * scale))
        cv2.line(panel, a, b, colour, 1, cv2.LINE_AA)


def _padded(panel: np.ndarray) -> np.ndarray:
    """The panel centred on a PANEL x PANEL square of the canvas colour."""
    out = np.full((PANEL, PANEL, 3), CANVAS, dtype=np.uint8)
    h, w = min(panel.shape[0], PANEL), min(panel.shape[1], PANEL)
    top, left = (PANEL - h) // 2, (PANEL - w) // 2
    out[top:top + h, left:left + w] = panel[:h, :w]
    return out


def _grid(tiles: Sequence[np.ndarray]) -> np.ndarray:
    columns = min(MAX_COLUMNS, math.ceil(math.sqrt(len(tiles))))
    height, width = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    canvas = np.full((rows * (height + 4), columns * (width + 4), 3), CANVAS, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * (height + 4):r * (height + 4) + height, c * (width + 4):c * (width + 4) + width] = tile
    return canvas


def write_lesion_preview(store_path: str | Path, case_id: str, out: str | Path, *, name: str | None = None,
                         channel: int = 0, max_lesions: int = 12) -> Path:
    """Render :func:`render_lesion_preview` into the PNG ``out``."""
    image = render_lesion_preview(SliceStore.open(store_path), case_id, name=name, channel=channel,
                                  max_lesions=max_lesions)
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"{out}: OpenCV could not write the PNG")
    return Path(out)
