"""Converting a raw dataset folder into a slice store: the library behind ``ctprep convert``.

One case at a time (or one per worker process), each written atomically into
the store; a bad case is skipped and reported, never fatal to the others.
Re-running the same command resumes: complete cases are skipped, incomplete
ones redone. The slice index and manifest are consolidated once at the end.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ctprep.case import CaseRecord, CaseRef
from ctprep.case_slabs import parse_slice_mode, selected_stream, store_slabs
from ctprep.conversion_manifest import command_line, library_versions, manifest_path, write_json_atomic
from ctprep.datasets import SplitConfig, assign_split, fold_table
from ctprep.errors import CaseInputError, LesionkitError, StoreError, StoreUnreachableError, StoreWriteError
from ctprep.public_paths import Redactor, public_path
from ctprep.sources import get_source
from ctprep.slabs import read_ahead
from ctprep.sources.base import refuse_duplicate_ids, refuse_long_ids
from ctprep.store import SliceStore, check_shared, checksums_digest, store_lock
from ctprep.windowing import Window
from lkbase import __version__
from lkbase.errors import ParameterError, is_storage_failure
from lkbase.runner import CaseOutcome, case_pool, run_cases, run_guarded

log = logging.getLogger("ctprep")


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """Everything a conversion needs; ``content_parameters`` must match to resume into a store."""

    source: str
    input_dir: str
    output: str
    windows: tuple[Window, ...] = ()  # empty: the dataset manifest's defaults
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm, 0 keeps an axis
    size: tuple[int, int] | None = None  # (y, x) in-plane size
    slices: str = "all"  # all | lesion | lesion+K
    keep_hu: bool = False
    cases: tuple[str, ...] | None = None
    workers: int = 1
    dask: str | None = None  # "local", "local:N" or a scheduler address: one dask.distributed task per case
    overwrite: bool = False
    strict: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    source_options: dict = field(default_factory=dict)  # the source's own options (e.g. nsclc rois)
    folds: int | None = None  # k-fold CV: each train/val patient's fold in the manifest (not a content parameter)

    def __post_init__(self) -> None:
        parse_slice_mode(self.slices)
        if self.workers < 1:
            raise ParameterError(f"workers must be >= 1, found {self.workers}")
        names = [w.name for w in self.windows]
        if len(set(names)) != len(names):
            raise ParameterError(f"window names must be unique, found {names}")
        if self.folds is not None and self.folds < 2:
            raise ParameterError(f"--folds must be at least 2, found {self.folds}")

    def content_parameters(self) -> dict:
        """The parameters that shape the stored data (not which cases, nor how many workers)."""
        return {
            "source": self.source,
            "windows": [w.to_dict() for w in self.windows],
            "spacing": list(self.spacing) if self.spacing else None,
            "size": list(self.size) if self.size else None,
            "slices": self.slices,
            "keep_hu": self.keep_hu,
            "split": self.split.to_dict(),
            "source_options": dict(self.source_options),
        }

    def to_dict(self) -> dict:
        return {**self.content_parameters(), "input_dir": self.input_dir, "output": self.output,
                "cases": list(self.cases) if self.cases else None, "workers": self.workers, "dask": self.dask,
                "overwrite": self.overwrite, "strict": self.strict} | ({"folds": self.folds} if self.folds else {})

    @classmethod
    def from_dict(cls, data: dict) -> "ConvertConfig":
        return cls(source=data["source"], input_dir=data["input_dir"], output=data["output"],
                   windows=tuple(Window.from_dict(w) for w in data.get("windows", [])),
                   spacing=tuple(data["spacing"]) if data.get("spacing") else None,
                   size=tuple(data["size"]) if data.get("size") else None,
                   slices=data.get("slices", "all"), keep_hu=bool(data.get("keep_hu", False)),
                   cases=tuple(data["cases"]) if data.get("cases") else None,
                   workers=int(data.get("workers", 1)), dask=data.get("dask"), overwrite=bool(data.get("overwrite", False)),
                   strict=bool(data.get("strict", False)),
                   split=SplitConfig.from_dict(data["split"]) if "split" in data else SplitConfig(),
                   source_options=dict(data.get("source_options") or {}), folds=data.get("folds"))


_MANIFEST_ENTRY_KEYS = ("case_id", "status", "reason", "slices", "bytes_written", "seconds", "quirks", "inputs",
                       "split")


@dataclass(frozen=True, kw_only=True)
class ConversionOutcome(CaseOutcome):
    """What happened to one case in a run; ``status``: converted | existing | skipped."""

    slices: int = 0
    bytes_written: int = 0
    quirks: tuple[str, ...] = ()
    inputs: tuple[dict, ...] = ()
    split: str = ""

    @classmethod
    def from_store(cls, record: CaseRecord, status: str, split: str | None = None) -> "ConversionOutcome":
        """The outcome of a case found complete in the store, from its own record."""
        return cls(case_id=record.case_id, status=status, slices=record.num_slices,
                   split=split or record.split, quirks=tuple(record.quirks))

    def to_dict(self) -> dict:
        """The manifest entry, in its key order (the base class's fields came first before it was shared)."""
        data = dataclasses.asdict(self) | {"quirks": list(self.quirks), "inputs": list(self.inputs)}
        return {key: data[key] for key in _MANIFEST_ENTRY_KEYS}


@dataclass(frozen=True, kw_only=True)
class ConversionReport:
    """The end-of-run summary."""

    store: str
    outcomes: tuple[ConversionOutcome, ...]
    seconds: float

    def with_status(self, status: str) -> list[ConversionOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def slices_written(self) -> int:
        return sum(o.slices for o in self.with_status("converted"))

    @property
    def bytes_written(self) -> int:
        return sum(o.bytes_written for o in self.with_status("converted"))

    def lines(self) -> list[str]:
        converted, existing, skipped = (self.with_status(s) for s in ("converted", "existing", "skipped"))
        rate = self.slices_written / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.store}: {len(converted)} converted, {len(existing)} already complete, "
                 f"{len(skipped)} skipped; {self.slices_written} slices in {self.seconds:.1f} s "
                 f"({rate:.0f} slices/s), {self.bytes_written / 1e6:.1f} MB written"]
        lines += [f"  skipped {o.case_id}: {o.reason}" for o in skipped]
        return lines


