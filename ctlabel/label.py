"""The labelling run behind ``ctlabel trimap`` and ``ctlabel softmask``: :func:`label_store`.

For each case of a store: find its lesions (:mod:`ctlabel.lesions`), cut a crop around each,
build the crop's trimap and, for soft masks, its alpha by closed-form matting: one job per
lesion (:mod:`ctlabel.jobs`); a case is read and written by :mod:`ctlabel.cases`. Cases run
on lkbase's per-case runner (:mod:`lkbase.runner`): with ``workers`` > 1, worker processes
take whole cases, so reading and writing run in parallel too. With ``dask`` (a scheduler
address or ``local[:N]``), each lesion is one task on dask.distributed
(:mod:`ctlabel.per_lesion`). Outputs: ``trimap_<name>`` and ``soft_<name>``
(:class:`ctlabel.config.LabelConfig`).

Resumable (:mod:`ctlabel.resume`): a case whose output labels exist with the same
parameters and whose write completed is left alone; other parameters are refused unless
``overwrite``. Every way of running gives the same bytes (GrabCut's random state is reset
per lesion, results are pasted in lesion order). A lesion that cannot be labelled
(malformed RECIST, a trimap without foreground or background, a failed solve) is skipped
and reported, in the summary and in the labels' attributes; a case that cannot be read is
skipped; the others go on.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import sys
import time
from typing import Callable, Iterator, Sequence

from ctlabel.cases import label_case
from ctlabel.config import LabelConfig
from ctlabel.matting import load_pymatting
from ctlabel.per_lesion import run_per_lesion
from ctlabel.report import LabelOutcome, LabelReport
from ctlabel.resume import case_state, require_evidence, resolve_label, selected_cases
from ctprep.errors import StoreParameterError
from ctprep.store import SliceStore, check_shared
from lkbase.executor import dask_executor
from lkbase.runner import run_cases, worker_pool

__all__ = ["LabelConfig", "label_store"]  # the API: configure a run, run it


def label_store(config: LabelConfig, *, progress: bool = True,
                on_case: Callable[[LabelOutcome], None] | None = None) -> LabelReport:
    """Build trimaps (and soft masks) for every lesion of ``config.store``; see the module docstring."""
    started = time.perf_counter()
    if config.workers > 1:  # workers reopen the store by its path (--dask workers never touch it)
        check_shared(config.store, f"--workers {config.workers}")
    if config.matting and not config.dask:
        load_pymatting()  # compile or load numba's cache once, before workers fork (they inherit the kernels)
    with _worker_pool(config.workers) as pool:  # before the store: zarr starts threads, forking then is unsafe
        store = SliceStore.open(config.store, mode="a")
        case_ids = selected_cases(store, config.cases)
        config = resolve_label(store, config, case_ids)
        require_evidence(store, config, case_ids)
        states = {c: case_state(store, c, config) for c in case_ids}
        _refuse_conflicts(store, [detail for state, detail in states.values() if state == "conflict"])
        outcomes = {c: LabelOutcome(case_id=c, status="existing") for c in case_ids if states[c][0] == "done"}
        todo = [c for c in case_ids if states[c][0] == "todo"]
        # A dask cluster is started (or joined) only when there is work for it.
        with dask_executor(config.dask) if config.dask and todo else contextlib.nullcontext() as cluster:
            run = run_per_lesion(store, todo, config, cluster, progress) if cluster else \
                _run(store, todo, config, pool, progress)
            for outcome in run:
                outcomes[outcome.case_id] = outcome
                if on_case:
                    on_case(outcome)
    labels = (config.trimap_label,) + ((config.soft_label,) if config.matting else ())
    return LabelReport(store=str(config.store), labels=labels, outcomes=tuple(outcomes[c] for c in case_ids),
                       seconds=time.perf_counter() - started)


def _refuse_conflicts(store: SliceStore, conflicts: Sequence[str]) -> None:
    if conflicts:
        more = f" (and {len(conflicts) - 1} more cases)" if len(conflicts) > 1 else ""
        raise StoreParameterError(f"{store.path}: {conflicts[0]}{more}; use --overwrite to replace them "
                                  "or --name to write beside them")


def _run(store: SliceStore, todo: Sequence[str], config: LabelConfig, pool,
         progress: bool) -> Iterator[LabelOutcome]:
    """The outcomes of ``todo``, in the order they finish (lkbase's :func:`~lkbase.runner.run_cases`).

    Workers take whole cases (read, lesion jobs, write): the store writes then run in
    parallel too. With them in the parent, its share (about 40% of the time on DeepLesion-like
    cases, zarr's per-array overhead) capped two workers at ~1.4x.
    """
    counts = collections.Counter()

    def postfix(outcome: LabelOutcome) -> str:
        for lesion in outcome.lesions:
            counts[lesion.status] += 1
        return f"lesions {counts['done']} done, {counts['skipped']} skipped"

    worker = functools.partial(_label_case_in_worker, str(store.path), config)
    return run_cases(todo, worker, pool=pool if len(todo) > 1 else None,  # one case: here, with the open store
                     run_here=lambda case_id: label_case(store, case_id, config), lost=_lost,
                     progress=progress, desc=f"ctlabel {config.source}", unit="case", postfix=postfix)


def _label_case_in_worker(store_path: str, config: LabelConfig, case_id: str) -> LabelOutcome:
    """A worker's call: label one case of the store it reopens by path."""
    return label_case(SliceStore.open(store_path, mode="a"), case_id, config)


def _lost(case_id: str, exc: BaseException) -> LabelOutcome:
    """A case whose worker died (killed for memory, ...)."""
    return LabelOutcome(case_id=case_id, status="skipped", reason=f"worker failed: {type(exc).__name__}: {exc}")


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: OpenCV's own threads would compete with the other workers


def _worker_pool(workers: int) -> contextlib.AbstractContextManager:
    """lkbase's worker pool with OpenCV on one thread per worker.

    Forked while this process has one thread (pymatting already loaded, so workers inherit
    it); else a forkserver preloads this module, and the matting kernels when they are
    loaded here (the server loads them once, its children inherit them).
    """
    kernels = ["ctlabel._pymatting"] if "ctlabel._pymatting" in sys.modules else []
    return worker_pool(workers, preload=["ctlabel.label", *kernels], initializer=_init_worker)
