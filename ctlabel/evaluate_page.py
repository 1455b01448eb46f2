"""What ``ctlabel evaluate`` writes (:func:`write_evaluation`): CSV, JSON, and the HTML page: one self-contained file (images as base64 PNGs, no scripts).

It shows the run's mean figures, the per-case table, and for the worst lesions (lowest
Dice at 0.5) four panels over the lesion's crop: the CT crop with the RECIST axes (red
long, blue short), the trimap (black / grey / white), alpha (grey scale, 0 black, 1 white)
and the reference outline (yellow) over alpha's 0.5 outline (green). OpenCV draws them.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import cv2
import numpy as np

from ctlabel.evaluate import FIGURES, Evaluation, LesionScore
from lkbase.atomic import write_text_atomic

PANEL = 192  # pixels a side
RED, BLUE, GREEN, YELLOW = (0, 0, 255), (255, 96, 0), (0, 220, 0), (0, 220, 255)
NAMES = {"dice_05": "Dice@0.5", "iou_05": "IoU@0.5", "dice": "Dice (128/255)", "iou": "IoU (128/255)",
         "acc": "ACC", "auc": "AUC", "ellipse_dice": "RECIST ellipse Dice"}


def _png(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_NEAREST)


def _outline(canvas: np.ndarray, mask: np.ndarray, factor: float, colour) -> None:
    big = _resized(mask.astype(np.uint8), factor)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, 1)


def lesion_panels(score: LesionScore) -> list[tuple[str, np.ndarray]]:
    """The four titled panels (BGR uint8) of one lesion."""
    p = score.panels
    factor = PANEL / max(p["alpha"].shape)
    grey = cv2.cvtColor(_resized(p["image"], factor), cv2.COLOR_GRAY2BGR)
    if score.recist is not None:
        for (a, b), colour in ((score.recist.long, RED), (score.recist.short, BLUE)):
            ends = [tuple(int(round((v + 0.5) * factor)) for v in point) for point in (a, b)]
            cv2.line(grey, ends[0], ends[1], colour, 1, cv2.LINE_AA)
    trimap = p.get("trimap")
    trimap = np.zeros_like(p["image"]) if trimap is None else trimap
    alpha8 = np.round(np.clip(p["alpha"], 0, 1) * 255).astype(np.uint8)
    alpha = cv2.cvtColor(_resized(alpha8, factor), cv2.COLOR_GRAY2BGR)
    both = alpha.copy()
    _outline(both, p["alpha"] >= 0.5, factor, GREEN)
    _outline(both, p["reference"], factor, YELLOW)
    return [("CT + RECIST", grey), ("trimap", cv2.cvtColor(_resized(trimap, factor), cv2.COLOR_GRAY2BGR)),
            ("alpha (0 black .. 1 white)", alpha), ("reference (yellow) / alpha 0.5 (green)", both)]


def _number(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(NAMES.get(k, k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_number(r[k]) if isinstance(r[k], float) or r[k] is None else html.escape(str(r[k]))}</td>"
                                    for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(evaluation: Evaluation, worst: int = 12) -> str:
    """The self-contained page (see the module docstring)."""
    mean = {k: evaluation.mean(k) for k in FIGURES}
    summary = ", ".join(f"{NAMES[k]} {_number(v)}" for k, v in mean.items())
    tiles = []
    for score in evaluation.worst(worst):
        figures = ", ".join(f"{NAMES[k]} {_number(score.figures.get(k))}" for k in ("dice_05", "auc", "ellipse_dice"))
        panels = "".join(f'<figure><img src="{_png(image)}" width="{PANEL}"><figcaption>{html.escape(title)}'
                         f"</figcaption></figure>" for title, image in lesion_panels(score))
        tiles.append(f"<section><h3>{html.escape(score.case_id)} / {html.escape(score.lesion_id)} (z={score.z}"
                     f"{', ' + html.escape(score.path) if score.path else ''})</h3><p>{figures}</p>"
                     f'<div class="row">{panels}</div></section>')
    case_keys = ["case_id", "lesions", *FIGURES]
    title = f"{evaluation.label} vs {evaluation.reference}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:16px} table{border-collapse:collapse} td,th{border:1px solid #aaa;"
            "padding:2px 6px;text-align:right} .row{display:flex;gap:8px} figure{margin:0} figcaption{font-size:12px;"
            "text-align:center}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(evaluation.store)}: {len(evaluation.lesions)} lesions, "
            f"{len(evaluation.cases)} cases. Mean per lesion: {summary}.</p>"
            "<p>Dice/IoU@0.5: alpha &ge; 0.5. Paper figures (SoftGAN section 4): soft mask binarised at 128/255; "
            "AUC of alpha. Baseline: the RECIST ellipse.</p>"
            f"<h2>Cases</h2>{_table(list(evaluation.cases), case_keys)}"
            f"<h2>Worst {len(tiles)} lesions (lowest Dice@0.5)</h2>{''.join(tiles)}</body></html>")


def write_evaluation(evaluation: Evaluation, out_dir: str | Path, worst: int = 12) -> list[Path]:
    """``lesions.csv``, ``cases.csv``, ``evaluation.json`` and ``evaluation.html`` under ``out_dir`` (atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in (("lesions.csv", [s.row() for s in evaluation.lesions]), ("cases.csv", list(evaluation.cases))):
        written.append(_write_csv(out / name, rows))
    written.append(out / "evaluation.json")
    write_text_atomic(written[-1], json.dumps(evaluation.to_dict(), indent=1))
    written.append(out / "evaluation.html")
    write_text_atomic(written[-1], html_page(evaluation, worst))
    return written


def _write_csv(path: Path, rows: list[dict]) -> Path:
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
    return path
