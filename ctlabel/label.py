"""The per-lesion job runner behind ``ctlabel trimap`` and ``ctlabel softmask``.

For each case of a store: find its lesions (:mod:`ctlabel.lesions`), cut a crop around each,
build the crop's trimap and, for soft masks, its alpha by closed-form matting: one job per
lesion (:class:`LesionJob`, :func:`run_lesion_job`). With ``workers`` > 1, worker processes
take whole cases, so reading and writing run in parallel too. With ``dask`` (a scheduler
address or ``local[:N]``), each lesion is one task on dask.distributed: this process reads
each case's crops, submits its lesion jobs and writes the case's labels once they are all
back (workers need no access to the store). A case's results are pasted
into whole-case labels written with ``SliceStore.write_label`` (atomic): ``trimap_<name>`` (uint8, 0 / 128 / 255)
and ``soft_<name>`` (float32 alpha in [0, 1]). Where crops of lesions on one slice overlap,
the larger value wins. Outside every crop a trimap is background and alpha is 0.

Resumable: a case whose output labels exist with the same parameters (label attribute
``ctlabel.parameters``) and whose write completed (its checksums recorded in the case) is
left alone; other parameters are refused unless ``overwrite``. Every way of running gives
the same bytes (GrabCut's random state is reset per lesion, results are pasted in lesion order).
A lesion that cannot be labelled (malformed RECIST, a trimap without foreground or
background, a failed solve) is skipped and reported, in the summary and in the labels'
attributes; a case that cannot be read is skipped; the others go on.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ctlabel.errors import LesionError
from ctlabel.lesions import Lesion, component_lesions, crop_box, recist_lesions
from ctlabel.matting import MattingParams, estimate_alpha, load_pymatting, matting_image
from ctlabel.trimap import (
    TRIMAP_VALUES,
    Recist,
    TrimapParams,
    band_width_mm,
    require_foreground_and_background,
    trimap_from_mask,
    trimap_from_readers,
    trimap_from_recist,
)
from lkbase import __version__
from ctprep.errors import CaseNotFoundError, LesionkitError, StoreParameterError
from lkbase.executor import dask_executor
from ctprep.lookup import LazySlices
from ctprep.store import SliceStore, check_shared

SOURCES = ("recist", "readers", "mask")
DEFAULT_NAMES = {"recist": "recist", "readers": "nodule"}  # --from mask: the label's own name
ATTRIBUTE_KEY = "ctlabel"
MAX_REPORTED = 20  # skipped lesions listed one per line in the summary; all are in the attributes
# --dask: lesion jobs submitted and not yet back. Bounds what this process holds (a job is its
# crop, ~10-800 kB) while keeping up to this many worker threads busy.
MAX_LESIONS_IN_FLIGHT = 256


@dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """What ``ctlabel trimap`` / ``softmask`` do; :meth:`trimap_parameters` must match to resume."""

    store: str
    source: str  # recist | readers | mask
    name: str | None = None  # outputs trimap_<name>, soft_<name>; default recist, nodule or the mask label
    label: str | None = None  # --from mask: the binary label (default: the store's lesion label)
    intersection: str = "nodule_all"  # --from readers: where all readers agree
    union: str = "nodule_any"  # --from readers: where any reader marked
    matting: bool = True  # False: trimaps only
    trimap: TrimapParams = field(default_factory=TrimapParams)
    matting_params: MattingParams = field(default_factory=MattingParams)
    cases: tuple[str, ...] | None = None
    workers: int = 1
    dask: str | None = None  # "local", "local:N" or a scheduler address: one dask.distributed task per lesion
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"--from {self.source!r}: expected one of {', '.join(SOURCES)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, found {self.workers}")
        if self.dask is not None and self.workers > 1:
            raise ValueError(f"--workers {self.workers} and --dask {self.dask}: choose one (local processes "
                             "or a dask cluster)")
        if self.dask is not None and not self.dask.strip():
            raise ValueError("--dask: expected a scheduler address (tcp://host:8786) or local[:N]")
        if self.name is not None and (not self.name or "/" in self.name or self.name != self.name.strip()
                                      or self.name.startswith((".", "_"))):
            raise ValueError(f"--name {self.name!r}: expected a plain label name (no '/', no leading '.' or '_')")

    @property
    def output_name(self) -> str:
        if self.name:
            return self.name
        if self.source == "mask":
            if not self.label:
                raise ValueError("--from mask needs --label (or a store whose cases name a lesion label)")
            return self.label
        return DEFAULT_NAMES[self.source]

    @property
    def trimap_label(self) -> str:
        return f"trimap_{self.output_name}"

    @property
    def soft_label(self) -> str:
        return f"soft_{self.output_name}"

    def evidence(self) -> dict:
        if self.source == "recist":
            return {"annotations": "lesions"}
        if self.source == "readers":
            return {"intersection": self.intersection, "union": self.union}
        return {"label": self.label}

    def trimap_parameters(self) -> dict:
        """What shapes the trimap: stored with it, compared on resume."""
        return {"from": self.source, "evidence": self.evidence(), "trimap": self.trimap.to_dict()}

    def soft_parameters(self) -> dict:
        return {**self.trimap_parameters(), "matting": self.matting_params.to_dict()}

    def to_dict(self) -> dict:
        return {"store": self.store, "source": self.source, "name": self.name, "label": self.label,
                "intersection": self.intersection, "union": self.union, "matting": self.matting,
                "trimap": self.trimap.to_dict(), "matting_params": self.matting_params.to_dict(),
                "cases": list(self.cases) if self.cases else None, "workers": self.workers, "dask": self.dask,
                "overwrite": self.overwrite}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LabelConfig":
        data = dict(data)
        data["trimap"] = TrimapParams.from_dict(data.get("trimap") or {})
        data["matting_params"] = MattingParams.from_dict(data.get("matting_params") or {})
        data["cases"] = tuple(data["cases"]) if data.get("cases") else None
        return cls(**data)


# ---- one lesion ------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LesionJob:
    """Everything one lesion's trimap and alpha need (small, picklable: what a worker receives)."""

    case_id: str
    lesion_id: str
    z: int
    crop: tuple[int, int, int, int]  # (y0, y1, x0, x1) on the stored slice
    image: np.ndarray  # (h, w, 3) uint8, matting_image of the crop
    spacing: tuple[float, float]  # in-plane (y, x) mm
    source: str
    recist: Recist | None = None  # crop coordinates
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)  # crops: mask | intersection, union; target
    trimap_params: TrimapParams = field(default_factory=TrimapParams)
    matting_params: MattingParams | None = None  # None: trimap only


