"""``ctprep info --fingerprint``: a store's dataset fingerprint (spacing, shape, intensities, lesion sizes), per split.

Convention: intensities are HU when every case of the store has stored HU (``--keep-hu``),
otherwise the first window's uint8 values (0..255, "window units"); ``units`` says which.
Percentiles are exact, from integer histograms (HU int16, window uint8), with numpy's
``inverted_cdf`` rule (the smallest value whose cumulative share reaches q). Foreground is
the case's lesion label. Lesions are 3-D connected components (26-connectivity) of the
lesion label within runs of consecutive stored grid slices (``--slices lesion`` leaves
gaps; a lesion is never joined across one); their size is voxels, mm3 (voxels x voxel
volume) and the equivalent diameter (of the sphere of that volume, mm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ctprep.store import SliceStore

PERCENTILES = (0.5, 50.0, 99.5)
_HU_OFFSET = 32768


def percentiles(histogram: np.ndarray, offset: int) -> list[float] | None:
    """Values at PERCENTILES of a histogram whose bin ``i`` counts value ``i - offset`` (inverted_cdf)."""
    total = int(histogram.sum())
    if total == 0:
        return None
    cumulative = np.cumsum(histogram)
    return [float(np.searchsorted(cumulative, q / 100.0 * total, side="left") - offset) for q in PERCENTILES]


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "median": float(np.median(array)), "max": float(array.max())}


def lesion_sizes(mask: np.ndarray, slice_indices: tuple[int, ...]) -> list[int]:
    """Voxel counts of the lesions (connected components) of a stored (z, y, x) mask; see the module docstring."""
    rows = np.asarray(slice_indices)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    sizes: list[int] = []
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        labelled, count = ndimage.label(mask[start:stop] > 0, structure=np.ones((3, 3, 3), dtype=bool))
        if count:
            sizes += np.bincount(labelled.ravel())[1:].tolist()
    return sizes


class _Split:
    """Running totals of one split."""

    def __init__(self, bins: int):
        self.cases, self.spacings, self.shapes = 0, [], []
        self.overall = np.zeros(bins, dtype=np.int64)
        self.foreground = np.zeros(bins, dtype=np.int64)
        self.voxels: list[int] = []
        self.voxel_mm3: list[float] = []

    def summary(self, offset: int) -> dict:
        mm3 = [v * s for v, s in zip(self.voxels, self.voxel_mm3)]
        diameter = [(6.0 * v / np.pi) ** (1.0 / 3.0) for v in mm3]
        return {
            "cases": self.cases,
            "spacing_mm": {axis: _stats([s[i] for s in self.spacings]) for i, axis in enumerate("zyx")},
            "shape": {axis: _stats([s[i] for s in self.shapes]) for i, axis in enumerate("zyx")},
            "intensity_percentiles": {"percentiles": list(PERCENTILES),
                                      "overall": percentiles(self.overall, offset),
                                      "foreground": percentiles(self.foreground, offset)},
            "lesions": {"count": len(self.voxels), "voxels": _stats(self.voxels), "volume_mm3": _stats(mm3),
                        "equivalent_diameter_mm": _stats(diameter)},
        }


def fingerprint(path: str | Path) -> dict:
    """The fingerprint of the store at ``path``, per split and over all cases (key ``all``)."""
    store = SliceStore.open(path)
    records = store.records()
    use_hu = bool(records) and all(r.has_hu for r in records)
    bins, offset = (65536, _HU_OFFSET) if use_hu else (256, 0)
    splits: dict[str, _Split] = {}
    for record in records:
        case = store.read_case(record.case_id, labels=[record.lesion_label] if record.lesion_label else [],
                               hu=use_hu)
        values = case.hu.astype(np.int64) + offset if use_hu else case.image[:, 0].astype(np.int64)
        histogram = np.bincount(values.ravel(), minlength=bins)
        mask = case.labels[record.lesion_label] > 0 if record.lesion_label else None
        foreground = (np.bincount(values[mask], minlength=bins) if mask is not None
                      else np.zeros(bins, dtype=np.int64))
        sizes = lesion_sizes(mask, record.slice_indices) if mask is not None else []
        for name in (record.split, "all"):
            split = splits.setdefault(name, _Split(bins))
            split.cases += 1
            split.spacings.append(record.geometry.spacing)
            split.shapes.append((record.num_slices, *record.geometry.shape[1:]))
            split.overall += histogram
            split.foreground += foreground
            split.voxels += sizes
            split.voxel_mm3 += [float(np.prod(record.geometry.spacing))] * len(sizes)
    window = records[0].windows[0] if records else None
    units = ("HU (stored with --keep-hu)" if use_hu else
             f"window units: uint8 0..255 of the first window"
             + (f" ({window.name} [{window.lo:g}, {window.hi:g}] HU)" if window else "")
             + "; convert with --keep-hu for HU")
    order = [s for s in ("train", "val", "test", "all") if s in splits]
    return {"units": units, "hu": use_hu, "splits": {s: splits[s].summary(offset) for s in order}}


def save_fingerprint(path: str | Path, data: dict) -> None:
    """Write ``data`` into the store's manifest under ``fingerprint`` and the manifest file beside it."""
    from ctprep.conversion_manifest import manifest_path, write_json_atomic

    store = SliceStore.open(path, mode="a")
    with store.lock():
        store = SliceStore.open(path, mode="a")
        manifest = {**store.manifest(), "fingerprint": data}
        store.set_manifest(manifest)
        write_json_atomic(manifest_path(path), store.manifest())


def fingerprint_lines(data: dict) -> list[str]:
    """The fingerprint as text: one block per split."""
    def span(stats: dict | None, fmt: str = "{:g}") -> str:
        if stats is None:
            return "-"
        return "/".join(fmt.format(stats[k]) for k in ("min", "median", "max"))

    out = [f"intensities  {data['units']}"]
    for name, split in data["splits"].items():
        p = split["intensity_percentiles"]
        les = split["lesions"]
        pct = lambda v: "-" if v is None else ", ".join(f"{x:g}" for x in v)  # noqa: E731
        out += [f"[{name}] {split['cases']} case(s)",
                "  spacing mm   (min/median/max) " + "  ".join(f"{a} {span(split['spacing_mm'][a])}" for a in "zyx"),
                "  shape        (min/median/max) " + "  ".join(f"{a} {span(split['shape'][a])}" for a in "zyx"),
                f"  p0.5/50/99.5 overall {pct(p['overall'])}; foreground {pct(p['foreground'])}",
                f"  lesions      {les['count']}: voxels {span(les['voxels'])}, "
                f"volume mm3 {span(les['volume_mm3'], '{:.1f}')}, "
                f"equivalent diameter mm {span(les['equivalent_diameter_mm'], '{:.2f}')}"]
    return out
