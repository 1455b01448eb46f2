"""``ctprep info``: what a store holds, in numbers; for a predictions store, also which dataset store it refers to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.errors import StoreError
from ctprep.store import PredictionStore, SliceStore, is_predictions_store


@dataclass(frozen=True, kw_only=True)
class StoreInfo:
    path: str
    source: str
    format_version: int
    lesionkit_version: str
    cases: int
    incomplete_cases: int
    slices: int
    lesion_slices: int
    splits: dict[str, int]
    windows: list[str]
    labels: list[str]
    bytes_on_disk: int
    uncompressed_bytes: int
    skipped: list[str]
    case_table: list[dict]  # per case: id, split, slices, lesion_slices

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.bytes_on_disk if self.bytes_on_disk else 0.0

    def lines(self) -> list[str]:
        split_text = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        out = [
            f"store        {self.path}",
            f"format       lesionkit-ct-slice-store v{self.format_version} (written by lesionkit {self.lesionkit_version})",
            f"source       {self.source}",
            f"cases        {self.cases} complete ({split_text})"
            + (f", {self.incomplete_cases} incomplete" if self.incomplete_cases else ""),
            f"slices       {self.slices} ({self.lesion_slices} with lesion)",
            f"windows      {', '.join(self.windows)}",
            f"labels       {', '.join(self.labels)}",
            f"on disk      {self.bytes_on_disk / 1e6:.1f} MB "
            f"(uncompressed {self.uncompressed_bytes / 1e6:.1f} MB, ratio {self.compression_ratio:.1f}x)",
        ]
        if self.skipped:
            out.append(f"skipped      {', '.join(self.skipped)} (reasons in the manifest)")
        return out

    def case_lines(self) -> list[str]:
        """One line per case: id, split, slices (with lesion)."""
        width = max((len(c["case_id"]) for c in self.case_table), default=4)
        return ["", f"{'case':<{width}}  split  slices  lesion slices"] + [
            f"{c['case_id']:<{width}}  {c['split']:<5}  {c['slices']:>6}  {c['lesion_slices']:>13}"
            for c in self.case_table]


@dataclass(frozen=True, kw_only=True)
class PredictionsInfo:
    """``ctprep info`` of a predictions store (ctprep.store.predictions)."""

    path: str
    kind: str
    dataset: str
    dataset_created: str
    dataset_check: str  # "matches" or the one line saying why it does not
    format_version: int
    lesionkit_version: str
    created_by: str
    cases: int
    incomplete_cases: int
    labels: list[str]
    bytes_on_disk: int
    uncompressed_bytes: int
    case_table: list[dict]  # per case: id, labels

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.bytes_on_disk if self.bytes_on_disk else 0.0

    def lines(self) -> list[str]:
        check = "found, matches" if self.dataset_check == "matches" else f"NOT USABLE: {self.dataset_check}"
        return [
            f"store        {self.path}",
            f"kind         predictions store (prediction labels only, no images; written by {self.created_by})",
            f"dataset      {self.dataset} (created {self.dataset_created}; {check})",
            f"format       lesionkit-ct-slice-store v{self.format_version} (written by lesionkit {self.lesionkit_version})",
            f"cases        {self.cases} complete" + (f", {self.incomplete_cases} incomplete" if self.incomplete_cases else ""),
            f"labels       {', '.join(self.labels)}",
            f"on disk      {self.bytes_on_disk / 1e6:.1f} MB "
            f"(uncompressed {self.uncompressed_bytes / 1e6:.1f} MB, ratio {self.compression_ratio:.1f}x)",
        ]

    def case_lines(self) -> list[str]:
        """One line per case: id, labels."""
        width = max((len(c["case_id"]) for c in self.case_table), default=4)
        return ["", f"{'case':<{width}}  labels"] + [f"{c['case_id']:<{width}}  {', '.join(c['labels'])}"
                                                     for c in self.case_table]


def predictions_info(path: str | Path) -> PredictionsInfo:
    store = PredictionStore.open(path)
    reference, info = store.dataset_reference, store.info
    try:
        store.open_dataset()
        check = "matches"
    except StoreError as exc:  # shown, not raised: info describes the store either way
        check = " ".join(str(exc).split())
    cases = store.case_ids()
    table = [{"case_id": c, "labels": store.label_names(c)} for c in cases]
    return PredictionsInfo(
        path=str(path), kind="predictions", dataset=str(reference.get("path")),
        dataset_created=str(reference.get("created")), dataset_check=check,
        format_version=int(info["format_version"]), lesionkit_version=str(info.get("lesionkit_version")),
        created_by=str(info.get("created_by")), cases=len(cases), incomplete_cases=len(store.incomplete_case_ids()),
        labels=sorted({n for row in table for n in row["labels"]}), bytes_on_disk=store.bytes_on_disk(),
        uncompressed_bytes=store.uncompressed_bytes(), case_table=table)


def store_info(path: str | Path) -> StoreInfo | PredictionsInfo:
    if is_predictions_store(path):
        return predictions_info(path)
    store = SliceStore.open(path)
    records = store.records()
    index = store.index()
    windows = list(dict.fromkeys(f"{w.name} [{w.lo:g}, {w.hi:g}] HU" for r in records for w in r.windows))
    labels = sorted({name for r in records for name in store.label_names(r.case_id)})
    splits = {s: sum(1 for r in records if r.split == s) for s in ("train", "val", "test")}
    info = store.info
    return StoreInfo(
        path=str(path), source=str(info.get("parameters", {}).get("source", "?")),
        format_version=int(info["format_version"]), lesionkit_version=str(info.get("lesionkit_version")),
        cases=len(records), incomplete_cases=len(store.incomplete_case_ids()), slices=len(index),
        lesion_slices=int(index.has_lesion.sum()), splits=splits, windows=windows, labels=labels,
        bytes_on_disk=store.bytes_on_disk(), uncompressed_bytes=store.uncompressed_bytes(),
        skipped=list(store.manifest().get("summary", {}).get("skipped", [])),
        case_table=[{"case_id": r.case_id, "split": r.split, "slices": r.num_slices,
                     "lesion_slices": sum(1 for n in r.lesion_pixels if n > 0)} for r in records],
    )
