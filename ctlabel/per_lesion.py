"""``--dask``: a labelling run with one dask.distributed task per lesion (:func:`run_per_lesion`).

Convention: this process reads each case's crops (:func:`ctlabel.cases.prepare_case`)
and submits its lesion jobs, at most :data:`MAX_LESIONS_IN_FLIGHT` at a time; when a
case's last job is back it writes the case's labels (:func:`ctlabel.cases.finish_case`)
with the results in job order, so the bytes equal a local run's. Workers only compute:
they need no access to the store.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

from ctlabel.cases import CaseWork, finish_guarded, prepare_guarded
from ctlabel.config import LabelConfig
from ctlabel.jobs import LesionJob, LesionResult, run_lesion_job
from ctlabel.report import LabelOutcome
from ctprep.store import SliceStore

# Lesion jobs submitted and not yet back. Bounds what this process holds (a job is its
# crop, ~10-800 kB) while keeping up to this many worker threads busy.
MAX_LESIONS_IN_FLIGHT = 256


@dataclass(kw_only=True)
class _OpenCase:
    """--dask bookkeeping: a case whose lesion jobs are out, and the results back so far (in job order)."""

    work: CaseWork
    results: list[LesionResult | None]
    waiting: int


def run_per_lesion(store: SliceStore, todo: Sequence[str], config: LabelConfig, pool: cf.Executor,
                   progress: bool) -> Iterator[LabelOutcome]:
    """The outcomes of ``todo`` with one task per lesion (dask), in the order cases complete (see the module).

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
                work = prepare_guarded(store, queue.popleft(), config)
                if isinstance(work, LabelOutcome):  # the case itself failed
                    yield work
                elif not work.jobs:  # nothing to compute: its (empty) labels are written now
                    yield finish_guarded(store, work, [], config)
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
                    outcome = finish_guarded(store, case.work, case.results, config)
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
        return LesionResult.skipped(job, f"worker failed: {type(exc).__name__}: {exc}")