def convert_case(ref: CaseRef, config: ConvertConfig, split: str, windows: tuple[Window, ...]) -> ConversionOutcome:
    """Load, resample, window and store one case, as its one writer. Raises CaseInputError for unusable input.

    Another run converting the same case into the same store holds the case's lock; this
    one waits, then finds the case whole and leaves it ('existing').
    """
    store = SliceStore.open(config.output, mode="a")
    with store.case_lock(ref.case_id):
        store = SliceStore.open(config.output, mode="a")  # what the other writer left
        if ref.case_id in store and store.case_problem(ref.case_id) is None:
            return ConversionOutcome.from_store(store.record(ref.case_id), "existing", split)
        return _convert_locked(ref, config, split, windows, store)


def _convert_locked(ref: CaseRef, config: ConvertConfig, split: str, windows: tuple[Window, ...],
                    store: SliceStore) -> ConversionOutcome:
    """Stream the case into the store slab by slab (whole only to resample or select slices): each label
    slice is computed once, counted and written; each slab windowed while the next is read."""
    started = time.perf_counter()
    source = get_source(config.source, config.source_options)
    if config.spacing or config.size or config.slices != "all":
        stream, canonical_geometry, selected = selected_stream(source, ref, config.spacing, config.size, config.slices)
    else:
        stream = source.stream(ref)
        canonical_geometry, selected = stream.geometry, np.arange(stream.geometry.shape[0])
    names = [spec.name for spec in stream.label_specs]
    lesion_label = source.manifest.lesion_label if source.manifest.lesion_label in names else None
    z_all = stream.geometry.z_positions()
    windows = tuple(windows) + tuple(stream.windows)
    quirks = tuple(f"{q.id}: {q.description}" for q in source.manifest.quirks_of(ref.case_id))
    lesion_pixels = np.zeros(len(selected), dtype=np.int64)  # counted as the slabs go by
    record = CaseRecord(
        case_id=ref.case_id, source=config.source, patient_id=ref.patient_id, split=split,
        geometry=stream.geometry, canonical_geometry=canonical_geometry,
        source_grid=stream.source_grid, slice_indices=tuple(int(i) for i in selected),
        z_positions=tuple(z_all[i] for i in selected), windows=windows,
        labels=stream.label_specs, lesion_label=lesion_label,
        lesion_pixels=(0,) * len(selected), has_hu=config.keep_hu, quirks=quirks,
        parameters=config.content_parameters(),
    )
    slabs = store_slabs(stream, windows, lesion_label, lesion_pixels, config.keep_hu)

    def final() -> CaseRecord:  # once every slab is written: a stream may complete its annotations
        annotations = source.adapt_annotations(stream.annotations, before=canonical_geometry,
                                               after=stream.geometry, rows=selected)
        return dataclasses.replace(record, lesion_pixels=tuple(int(n) for n in lesion_pixels),
                                   annotations=annotations)

    written = store.write_case_slabs(record, read_ahead(slabs), final=final)
    return ConversionOutcome(case_id=ref.case_id, status="converted", slices=len(selected), bytes_written=written,
                             seconds=time.perf_counter() - started, quirks=quirks, split=split,
                             inputs=tuple({**f.to_dict(), "path": public_path(f.path)} for f in stream.inputs()))


