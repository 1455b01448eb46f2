"""The per-case runner shared by ``ctprep convert`` and ``ctlabel trimap|softmask``.

One convention for every batch job over cases:

* a case's work is one function call that returns a :class:`CaseOutcome` (or a subclass
  with the job's own fields); :func:`run_guarded` turns a failure of that case into a
  ``skipped`` outcome with a one-line reason, and lets fatal errors (a full disk) through;
* :func:`case_pool` gives where cases run: here (None), a local process pool, or a
  dask.distributed cluster (:mod:`lkbase.executor`); :func:`run_cases` submits every case
  to it, shows progress, and yields outcomes in the order they finish. A worker that
  dies becomes the outcome its ``lost`` callback makes;
* a job's report is a frozen dataclass with ``lines()``: the end-of-run summary.

Workers of a local pool exit when the process that made the pool dies, even by SIGKILL
(Linux: ``PR_SET_PDEATHSIG``; everywhere: a thread watching the parent), so that no
orphan goes on writing cases after its run was killed.

Local pools are forked while the parent still has one thread (fast, everything imported);
when threads already run (zarr starts I/O threads), a forkserver preloading the job's
module is used instead, since forking a threaded process is unsafe.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from lkbase.errors import LesionkitError

log = logging.getLogger("lesionkit")

O = TypeVar("O", bound="CaseOutcome")
J = TypeVar("J")

# What a case's own input can raise: skip the case, keep the run.
CASE_FAILURES: tuple[type[BaseException], ...] = (LesionkitError, ValueError, LookupError, OSError, MemoryError)


@dataclass(frozen=True, kw_only=True)
class CaseOutcome:
    """What happened to one case in a run; jobs subclass it with their own fields."""

    case_id: str
    status: str  # the job's words: converted | labelled | existing | skipped
    reason: str = ""
    seconds: float = 0.0


def one_line_reason(exc: BaseException) -> str:
    """A failure as one line: our errors and plain ValueError/LookupError as their message, others with their type."""
    if isinstance(exc, KeyError) and not isinstance(exc, LesionkitError) and exc.args:
        return f"KeyError: {exc.args[0]}"  # str() of a KeyError quotes its message
    if isinstance(exc, LesionkitError) or type(exc) in (LookupError, ValueError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # never several lines


def run_guarded(call: Callable[[], O], skipped: Callable[[str], O], *,
                skip: tuple[type[BaseException], ...] = CASE_FAILURES,
                fatal: tuple[type[BaseException], ...] = (), bug: Callable[[BaseException], str] | None = None) -> O:
    """``call()``, with a failure of the case as ``skipped(reason)``.

    ``fatal`` errors are raised (they would fail every following case too); ``skip`` errors
    become the reason; with ``bug`` any other Exception also skips the case, with
    ``bug(exc)`` as the reason (logged with its traceback at debug level).
    """
    try:
        return call()
    except fatal:
        raise
    except skip as exc:
        return skipped(one_line_reason(exc))
    except Exception as exc:  # noqa: BLE001 - a bug met on this case's input: it alone is skipped
        if bug is None:
            raise
        log.debug("unexpected error", exc_info=True)
        return skipped(bug(exc))


@contextlib.contextmanager
def worker_pool(workers: int, *, preload: Sequence[str] = (),
                initializer: Callable[[], None] | None = None) -> Iterator[cf.Executor | None]:
    """A process pool for ``workers`` > 1 (else None), its workers started before this returns.

    Call it before any zarr use, so that workers are forked from a single-threaded process;
    otherwise a forkserver importing ``preload`` is used.
    """
    if workers <= 1:
        yield None
        return
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")
    else:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
    guarded = functools.partial(_die_with_parent, os.getpid(), initializer)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=guarded) as pool:
        for future in [pool.submit(os.getpid) for _ in range(workers)]:
            future.result()  # every worker exists now, while forking is safe
        yield pool


# How often a worker's watchdog looks whether its parent is still there (seconds).
_PARENT_POLL_S = 0.5


def _die_with_parent(owner: int, initializer: Callable[[], None] | None) -> None:
    """Worker initializer: end this worker when its parent (the pool's maker, or the forkserver) dies."""
    parent = os.getppid()
    # Ctrl-C reaches the whole process group: the parent alone reports it (lkbase.cli.fail_cleanly) and
    # shuts the pool down; a worker printing its own KeyboardInterrupt traceback would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG: the kernel kills us when our parent dies
    if os.getppid() != parent or not _alive(owner):  # died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, owner), daemon=True, name="lesionkit-parent-watch").start()
    if initializer is not None:
        initializer()


def _watch_parent(parent: int, owner: int) -> None:
    """The portable fallback: exit once re-parented (the parent died) or the pool's maker is gone."""
    while os.getppid() == parent and _alive(owner):
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed parent not yet reaped is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def case_pool(workers: int, dask: str | None = None, **pool_options) -> contextlib.AbstractContextManager:
    """Where cases run: a dask.distributed cluster (``dask``: ``local[:N]`` or an address), a local pool, or here."""
    if dask:
        from lkbase.executor import dask_executor

        return dask_executor(dask)
    return worker_pool(workers, **pool_options)


def run_cases(jobs: Sequence[J], run: Callable[[J], O], *, pool: cf.Executor | None,
              lost: Callable[[J, BaseException], O], name: Callable[[J], str] = str,
              run_here: Callable[[J], O] | None = None, fatal: tuple[type[BaseException], ...] = (),
              progress: bool = True, desc: str = "", unit: str = "case",
              postfix: Callable[[O], str] | None = None) -> Iterator[O]:
    """The outcomes of ``jobs``, in the order they finish.

    Without a pool, ``run_here`` (default ``run``) runs each job in this process; with one,
    ``run`` (picklable) runs in the workers. A ``fatal`` error cancels what has not started
    and is raised; any other failure of a worker becomes ``lost(job, exc)``.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit=unit, desc=desc, file=sys.stderr, disable=not progress or None)
    try:
        for outcome in _outcomes(jobs, run, pool, lost, name, run_here or run, fatal, bar):
            if postfix is not None:
                bar.set_postfix_str(postfix(outcome))
            bar.update()
            yield outcome
    finally:
        bar.close()


def _outcomes(jobs, run, pool, lost, name, run_here, fatal, bar) -> Iterable:
    if pool is None:
        for job in jobs:
            bar.set_postfix_str(name(job))
            yield run_here(job)
        return
    futures = {pool.submit(run, job): job for job in jobs}
    for future in cf.as_completed(futures):
        try:
            yield future.result()
        except fatal:
            for other in futures:
                other.cancel()
            raise
        except Exception as exc:  # a worker died (killed for memory, ...)
            yield lost(futures[future], exc)