@dataclass(frozen=True, kw_only=True)
class LesionResult:
    """A job's outcome: the crop's trimap and alpha when done, the reason when skipped."""

    case_id: str
    lesion_id: str
    z: int
    crop: tuple[int, int, int, int]
    status: str  # done | skipped
    reason: str = ""
    trimap: np.ndarray | None = None
    alpha: np.ndarray | None = None
    trimap_ms: float = 0.0
    matting_ms: float = 0.0


def lesion_trimap(job: LesionJob) -> np.ndarray:
    """The job's trimap from its evidence, checked to have foreground (in the lesion) and background."""
    params, name = job.trimap_params, f"{job.case_id}/{job.lesion_id}"
    target = job.masks.get("target")
    if job.source == "recist":
        if job.recist is None:
            raise LesionError(name, "no RECIST axes")
        trimap = trimap_from_recist(job.image, job.recist.long, job.recist.short, job.spacing, params=params,
                                    lesion=name)
    elif job.source == "mask":
        band = band_width_mm(target, job.spacing, params)
        trimap = trimap_from_mask(job.masks["mask"], job.spacing, band_mm=band, params=params)
    else:
        trimap = trimap_from_readers(job.masks["intersection"], job.masks["union"], job.spacing,
                                     margin_mm=params.readers_margin_mm)
    require_foreground_and_background(trimap, name, region=target)
    return trimap