def _convert_guarded(job: tuple[CaseRef, str], config: ConvertConfig) -> ConversionOutcome:
    """convert_case of ``job`` (the case and its split), with a failure of this case as a 'skipped' outcome.

    A full or read-only store (StoreWriteError) is raised: fatal to the run. Other
    errors of ours that are not about the case's input (a store problem) are raised too.
    """
    ref, split = job
    return run_guarded(lambda: convert_case(ref, config, split, config.windows),
                       lambda reason: ConversionOutcome(case_id=ref.case_id, status="skipped", reason=reason,
                                                        split=split),
                       skip=(CaseInputError, ValueError, OSError, MemoryError), fatal=(StoreWriteError,),
                       bug=functools.partial(_bug_reason, ref))


def _bug_reason(ref: CaseRef, exc: BaseException) -> str:
    if isinstance(exc, LesionkitError):  # a store problem: not this case's
        raise exc
    where = Path(ref.root) / ref.files[0][1] if ref.files else ref.case_id
    return f"{where}: unexpected {type(exc).__name__} ({exc}); a bug in ctprep, please report it with this line"


def _open_store(config: ConvertConfig, created_by: str) -> SliceStore:
    # Under the store's lock: two runs starting together must not both create (and wipe) it.
    with store_lock(config.output):
        if SliceStore.exists(config.output) and not config.overwrite:
            store = SliceStore.open(config.output, mode="a")
            store.check_parameters(config.content_parameters())
            return store
        return SliceStore.create(config.output, parameters=config.content_parameters(), created_by=created_by,
                                 overwrite=config.overwrite)


