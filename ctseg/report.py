"""A self-contained HTML evaluation report: metrics tables, box plots, best and worst cases.

Drawn with OpenCV (already a dependency; matplotlib is not) and embedded as inline
PNG data URIs, so report.html is one file that opens anywhere. Overlays show the
first window channel of the stored CT with the truth contour in green and the
prediction contour in red: the whole slice and a zoom on the lesion.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Mapping, Sequence

import numpy as np

from ctseg import metrics as m
from lkbase.errors import ParameterError

TRUTH_BGR = (60, 200, 60)
PRED_BGR = (60, 60, 240)
_FONT_SCALE = 0.42
_INK = (40, 40, 40)
OVERLAP_PLOT = ("dice", "jaccard", "precision", "recall", "auc")
DISTANCE_PLOT = ("hausdorff", "hd95", "assd", "mssd")


# ---- drawing helpers --------------------------------------------------------------------------
def png_data_uri(image: np.ndarray) -> str:
    """A data: URI of ``image`` (BGR or grey uint8) encoded as PNG."""
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise ParameterError("could not encode the image as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], *, scale: float = _FONT_SCALE,
          colour=_INK, anchor: str = "left") -> None:
    import cv2

    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    if anchor == "center":
        x -= width // 2
    elif anchor == "right":
        x -= width
    cv2.putText(canvas, text, (int(x), int(y + height // 2)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def box_stats(values: Sequence[float]) -> dict | None:
    """Tukey box: quartiles, whiskers at the last values within 1.5 IQR, and the outliers (finite values)."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return None
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    reach = 1.5 * (q3 - q1)
    inside = data[(data >= q1 - reach) & (data <= q3 + reach)]
    return {"q1": float(q1), "median": float(median), "q3": float(q3), "low": float(inside.min()),
            "high": float(inside.max()), "outliers": data[(data < q1 - reach) | (data > q3 + reach)].tolist(),
            "values": data.tolist()}


def _nice_limits(values: Sequence[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite) if finite else 1.0
    if top <= 0:
        return 0.0, 1.0
    step = 10 ** math.floor(math.log10(top))
    return 0.0, math.ceil(top * 1.05 / step) * step


def box_plot(groups: Mapping[str, Sequence[float]], *, title: str, limits: tuple[float, float] | None = None,
             height: int = 300, column: int = 110) -> np.ndarray:
    """A BGR box plot image, one box per named group (points drawn over it; non-finite values left out)."""
    import cv2

    left, right, top, bottom = 56, 16, 34, 44
    width = left + right + column * max(1, len(groups))
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    lo, hi = _nice_limits([v for vs in groups.values() for v in vs], limits)
    plot_h = height - top - bottom

    def y_of(value: float) -> int:
        return int(round(top + plot_h * (1 - (value - lo) / (hi - lo))))

    _text(canvas, title, (width // 2, 14), scale=0.5, anchor="center")
    for k in range(6):  # axis with 5 intervals
        value = lo + (hi - lo) * k / 5
        y = y_of(value)
        cv2.line(canvas, (left, y), (width - right, y), (225, 225, 225), 1)
        _text(canvas, f"{value:.3g}", (left - 6, y), anchor="right")
    cv2.line(canvas, (left, top), (left, top + plot_h), _INK, 1)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice is the same file
    for i, (name, values) in enumerate(groups.items()):
        centre = left + column * i + column // 2
        stats = box_stats(values)
        n_empty = sum(1 for v in values if not math.isfinite(v))
        _text(canvas, name, (centre, height - bottom + 12), anchor="center")
        _text(canvas, f"n={len(values) - n_empty}" + (f" ({n_empty} empty)" if n_empty else ""),
              (centre, height - bottom + 28), scale=0.36, anchor="center")
        if stats is None:
            continue
        half = column // 4
        cv2.rectangle(canvas, (centre - half, y_of(stats["q3"])), (centre + half, y_of(stats["q1"])),
                      (235, 206, 170), -1)
        cv2.rectangle(canvas, (centre - half, y_of(stats["q3"])), (centre + half, y_of(stats["q1"])), _INK, 1)
        cv2.line(canvas, (centre - half, y_of(stats["median"])), (centre + half, y_of(stats["median"])),
                 (0, 0, 200), 2)
        for end, edge in ((stats["high"], stats["q3"]), (stats["low"], stats["q1"])):
            cv2.line(canvas, (centre, y_of(edge)), (centre, y_of(end)), _INK, 1)
            cv2.line(canvas, (centre - half // 2, y_of(end)), (centre + half // 2, y_of(end)), _INK, 1)
        for value in stats["values"]:
            x = centre + int(rng.uniform(-half * 0.8, half * 0.8))
            cv2.circle(canvas, (x, y_of(min(max(value, lo), hi))), 2, (90, 90, 90), -1, cv2.LINE_AA)
    return canvas


def _contours(canvas: np.ndarray, mask: np.ndarray, colour, thickness: int = 1) -> None:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, thickness, cv2.LINE_8)


def _panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, size: int) -> np.ndarray:
    """The slice scaled to ``size`` (longest side) with both contours drawn at that scale."""
    import cv2

    scale = size / max(image.shape)
    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))  # (w, h)
    canvas = cv2.cvtColor(cv2.resize(image, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR),
                          cv2.COLOR_GRAY2BGR)
    _contours(canvas, cv2.resize(truth.astype(np.uint8), shape, interpolation=cv2.INTER_NEAREST), TRUTH_BGR, 2)
    _contours(canvas, cv2.resize(pred.astype(np.uint8), shape, interpolation=cv2.INTER_NEAREST), PRED_BGR)
    return canvas


def _zoom_box(truth: np.ndarray, pred: np.ndarray) -> tuple[slice, slice] | None:
    union = truth | pred
    if not union.any():
        return None
    ys, xs = np.nonzero(union)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(16, int(0.75 * max(ys.max() - ys.min(), xs.max() - xs.min()) + 8))
    y0 = int(np.clip(cy - half, 0, max(0, union.shape[0] - 2 * half)))
    x0 = int(np.clip(cx - half, 0, max(0, union.shape[1] - 2 * half)))
    return slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half)


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, *, size: int = 256) -> np.ndarray:
    """BGR image: the whole slice and a zoom on truth + prediction, each with both contours."""
    panels = [_panel(image, truth, pred, size)]
    box = _zoom_box(truth.astype(bool), pred.astype(bool))
    if box is not None:
        panels.append(_panel(image[box], truth[box], pred[box], size))
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0)), constant_values=255) for p in panels]
    return np.concatenate(padded, axis=1)