def run_lesion_job(job: LesionJob) -> LesionResult:
    """Trimap (and alpha) of one lesion; any failure of this lesion becomes a 'skipped' result."""
    common = dict(case_id=job.case_id, lesion_id=job.lesion_id, z=job.z, crop=job.crop)
    started = time.perf_counter()
    try:
        trimap = lesion_trimap(job)
        built = time.perf_counter()
        alpha = None
        if job.matting_params is not None:
            alpha = estimate_alpha(job.image, trimap, params=job.matting_params,
                                   lesion=f"{job.case_id}/{job.lesion_id}")
        solved = time.perf_counter()
    except LesionError as exc:
        return LesionResult(**common, status="skipped", reason=exc.reason)
    except (ValueError, ArithmeticError, MemoryError) as exc:
        return LesionResult(**common, status="skipped", reason=f"{type(exc).__name__}: {exc}")
    return LesionResult(**common, status="done", trimap=trimap, alpha=alpha,
                        trimap_ms=(built - started) * 1e3, matting_ms=(solved - built) * 1e3)


# ---- outcomes --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LesionOutcome:
    """One lesion in the report and in the labels' attributes."""

    lesion_id: str
    z: int | None
    status: str  # done | skipped
    reason: str = ""
    crop: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1)
    trimap_ms: float = 0.0
    matting_ms: float = 0.0

    def to_dict(self) -> dict:
        return {"lesion_id": self.lesion_id, "z": self.z, "status": self.status, "reason": self.reason,
                "crop": list(self.crop) if self.crop else None}

    @classmethod
    def from_result(cls, result: LesionResult) -> "LesionOutcome":
        return cls(lesion_id=result.lesion_id, z=result.z, status=result.status, reason=result.reason,
                   crop=result.crop, trimap_ms=result.trimap_ms, matting_ms=result.matting_ms)


@dataclass(frozen=True, kw_only=True)
class CaseOutcome:
    case_id: str
    status: str  # labelled | existing | skipped
    reason: str = ""
    lesions: tuple[LesionOutcome, ...] = ()
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class LabelReport:
    """The end-of-run summary."""

    store: str
    labels: tuple[str, ...]
    outcomes: tuple[CaseOutcome, ...]
    seconds: float

    def with_status(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    def lesions(self, status: str) -> list[tuple[str, LesionOutcome]]:
        return [(o.case_id, lesion) for o in self.outcomes for lesion in o.lesions if lesion.status == status]

    def summary_lines(self) -> list[str]:
        labelled, existing, skipped = (self.with_status(s) for s in ("labelled", "existing", "skipped"))
        done, failed = self.lesions("done"), self.lesions("skipped")
        rate = len(done) / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.store}: {len(labelled)} cases labelled, {len(existing)} already done, {len(skipped)} "
                 f"skipped; {len(done)} lesions labelled, {len(failed)} skipped in {self.seconds:.1f} s "
                 f"({rate:.1f} lesions/s); labels {', '.join(self.labels)}"]
        if done:
            trimap = float(np.median([lesion.trimap_ms for _, lesion in done]))
            matting = float(np.median([lesion.matting_ms for _, lesion in done]))
            lines.append(f"  per lesion (median): trimap {trimap:.1f} ms, matting {matting:.1f} ms")
        lines += [f"  skipped case {o.case_id}: {o.reason}" for o in skipped]
        lines += [f"  skipped lesion {case}/{lesion.lesion_id}"
                  f"{'' if lesion.z is None else f' (z={lesion.z})'}: {lesion.reason}"
                  for case, lesion in failed[:MAX_REPORTED]]
        if len(failed) > MAX_REPORTED:
            lines.append(f"  ... and {len(failed) - MAX_REPORTED} more skipped lesions "
                         f"(listed in the labels' attributes)")
        return lines


