"""``ctprep report STORE``: one browsable HTML page of a store.

The page (``<store>.report/index.html`` beside a local store, or ``--out``) shows the
manifest summary (dataset, citation, licence, split counts, windows, labels), then one
row per case: a thumbnail at its largest lesion slice with every label outlined (float
labels at their 0.5 level), split, slice counts and lesion volume, sortable by any
column in the browser; then quirks and skipped cases with their reasons.

Convention: thumbnails are PNG files in ``thumbs/``, named by case and by the digest of
the case's recorded checksums, so a thumbnail is written once and reused until the case
changes, and the page loads them lazily (``loading="lazy"``): a 1,000-case store's page
opens at once. Every string from the store is HTML-escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.case import CaseRecord
from ctprep.store import SliceStore, checksums_digest, is_url
from lkbase.atomic import atomic_path, write_text_atomic
from lkbase.plain import plain

THUMB = 160  # thumbnail side in pixels
COLOURS = [(0, 255, 0), (0, 0, 255), (255, 128, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
           (128, 0, 255), (0, 128, 255)]  # BGR, one per label name in sorted order


@dataclass(frozen=True, kw_only=True)
class CaseRow:
    """One case on the page."""

    case_id: str
    split: str
    slices: int
    lesion_slices: int
    lesion_ml: float
    thumbnail: str  # relative path from the page
    quirks: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class StoreReport:
    """What ``ctprep report`` wrote."""

    page: Path
    cases: int
    thumbnails_written: int
    thumbnails_reused: int

    def lines(self) -> list[str]:
        return [f"wrote {self.page}: {self.cases} cases ({self.thumbnails_written} thumbnails written, "
                f"{self.thumbnails_reused} reused)"]


def default_report_folder(store_path: str | Path) -> Path:
    """``x.zarr`` -> ``x.report/`` beside it (a store at a URL needs ``--out``)."""
    if is_url(store_path):
        raise ValueError(f"{store_path}: a store at a URL needs --out FOLDER for its report")
    path = Path(store_path)
    return path.with_name(f"{path.name.removesuffix('.zarr')}.report")


def write_store_report(store_path: str | Path, out: str | Path | None = None, *,
                       progress: bool = True) -> StoreReport:
    """Write the report page of ``store_path`` (and its missing thumbnails) into ``out``."""
    from tqdm import tqdm

    store = SliceStore.open(store_path)
    folder = Path(out) if out is not None else default_report_folder(store_path)
    (folder / "thumbs").mkdir(parents=True, exist_ok=True)
    rows, written = [], 0
    for case_id in tqdm(store.case_ids(), desc="report", unit="case", disable=not progress or None):
        row, new = _case_row(store, case_id, folder)
        rows.append(row)
        written += new
    page = write_text_atomic(folder / "index.html", render_page(store, rows))
    return StoreReport(page=page, cases=len(rows), thumbnails_written=written, thumbnails_reused=len(rows) - written)


def _case_row(store: SliceStore, case_id: str, folder: Path) -> tuple[CaseRow, bool]:
    record = store.record(case_id)
    digest = checksums_digest(store.recorded_checksums(case_id))[:12]
    thumbnail = f"thumbs/{case_id}-{digest}.png"
    new = not (folder / thumbnail).is_file()
    if new:
        _write_png(folder / thumbnail, render_thumbnail(store, record))
    pixels = np.asarray(record.lesion_pixels)
    voxel_ml = float(np.prod(record.geometry.spacing)) / 1000.0
    return CaseRow(case_id=case_id, split=record.split, slices=record.num_slices,
                   lesion_slices=int((pixels > 0).sum()), lesion_ml=float(pixels.sum()) * voxel_ml,
                   thumbnail=thumbnail, quirks=tuple(record.quirks)), new


def largest_lesion_slice(record: CaseRecord) -> int:
    """The stored slice with the most lesion pixels, or the middle one."""
    pixels = np.asarray(record.lesion_pixels)
    return int(pixels.argmax()) if pixels.any() else len(pixels) // 2


def render_thumbnail(store: SliceStore, record: CaseRecord, labels: Sequence[str] | None = None) -> np.ndarray:
    """A THUMB-sized BGR image of the case's largest lesion slice (first window) with label outlines."""
    import cv2

    names = sorted(labels if labels is not None else store.label_names(record.case_id))
    z = largest_lesion_slice(record)
    batch = store.read_slices([(record.case_id, z)], labels=names)
    size = (THUMB, THUMB)
    tile = cv2.cvtColor(cv2.resize(batch.image[0, 0], size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    for j, name in enumerate(names):
        mask = (batch.labels[name][0] >= 0.5).astype(np.uint8) if batch.labels[name].dtype.kind == "f" \
            else (batch.labels[name][0] > 0).astype(np.uint8)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, COLOURS[j % len(COLOURS)], 1)
    return tile


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"{path}: OpenCV could not write the PNG")


