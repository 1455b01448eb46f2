"""lkbase.runner.worker_pool: workers die with the process that made the pool (issue 17, A3).

A real ``kill -9`` of the parent (only the parent, not its process group): every worker,
forked or from the forkserver (used once threads run), is gone within seconds instead of
going on with its cases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from killing import subprocess_env

PARENT = textwrap.dedent("""
    import sys, threading, time
    from lkbase.runner import worker_pool

    if sys.argv[1] == "forkserver":  # a running thread makes worker_pool use the forkserver
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    with worker_pool(2) as pool:
        pids = list(pool._processes)  # the pool's worker processes (worker_pool started both)
        jobs = [pool.submit(time.sleep, 300) for _ in range(2)]  # a long case in each worker
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(300)
""")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("start", ["fork", "forkserver"])
@pytest.mark.timeout(120)
def test_workers_exit_when_the_parent_is_killed(start):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, start], env=subprocess_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = parent.stdout.readline()
        assert line.strip(), parent.stderr.read()
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and all(map(_running, workers))
        os.kill(parent.pid, signal.SIGKILL)  # the parent only: its workers must notice by themselves
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, workers)), f"workers {workers} outlived their killed parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # anything left of this test's own process group
        except ProcessLookupError:
            pass