# ---- one case --------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CaseWork:
    """A case read and cut into lesion jobs; ``problems`` are lesions rejected before any job."""

    case_id: str
    shape: tuple[int, int, int]
    jobs: tuple[LesionJob, ...]
    problems: tuple[LesionOutcome, ...]
    started: float


def prepare_case(store: SliceStore, case_id: str, config: LabelConfig) -> CaseWork:
    """Read what the case's lesions need and build one job per lesion (raises for an unusable case)."""
    started = time.perf_counter()
    record = store.record(case_id)
    spacing = tuple(float(s) for s in record.geometry.spacing[1:])
    shape = (record.num_slices, *record.geometry.shape[1:])
    problems: list[LesionOutcome] = []
    if config.source == "recist":
        lesions, errors = recist_lesions(record)
        problems = [LesionOutcome(lesion_id=e.lesion, z=None, status="skipped", reason=e.reason) for e in errors]
        zs = sorted({lesion.z for lesion in lesions})
        batch = store.read_slices([(case_id, z) for z in zs]) if zs else None
        images = {z: batch.image[i] for i, z in enumerate(zs)} if batch is not None else {}
        jobs = [_recist_job(case_id, lesion, images[lesion.z], spacing, config) for lesion in lesions]
    else:
        names = [config.label] if config.source == "mask" else [config.intersection, config.union]
        available = store.label_names(case_id)
        missing = [n for n in names if n not in available]
        if missing:
            raise LookupError(f"case {case_id} has no label {missing[0]!r} (labels: {', '.join(available) or 'none'})")
        zs = _slices_to_read(record, names)
        jobs = []
        if zs:
            batch = store.read_slices([(case_id, z) for z in zs], labels=names)
            for name in names:
                _require_binary(batch.labels[name], case_id, name)
            jobs = _component_jobs(case_id, zs, batch, names, spacing, config)
    return CaseWork(case_id=case_id, shape=shape, jobs=tuple(jobs), problems=tuple(problems), started=started)


def _slices_to_read(record, names: Sequence[str]) -> list[int]:
    """Every stored slice, or only those with lesion pixels when the evidence is the store's lesion label."""
    if record.lesion_label is not None and record.lesion_label == names[-1]:
        return [z for z, n in enumerate(record.lesion_pixels) if n > 0]
    return list(range(record.num_slices))


def _require_binary(label: np.ndarray, case_id: str, name: str) -> None:
    if label.dtype != np.uint8 or label.max(initial=0) > 1:
        values = np.unique(label)[:5].tolist()
        raise ValueError(f"case {case_id}: label {name!r} is not a binary 0/1 mask "
                         f"({label.dtype}, values {values}...)")


def _crop_margin_mm(size_mm: float, needed_mm: float, params: TrimapParams) -> float:
    return max(params.min_crop_margin_mm, params.crop_margin_fraction * size_mm, needed_mm)


def _recist_job(case_id: str, lesion: Lesion, image: np.ndarray, spacing: tuple[float, float],
                config: LabelConfig) -> LesionJob:
    params = config.trimap
    pixel = float(np.sqrt(spacing[0] * spacing[1]))
    long_mm = lesion.recist.diameters_mm(spacing)[0]
    box_mm = max(params.box_margin * long_mm, params.min_box_margin_mm)
    margin = _crop_margin_mm(lesion.size_px * pixel, box_mm + 3 * pixel, params)
    y0, y1, x0, x1 = crop_box(lesion.box, image.shape[1:], spacing, margin)
    return LesionJob(case_id=case_id, lesion_id=lesion.lesion_id, z=lesion.z, crop=(y0, y1, x0, x1),
                     image=matting_image(image[:, y0:y1, x0:x1]), spacing=spacing, source="recist",
                     recist=lesion.recist.shifted(x0, y0), trimap_params=params,
                     matting_params=config.matting_params if config.matting else None)