def convert_dataset(config: ConvertConfig, *, progress: bool = True,
                    created_by: str | None = None,
                    on_outcome: Callable[[ConversionOutcome], None] | None = None) -> ConversionReport:
    """Convert ``config.input_dir`` into the store ``config.output``; see the module docstring."""
    started = time.perf_counter()
    source = get_source(config.source, config.source_options)
    root = Path(config.input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    source.check_conversion(config)
    refs = source.discover(root)
    if not refs:
        raise CaseInputError(root, f"no {config.source} cases found ({source.description})")
    if config.cases:
        known = {r.case_id for r in refs}
        unknown = sorted(set(config.cases) - known)
        if unknown:
            raise CaseInputError(root, f"--cases not found in the input: {', '.join(unknown)}")
        refs = [r for r in refs if r.case_id in set(config.cases)]
    refs, duplicates = refuse_duplicate_ids(refs)  # before anything is written
    refs, too_long = refuse_long_ids(refs)
    duplicates |= too_long
    if not config.windows:
        config = dataclasses.replace(config, windows=source.manifest.windows())
    if config.dask or config.workers > 1:
        check_shared(config.output, f"--dask {config.dask}" if config.dask else f"--workers {config.workers}")
    fatal: StoreWriteError | None = None
    # Where cases run (first: local workers fork before zarr starts threads). On dask each
    # case is one task; workers write their case straight into the store (a path every
    # worker can reach) and this process consolidates index and manifest at the end, as
    # with the local pool. A task whose worker dies is retried by the scheduler on another
    # worker; its half-written case stays invisible and is rewritten.
    with case_pool(config.workers, config.dask, preload=["ctprep.convert"]) as pool:
        store = _open_store(config, created_by or command_line())
        splits = {r.case_id: r.split or assign_split(r.patient_id, config.split, source.manifest.official_split)
                  for r in refs}
        complete = _whole_cases(store)
        outcomes: dict[str, ConversionOutcome] = {}
        previous = store.manifest().get("cases", {})
        for ref in refs:
            if ref.case_id in complete:
                # The case's own record, not the previous manifest: a killed run never wrote a manifest.
                outcomes[ref.case_id] = dataclasses.replace(ConversionOutcome.from_store(
                    store.record(ref.case_id), "existing", splits[ref.case_id]),
                    inputs=previous.get(ref.case_id, {}).get("inputs") or _inputs_again(source, ref))
        for case_id, reason in duplicates.items():
            log.error("skipped %s: %s", case_id, reason)
            outcomes[case_id] = ConversionOutcome(case_id=case_id, status="skipped", reason=reason)
        todo = [r for r in refs if r.case_id not in complete]
        try:
            for outcome in _run(todo, config, splits, progress, pool):
                outcomes[outcome.case_id] = outcome
                for quirk in outcome.quirks:
                    log.warning("quirk %s: %s", outcome.case_id, quirk)
                if outcome.status == "skipped":
                    log.error("skipped %s: %s", outcome.case_id, outcome.reason)
                if on_outcome:
                    on_outcome(outcome)
        except StoreWriteError as exc:  # disk full ...: every next case would fail the same way
            fatal = exc
    ordered = tuple(outcomes[r.case_id] for r in refs if r.case_id in outcomes)
    ordered += tuple(outcomes[case_id] for case_id in sorted(duplicates))
    report = ConversionReport(store=str(config.output), outcomes=ordered, seconds=time.perf_counter() - started)
    redact = Redactor(root, (rel for ref in refs for _, rel in ref.files))
    if fatal is None:
        _consolidate(store, config, source, report, previous, redact)
        return report
    _stop_on_full_store(fatal, store, config, source, report, previous, redact)


def _inputs_again(source, ref: CaseRef) -> tuple[dict, ...]:
    """The public inputs of a case a killed run finished before writing its manifest (records keep none)."""
    try:
        return tuple({**f.to_dict(), "path": public_path(f.path)} for f in source.load(ref).inputs)
    except LesionkitError as exc:
        log.warning("%s: inputs not listed in the manifest (%s)", ref.case_id, exc)
        return ()


def _whole_cases(store: SliceStore) -> set[str]:
    """The complete cases that are whole on disk; a damaged one is logged and redone by this run."""
    whole = set()
    for case_id in store.case_ids():
        if problem := store.case_problem(case_id):
            log.warning("redoing %s: %s", case_id, problem)
        else:
            whole.add(case_id)
    return whole


def _run(todo: Sequence[CaseRef], config: ConvertConfig, splits: dict[str, str], progress: bool,
         pool: cf.Executor | None):
    jobs = [(ref, splits[ref.case_id]) for ref in todo]
    return run_cases(jobs, functools.partial(_convert_guarded, config=config), pool=pool,
                     lost=functools.partial(_lost_result, config), name=lambda job: job[0].case_id,
                     fatal=(StoreWriteError,), progress=progress, desc=f"converting {config.source}")


def _lost_result(config: ConvertConfig, job: tuple[CaseRef, str], exc: BaseException) -> ConversionOutcome:
    """The outcome of a case whose worker failed: converted if the case reached the store
    complete (when a process pool breaks, a healthy worker's finished case loses only its
    result), otherwise skipped with the reason."""
    ref, split = job
    try:
        store = SliceStore.open(config.output)
        if ref.case_id in store:
            return ConversionOutcome.from_store(store.record(ref.case_id), "converted", split)
    except (OSError, StoreError):
        pass
    return ConversionOutcome(case_id=ref.case_id, status="skipped", split=split,
                             reason=f"worker failed: {type(exc).__name__}: {exc}")


def _stop_on_full_store(fatal: StoreWriteError, store: SliceStore, config: ConvertConfig, source,
                        report: ConversionReport, previous: dict, redact: Redactor) -> None:
    """Consolidate what was converted (the failed case is gone, its space freed), then raise one clear error."""
    try:
        _consolidate(store, config, source, report, previous, redact)
        kept = "the index and manifest list them"
    except Exception as exc:  # the store refuses this too (full, or an object store gone)
        if not (isinstance(exc, OSError) or is_storage_failure(exc)):
            raise
        kept = "readers find them; the index and manifest are written by the re-run"
    try:  # from the store: a case another worker had in flight may have finished meanwhile
        done = len(SliceStore.open(config.output).case_ids())
    except (OSError, StoreError):
        done = len(report.with_status("converted")) + len(report.with_status("existing"))
    raise StoreWriteError(fatal.errno, f"{fatal}; the run stopped: {done} complete case(s) are kept ({kept}); "
                                       f"{_remedy(fatal)} and re-run the same command to resume") from fatal


def _remedy(fatal: StoreWriteError) -> str:
    return "make the store reachable" if isinstance(fatal, StoreUnreachableError) else "free space"


def _consolidate(store: SliceStore, config: ConvertConfig, source, report: ConversionReport,
                 previous: dict, redact: Redactor) -> None:
    """Index and manifest from every complete case in the store, this run's and concurrent runs'.

    Under the store's lock, re-reading the store: another run (other --cases) may have
    added cases and its own manifest entries since this one opened it.
    """
    with store.lock():
        store = SliceStore.open(config.output, mode="a")
        latest = store.manifest().get("cases", {})
        store.rebuild_index()
        manifest = build_manifest(store, config, source, report, {**previous, **latest}, redact)
        if folds := config.folds or store.manifest().get("folds", {}).get("k"):  # kept by later runs
            manifest["folds"] = fold_table(store.records(), int(folds), config.split.seed)
        store.set_manifest(manifest)
        write_json_atomic(manifest_path(config.output), manifest)


def build_manifest(store: SliceStore, config: ConvertConfig, source, report: ConversionReport,
                   previous: dict, redact: Redactor) -> dict:
    """The manifest; input paths in it are public (ctprep/public_paths.py), messages redacted."""
    cases = dict(previous)  # cases converted by earlier runs keep their entries
    converted_now = {o.case_id for o in report.outcomes if o.status == "converted"}
    for outcome in report.outcomes:
        entry = outcome.to_dict() | {"reason": redact(outcome.reason or "")}
        if outcome.status == "existing":  # in the store: listed as converted, with any earlier details
            entry = {**entry, **previous.get(outcome.case_id, {}), "status": "converted"}
        cases[outcome.case_id] = entry
    complete = set(store.case_ids())
    for case_id in sorted(complete - set(cases)):  # from a concurrent run whose manifest entry is not written yet
        cases[case_id] = ConversionOutcome.from_store(store.record(case_id), "converted").to_dict()
    for case_id, entry in cases.items():  # a case that failed now but exists from before stays listed as such
        if case_id in complete and entry.get("status") == "skipped":
            entry["status"] = "converted"
        if case_id in complete and ("checksum" not in entry or case_id in converted_now):
            # What `ctprep verify` holds the case's chunks against (recorded once, when written).
            recorded = store.recorded_checksums(case_id)
            entry["checksum"] = checksums_digest(recorded)
            entry["arrays"] = sorted(recorded)
    return {
        "format": "lesionkit-conversion-manifest",
        "lesionkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "dataset": source.manifest.summary(),
        "parameters": config.content_parameters(),
        "libraries": library_versions(),
        "split": {**config.split.to_dict(), "official": source.manifest.official_split is not None,
                  "patients": {e.get("case_id", k): e.get("split") for k, e in sorted(cases.items())
                               if e.get("split")}},
        "cases": dict(sorted(cases.items())),
        "summary": {"converted": len(complete),
                    "skipped": sorted(k for k, e in cases.items() if e.get("status") == "skipped")},
    }


__all__ = ["ConvertConfig", "ConversionReport", "ConversionOutcome", "convert_dataset", "convert_case", "StoreError"]