# ---- choosing and formatting ------------------------------------------------------------------
def best_and_worst(rows: Sequence[Mapping], count: int = 2) -> tuple[list[Mapping], list[Mapping]]:
    """Cases ranked by Dice (then HD95): the ``count`` best and worst, leaving out both-empty cases."""
    ranked = sorted((r for r in rows if r["empty"] != "both"),
                    key=lambda r: (-r["dice"], r["hd95"] if math.isfinite(r["hd95"]) else math.inf))
    count = min(count, (len(ranked) + 1) // 2)
    return ranked[:count], ranked[len(ranked) - count:][::-1] if len(ranked) > count else []


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, str):
        return html.escape(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float) and math.isinf(value):
        return "&infin;" if value > 0 else "&minus;&infin;"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}f}"


def _digits(key: str) -> int:
    return 2 if key in m.DISTANCE_KEYS else 3


def _summary_table(evaluation) -> str:
    summary = evaluation.summary()
    per_case, per_slice, glob = summary["per_case"], summary["per_slice"], evaluation.global_metrics
    head = ("<tr><th>metric</th><th>per case mean &plusmn; std</th><th>median</th><th>n (empty)</th>"
            "<th>per slice mean &plusmn; std</th><th>global (pooled)</th></tr>")
    body = []
    for key in m.METRIC_KEYS:
        c, s, d = per_case[key], per_slice[key], _digits(key)
        unit = " mm" if key in m.DISTANCE_KEYS else ""

        def mean_std(stats):
            return f"{_fmt(stats['mean'], d)} &plusmn; {_fmt(stats['std'], d)}" if stats["n"] else "&ndash;"

        body.append(f"<tr><td>{key}{unit}</td><td>{mean_std(c)}</td><td>{_fmt(c['median'], d)}</td>"
                    f"<td>{c['n']} ({c['n_empty']})</td><td>{mean_std(s)}</td>"
                    f"<td>{_fmt(glob.get(key), d)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _case_table(rows: Sequence[Mapping]) -> str:
    keys = ("dice", "jaccard", "precision", "recall", "specificity", "auc", "voe", "rvd",
            "hausdorff", "hd95", "assd", "mssd")
    head = "<tr><th>case</th><th>empty</th><th>truth mL</th><th>pred mL</th>" + "".join(
        f"<th>{k}</th>" for k in keys) + "</tr>"
    ordered = sorted(rows, key=lambda r: -r["dice"])
    body = "".join(
        f"<tr><td>{html.escape(r['case'])}</td><td>{r['empty']}</td><td>{_fmt(r['truth_ml'], 2)}</td>"
        f"<td>{_fmt(r['pred_ml'], 2)}</td>" + "".join(f"<td>{_fmt(r[k], _digits(k))}</td>" for k in keys) + "</tr>"
        for r in ordered)
    return f"<table>{head}{body}</table>"


def _overlay_figure(store, row: Mapping, prediction_label: str, threshold: float, heading: str) -> str:
    z = int(row["overlay_z"])
    batch = store.read_slices([(row["case"], z)], labels=[row["truth_label"], prediction_label])
    pred, _ = m.binarise(batch.labels[prediction_label][0], threshold)
    truth = m.truth_mask(batch.labels[row["truth_label"]][0])
    uri = png_data_uri(overlay(batch.image[0, 0], truth, pred))
    caption = (f"{heading}: {html.escape(row['case'])}, stored slice {z} &mdash; Dice {_fmt(row['dice'])}, "
               f"HD95 {_fmt(row['hd95'], 2)} mm")
    return f'<figure><img src="{uri}" alt="{html.escape(row["case"])}"><figcaption>{caption}</figcaption></figure>'


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}figure{display:inline-block;margin:0 1em 1em 0}
figcaption{font-size:13px}.key span{display:inline-block;width:1em;height:.3em;margin:0 .3em .2em 1em}"""


def render_report(evaluation, store) -> str:
    """The report of an :class:`ctseg.evaluate.Evaluation` as one HTML page (overlays read from ``store``)."""
    summary = evaluation.summary()
    rows = evaluation.per_case
    scored_slices = [r for r in evaluation.per_slice if r["empty"] != "both"]
    overlap = {k: [r[k] for r in rows] for k in OVERLAP_PLOT}
    overlap["dice/slice"] = [r["dice"] for r in scored_slices]
    distances = {k: [r[k] for r in rows] for k in DISTANCE_PLOT}
    plots = [box_plot(overlap, title="per case (dice/slice: per slice)", limits=(0.0, 1.0)),
             box_plot(distances, title="surface distances per case (mm)")]
    best, worst = best_and_worst(rows)
    figures = [_overlay_figure(store, r, evaluation.prediction_label, evaluation.threshold, "best") for r in best]
    figures += [_overlay_figure(store, r, evaluation.prediction_label, evaluation.threshold, "worst") for r in worst]
    empty = summary["empty_cases"]
    skipped = "".join(f"<li>{html.escape(c)}: {html.escape(r)}</li>" for c, r in evaluation.skipped)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ctseg evaluation: {html.escape(evaluation.prediction_label)}</title>
<style>{_STYLE}</style></head><body>
<h1>Evaluation of <code>{html.escape(evaluation.prediction_label)}</code></h1>
<p>Truth <code>{html.escape(evaluation.truth_label)}</code>, probabilities &ge; {evaluation.threshold:g} are
foreground; store <code>{html.escape(evaluation.store)}</code>, split <code>{html.escape(evaluation.split or '-')}</code>;
{len(rows)} cases ({empty['truth']} with an empty truth, {empty['prediction']} with an empty prediction,
{empty['both']} both empty); {summary['slices']['scored']} of {summary['slices']['total']} stored slices with
truth or prediction. Created {html.escape(summary['created'])}.</p>
{f'<p>Skipped:</p><ul>{skipped}</ul>' if skipped else ''}
<h2>Metrics</h2>
<p>Distances in mm. Per slice: 2D metrics of slices where truth or prediction has voxels. Global: voxel counts
pooled over all cases (LiTS). Non-finite values (an empty mask on one side) are left out of the means and
counted as empty; see docs/metrics.md for definitions and the empty-mask policy.</p>
{_summary_table(evaluation)}
<h2>Distributions</h2>
{''.join(f'<img src="{png_data_uri(p)}" alt="box plot"> ' for p in plots)}
<h2>Best and worst cases</h2>
<p class="key">Contours: <span style="background:#3cc83c"></span>truth <span style="background:#f03c3c"></span>prediction.
Left: the slice with the most truth (else prediction); right: zoom.</p>
{''.join(figures) or '<p>No case with a lesion in truth or prediction.</p>'}
<h2>Cases</h2>
{_case_table(rows)}
</body></html>
"""