def _component_jobs(case_id: str, zs: Sequence[int], batch, names: Sequence[str],
                    spacing: tuple[float, float], config: LabelConfig) -> list[LesionJob]:
    """One job per connected component of the (union) mask on each slice."""
    import cv2

    params = config.trimap
    pixel = float(np.sqrt(spacing[0] * spacing[1]))
    outline = batch.labels[names[-1]]  # the mask, or the readers' union
    jobs = []
    for i, z in enumerate(zs):
        lesions = component_lesions(outline[i:i + 1], [z])
        if not lesions:
            continue
        _, components = cv2.connectedComponents((outline[i] != 0).astype(np.uint8), connectivity=8)
        for lesion in lesions:
            target = components == lesion.component
            if config.source == "mask":
                needed = band_width_mm(target, spacing, params)
            else:
                needed = params.readers_margin_mm
            margin = _crop_margin_mm(lesion.size_px * pixel, needed + 3 * pixel, params)
            y0, y1, x0, x1 = crop_box(lesion.box, outline.shape[1:], spacing, margin)
            crops = {name: batch.labels[name][i, y0:y1, x0:x1] for name in names}
            masks = ({"mask": crops[names[0]]} if config.source == "mask"
                     else {"intersection": crops[names[0]], "union": crops[names[1]]})
            masks["target"] = target[y0:y1, x0:x1]
            jobs.append(LesionJob(case_id=case_id, lesion_id=lesion.lesion_id, z=z, crop=(y0, y1, x0, x1),
                                  image=matting_image(batch.image[i][:, y0:y1, x0:x1]), spacing=spacing,
                                  source=config.source, masks=masks, trimap_params=params,
                                  matting_params=config.matting_params if config.matting else None))
    return jobs


def pasted(shape: tuple[int, int, int], dtype, results: Sequence[LesionResult], attribute: str) -> LazySlices:
    """The whole-case volume of the results' crops (``trimap`` or ``alpha``), built slice by slice.

    Overlapping crops keep the larger value: foreground over unknown over background, and
    the higher alpha.
    """
    by_slice: dict[int, list[LesionResult]] = collections.defaultdict(list)
    for result in results:
        if getattr(result, attribute) is not None:
            by_slice[result.z].append(result)

    def make(z: int) -> np.ndarray:
        plane = np.zeros(shape[1:], dtype=dtype)
        for result in by_slice.get(z, ()):
            y0, y1, x0, x1 = result.crop
            np.maximum(plane[y0:y1, x0:x1], getattr(result, attribute), out=plane[y0:y1, x0:x1])
        return plane

    return LazySlices(shape, dtype, make)


def finish_case(store: SliceStore, work: CaseWork, results: Sequence[LesionResult],
                config: LabelConfig) -> CaseOutcome:
    """Write the case's labels (trimap, then soft mask) and return its outcome."""
    lesions = tuple(LesionOutcome.from_result(r) for r in results) + work.problems
    listed = [lesion.to_dict() for lesion in lesions]
    done = [r for r in results if r.status == "done"]
    common = {"lesionkit_version": __version__, "lesions": listed}
    store.write_label(work.case_id, config.trimap_label, pasted(work.shape, np.uint8, done, "trimap"),
                      attributes={ATTRIBUTE_KEY: {"kind": "trimap", "values": TRIMAP_VALUES,
                                                  "parameters": _json(config.trimap_parameters()), **common}})
    if config.matting:
        store.write_label(work.case_id, config.soft_label, pasted(work.shape, np.float32, done, "alpha"),
                          attributes={ATTRIBUTE_KEY: {"kind": "soft", "trimap": config.trimap_label,
                                                      "parameters": _json(config.soft_parameters()), **common}})
    return CaseOutcome(case_id=work.case_id, status="labelled", lesions=lesions,
                       seconds=time.perf_counter() - work.started)


def _json(value):
    return json.loads(json.dumps(value))


