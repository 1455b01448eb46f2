"""Where tasks run on a cluster: a concurrent.futures executor over dask.distributed (``--dask``).

Shared by ``ctprep convert`` (one task per case) and ``ctlabel trimap|softmask`` (one
task per lesion): both submit to a ``concurrent.futures.Executor`` and collect with
``as_completed``, so the local process pool and a dask cluster run the same code.
distributed is imported only here, inside the function (an optional extra).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
from typing import Iterator

LOCAL = re.compile(r"local(?::(\d+))?")


def parse_dask_spec(spec: str) -> int | None:
    """``local`` -> the CPU count, ``local:N`` -> N (a LocalCluster's workers); a scheduler address -> None."""
    match = LOCAL.fullmatch(spec)
    if not match:
        return None
    workers = int(match.group(1) or os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"--dask {spec}: a local cluster needs at least 1 worker")
    return workers


@contextlib.contextmanager
def dask_executor(spec: str, connect_timeout_s: float = 30) -> Iterator[cf.Executor]:
    """A concurrent.futures executor over dask.distributed: ``local[:N]`` starts a LocalCluster.

    ``local[:N]``: N worker processes with one thread each on this machine; otherwise
    ``spec`` is a scheduler address (``tcp://host:8786``). Tasks are submitted impure
    (each runs, none is deduplicated); a task whose worker dies is retried by the
    scheduler on another worker. The cluster (local) or the connection closes on exit.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("--dask needs dask.distributed: pip install 'lesionkit[dask]'") from None
    workers = parse_dask_spec(spec)
    with contextlib.ExitStack() as stack:
        if workers is not None:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(spec, timeout=f"{connect_timeout_s}s"))
            except OSError as exc:
                raise OSError(f"--dask {spec}: cannot reach the dask scheduler ({exc})") from exc
        yield client.get_executor(pure=False)