# ---- the page --------------------------------------------------------------------------------
_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse}
td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
th{cursor:pointer;background:#f4f4f4}th:hover{background:#e8e8e8}img{display:block;width:160px;height:160px}
.legend span{display:inline-block;margin-right:1em}.swatch{width:12px;height:12px;display:inline-block;
margin-right:4px;vertical-align:middle}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}"""

_SORT = """<script>document.querySelectorAll('th[data-key]').forEach(function(th){th.onclick=function(){
var tb=document.querySelector('#cases tbody'),k=th.dataset.key,num=th.dataset.num==='1',
up=th.dataset.dir!=='asc';th.dataset.dir=up?'asc':'desc';var rows=Array.from(tb.rows);
rows.sort(function(a,b){var x=a.dataset[k],y=b.dataset[k];if(num){x=+x;y=+y}
return (x<y?-1:x>y?1:0)*(up?1:-1)});rows.forEach(function(r){tb.appendChild(r)})}})</script>"""


def render_page(store: SliceStore, rows: Sequence[CaseRow]) -> str:
    """The whole HTML page (self-contained apart from the thumbnail files)."""
    manifest = store.manifest()
    parameters = store.parameters
    title = f"lesionkit store {Path(str(store.path)).name}"
    return "\n".join([
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_STYLE}</style></head>",
        f"<body><h1>{_e(title)}</h1>", _summary(manifest, parameters, rows), _legend(store, rows),
        _table(rows), _problems(manifest, rows), _SORT, "</body></html>"])


def _summary(manifest: dict, parameters: dict, rows: Sequence[CaseRow]) -> str:
    dataset = manifest.get("dataset", {}) or {}
    splits = {s: sum(1 for r in rows if r.split == s) for s in ("train", "val", "test")}
    windows = plain(parameters.get("windows", []))
    items = [("source", parameters.get("source", "?")), ("dataset", dataset.get("title", "")),
             ("citation", dataset.get("citation", "")), ("licence", dataset.get("licence", "")),
             ("cases", f"{len(rows)} ({', '.join(f'{k} {v}' for k, v in splits.items())})"),
             ("slices", f"{sum(r.slices for r in rows)} ({sum(r.lesion_slices for r in rows)} with lesion)"),
             ("windows", windows)]
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items if v != "") + "</dl>"


def _legend(store: SliceStore, rows: Sequence[CaseRow]) -> str:
    names = sorted({n for r in rows[:50] for n in store.label_names(r.case_id)})
    spans = "".join(f"<span><i class='swatch' style='background:rgb({c[2]},{c[1]},{c[0]})'></i>{_e(n)}</span>"
                    for n, c in zip(names, COLOURS * (len(names) // len(COLOURS) + 1)))
    return f"<p class='legend'>Outlines (largest lesion slice, first window): {spans}</p>" if names else ""


def _table(rows: Sequence[CaseRow]) -> str:
    head = ("<thead><tr><th>slice</th><th data-key='case'>case</th><th data-key='split'>split</th>"
            "<th data-key='slices' data-num='1'>slices</th><th data-key='lesionslices' data-num='1'>lesion slices</th>"
            "<th data-key='lesionml' data-num='1'>lesion volume (ml)</th><th>quirks</th></tr></thead>")
    body = "".join(
        f"<tr data-case='{_e(r.case_id)}' data-split='{_e(r.split)}' data-slices='{r.slices}' "
        f"data-lesionslices='{r.lesion_slices}' data-lesionml='{r.lesion_ml:.4f}'>"
        f"<td><img loading='lazy' src='{_e(r.thumbnail)}' alt='{_e(r.case_id)}'></td><td>{_e(r.case_id)}</td>"
        f"<td>{_e(r.split)}</td><td>{r.slices}</td><td>{r.lesion_slices}</td><td>{r.lesion_ml:.2f}</td>"
        f"<td>{_e('; '.join(r.quirks))}</td></tr>" for r in rows)
    return f"<p>Click a column title to sort.</p><table id='cases'>{head}<tbody>{body}</tbody></table>"


def _problems(manifest: dict, rows: Sequence[CaseRow]) -> str:
    skipped = {k: e.get("reason", "") for k, e in (manifest.get("cases") or {}).items()
               if isinstance(e, dict) and e.get("status") == "skipped"}
    quirky = [r for r in rows if r.quirks]
    parts = [f"<h2>Skipped cases ({len(skipped)})</h2>",
             "<ul>" + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in sorted(skipped.items())) + "</ul>"
             if skipped else "<p>None.</p>",
             f"<h2>Cases with known quirks ({len(quirky)})</h2>",
             "<ul>" + "".join(f"<li>{_e(r.case_id)}: {_e('; '.join(r.quirks))}</li>" for r in quirky) + "</ul>"
             if quirky else "<p>None.</p>"]
    return "\n".join(parts)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


__all__ = ["StoreReport", "write_store_report", "render_thumbnail", "render_page", "default_report_folder"]