# ---- resuming --------------------------------------------------------------------------------
def case_state(store: SliceStore, case_id: str, config: LabelConfig) -> tuple[str, str]:
    """("done" | "todo" | "conflict", detail): whether the case's outputs exist with these parameters."""
    wanted = [(config.trimap_label, config.trimap_parameters())]
    if config.matting:
        wanted.append((config.soft_label, config.soft_parameters()))
    present = set(store.label_names(case_id))
    recorded = store.recorded_checksums(case_id)
    state = "done"
    for label, parameters in wanted:
        if label not in present or (recorded and f"labels/{label}" not in recorded):
            # Absent, or renamed into place by a run killed before it recorded the label's
            # checksums in the case (so `ctprep verify` would not vouch for it): write it (again).
            state = "todo"
            continue
        made = store.label_attributes(case_id, label).get(ATTRIBUTE_KEY, {}).get("parameters")
        if made != _json(parameters):
            if not config.overwrite:
                return "conflict", f"case {case_id}: label {label} exists, made with other parameters " \
                                   f"({_difference(made, _json(parameters))})"
            state = "todo"
    return state, ""


def _difference(made, wanted) -> str:
    if not isinstance(made, dict):
        return "not made by ctlabel"
    flat_made, flat_wanted = _flatten(made), _flatten(wanted)
    keys = sorted(k for k in set(flat_made) | set(flat_wanted) if flat_made.get(k) != flat_wanted.get(k))
    return "; ".join(f"{k}: has {flat_made.get(k)!r}, asked {flat_wanted.get(k)!r}" for k in keys[:3])


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def resolve_label(store: SliceStore, config: LabelConfig, case_ids: Sequence[str]) -> LabelConfig:
    """--from mask without --label: the lesion label the store's cases name (all the same), else an error."""
    if config.source != "mask" or config.label:
        return config
    names = {store.record(c).lesion_label for c in case_ids}
    names.discard(None)
    if len(names) != 1:
        raise ValueError(f"{store.path}: --from mask needs --label NAME "
                         f"(the cases' lesion labels: {sorted(names) or 'none'})")
    return dataclasses.replace(config, label=names.pop())


# ---- the run ---------------------------------------------------------------------------------
def label_store(config: LabelConfig, *, progress: bool = True,
                on_case: Callable[[CaseOutcome], None] | None = None) -> LabelReport:
    """Build trimaps (and soft masks) for every lesion of ``config.store``; see the module docstring."""
    started = time.perf_counter()
    if config.workers > 1:  # workers reopen the store by its path (--dask workers never touch it)
        check_shared(config.store, f"--workers {config.workers}")
    if config.matting and not config.dask:
        load_pymatting()  # compile or load numba's cache once, before workers fork (they inherit the kernels)
    with _worker_pool(config.workers) as pool:  # before the store: zarr starts threads, forking then is unsafe
        store = SliceStore.open(config.store, mode="a")
        case_ids = store.case_ids()
        if config.cases:
            unknown = sorted(set(config.cases) - set(case_ids))
            if unknown:
                raise CaseNotFoundError(f"{store.path}: no case {', '.join(map(repr, unknown))}")
            case_ids = [c for c in case_ids if c in set(config.cases)]
        config = resolve_label(store, config, case_ids)
        states = {c: case_state(store, c, config) for c in case_ids}
        conflicts = [detail for state, detail in states.values() if state == "conflict"]
        if conflicts:
            more = f" (and {len(conflicts) - 1} more cases)" if len(conflicts) > 1 else ""
            raise StoreParameterError(f"{store.path}: {conflicts[0]}{more}; use --overwrite to replace them "
                                      "or --name to write beside them")
        outcomes = {c: CaseOutcome(case_id=c, status="existing") for c in case_ids if states[c][0] == "done"}
        todo = [c for c in case_ids if states[c][0] == "todo"]
        # A dask cluster is started (or joined) only when there is work for it.
        with dask_executor(config.dask) if config.dask and todo else contextlib.nullcontext() as cluster:
            run = _run_per_lesion(store, todo, config, cluster, progress) if cluster else \
                _run(store, todo, config, pool, progress)
            for outcome in run:
                outcomes[outcome.case_id] = outcome
                if on_case:
                    on_case(outcome)
    labels = (config.trimap_label,) + ((config.soft_label,) if config.matting else ())
    return LabelReport(store=str(config.store), labels=labels, outcomes=tuple(outcomes[c] for c in case_ids),
                       seconds=time.perf_counter() - started)


def label_case(store: SliceStore, case_id: str, config: LabelConfig) -> CaseOutcome:
    """Label one case: read it, run its lesion jobs one after the other, write its labels.

    Failures of the case itself (unreadable, no annotations, missing label) become a
    'skipped' outcome; failures of single lesions are listed in a 'labelled' one.
    """
    work = _prepare_guarded(store, case_id, config)
    if isinstance(work, CaseOutcome):
        return work
    return _finish_guarded(store, work, [run_lesion_job(job) for job in work.jobs], config)


def _prepare_guarded(store: SliceStore, case_id: str, config: LabelConfig) -> CaseWork | CaseOutcome:
    """prepare_case, with a failure of the case (unreadable, no annotations, missing label) as a 'skipped' outcome."""
    try:
        return prepare_case(store, case_id, config)
    except (LookupError, LesionkitError, ValueError, OSError, MemoryError) as exc:
        return CaseOutcome(case_id=case_id, status="skipped", reason=_reason(exc))


def _finish_guarded(store: SliceStore, work: CaseWork, results: Sequence[LesionResult],
                    config: LabelConfig) -> CaseOutcome:
    """finish_case, with a failed write as a 'skipped' outcome."""
    try:
        return finish_case(store, work, results, config)
    except (LesionkitError, ValueError, OSError, MemoryError) as exc:
        return CaseOutcome(case_id=work.case_id, status="skipped", reason=f"writing labels failed: {_reason(exc)}")


def _label_case_in_worker(store_path: str, case_id: str, config: LabelConfig) -> CaseOutcome:
    return label_case(SliceStore.open(store_path, mode="a"), case_id, config)


def _run(store: SliceStore, todo: Sequence[str], config: LabelConfig, pool, progress: bool) -> Iterator[CaseOutcome]:
    """The outcomes of ``todo``, in the order they finish.

    Workers take whole cases (read, lesion jobs, write): the store writes then run in
    parallel too. With them in the parent, its share (about 40% of the time on DeepLesion-like
    cases, zarr's per-array overhead) capped two workers at ~1.4x.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="case", desc=f"ctlabel {config.source}", file=sys.stderr,
               disable=not progress or None)
    counts = collections.Counter()
    try:
        if pool is None or len(todo) <= 1:
            for case_id in todo:
                bar.set_postfix_str(case_id)
                yield _counted(label_case(store, case_id, config), bar, counts)
            return
        futures = {pool.submit(_label_case_in_worker, str(store.path), case_id, config): case_id for case_id in todo}
        for future in cf.as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # a worker died (killed for memory, ...)
                outcome = CaseOutcome(case_id=futures[future], status="skipped",
                                      reason=f"worker failed: {type(exc).__name__}: {exc}")
            yield _counted(outcome, bar, counts)
    finally:
        bar.close()


@dataclass(kw_only=True)
class _OpenCase:
    """--dask bookkeeping: a case whose lesion jobs are out, and the results back so far (in job order)."""

    work: CaseWork
    results: list[LesionResult | None]
    waiting: int


def _run_per_lesion(store: SliceStore, todo: Sequence[str], config: LabelConfig, pool: cf.Executor,
                    progress: bool) -> Iterator[CaseOutcome]:
    """The outcomes of ``todo`` with one task per lesion (dask), in the order cases complete.

    This process reads each case's crops (:func:`prepare_case`) and submits its lesion
    jobs, at most MAX_LESIONS_IN_FLIGHT at a time; when a case's last job is back it
    writes the case's labels (:func:`finish_case`) with the results in job order, so the
    bytes equal a local run's. Workers only compute: they need no access to the store.
    The progress bar counts lesions as their futures complete.
    """
    from tqdm import tqdm

    bar = tqdm(total=0, unit="lesion", desc=f"ctlabel {config.source} (dask)", file=sys.stderr,
               disable=not progress or None)
    queue = collections.deque(todo)
    pending: dict[cf.Future, tuple[str, int]] = {}
    open_cases: dict[str, _OpenCase] = {}
    written = 0
    try:
        while queue or pending:
            while queue and len(pending) < MAX_LESIONS_IN_FLIGHT:
                work = _prepare_guarded(store, queue.popleft(), config)
                if isinstance(work, CaseOutcome):  # the case itself failed
                    yield work
                elif not work.jobs:  # nothing to compute: its (empty) labels are written now
                    yield _finish_guarded(store, work, [], config)
                else:
                    open_cases[work.case_id] = _OpenCase(work=work, results=[None] * len(work.jobs),
                                                         waiting=len(work.jobs))
                    pending.update({pool.submit(_lesion_task, job): (work.case_id, i)
                                    for i, job in enumerate(work.jobs)})
                    bar.total += len(work.jobs)
                    bar.refresh()
            if not pending:
                continue
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                case_id, i = pending.pop(future)
                case = open_cases[case_id]
                case.results[i] = _lesion_result(future, case.work.jobs[i])
                case.waiting -= 1
                bar.update()
                if case.waiting == 0:
                    del open_cases[case_id]
                    outcome = _finish_guarded(store, case.work, case.results, config)
                    written += 1
                    bar.set_postfix_str(f"cases {written}/{len(todo)} written")
                    yield outcome
    finally:
        for future in pending:
            future.cancel()
        bar.close()


def _lesion_task(job: LesionJob) -> LesionResult:
    """One lesion on a dask worker: OpenCV on one thread (dask's workers are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)
    return run_lesion_job(job)


def _lesion_result(future: cf.Future, job: LesionJob) -> LesionResult:
    """The future's LesionResult; a task that failed on the cluster (its worker died too often) is a skipped lesion."""
    try:
        return future.result()
    except Exception as exc:
        return LesionResult(case_id=job.case_id, lesion_id=job.lesion_id, z=job.z, crop=job.crop, status="skipped",
                            reason=f"worker failed: {type(exc).__name__}: {exc}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LesionkitError) or type(exc) in (LookupError, ValueError):
        return str(exc)
    if isinstance(exc, KeyError) and exc.args:  # str() of a KeyError quotes its message
        return f"KeyError: {exc.args[0]}"
    return f"{type(exc).__name__}: {exc}"


def _counted(outcome: CaseOutcome, bar, counts: collections.Counter) -> CaseOutcome:
    for lesion in outcome.lesions:
        counts[lesion.status] += 1
    bar.set_postfix_str(f"lesions {counts['done']} done, {counts['skipped']} skipped")
    bar.update()
    return outcome


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: OpenCV's own threads would compete with the other workers


@contextlib.contextmanager
def _worker_pool(workers: int):
    """A process pool for ``workers`` > 1 (else None), its workers started before this returns.

    Forked while this process has one thread (pymatting already loaded, so workers inherit
    it); if threads already run (zarr's), a forkserver is used instead.
    """
    if workers <= 1:
        yield None
        return
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")
    else:
        context = multiprocessing.get_context("forkserver")
        # The matting kernels too when they are loaded here: the server loads them once, its children inherit them.
        kernels = ["ctlabel._pymatting"] if "ctlabel._pymatting" in sys.modules else []
        context.set_forkserver_preload(["ctlabel.label", *kernels])
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        for future in [pool.submit(os.getpid) for _ in range(workers)]:
            future.result()
        yield pool
