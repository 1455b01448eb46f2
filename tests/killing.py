"""Helpers for the kill tests: run a command in its own process group, wait for a moment, SIGKILL it.

A SIGKILL is what the kernel's OOM killer or a lost node does: no handler runs, nothing is
flushed. ``hook_env`` installs a ``sitecustomize`` module in the child interpreter (and in every
interpreter it starts: pool and dask workers) so a test can kill the process at an exact point
of its own code, e.g. after the n-th write of a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(*first: Path, **variables: str) -> dict:
    """This environment with the repository (after ``first``) on PYTHONPATH and ``variables`` set."""
    env = dict(os.environ) | variables
    env["PYTHONPATH"] = os.pathsep.join([*map(str, first), str(REPO), env.get("PYTHONPATH", "")])
    return env


def hook_env(folder: Path, code: str, **variables: str) -> dict:
    """An environment whose interpreters run ``code`` at start-up (as ``folder/sitecustomize.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(code)
    return subprocess_env(folder, **variables)


def start(command: list[str], env: dict) -> subprocess.Popen:
    """``command`` in a new session (its own process group: workers die with it)."""
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the whole process group: no worker may outlive the kill and go on writing."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=20)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 40.0,
             what: str = "the process") -> None:
    """Poll ``condition`` until true; fail the test if the process ends first or nothing happens in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"{what} ended (rc {process.returncode}) before it could be killed:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            kill(process)
            pytest.fail(f"{what} made no progress in {timeout:.0f} s")
        time.sleep(0.005)


def wait_killed(process: subprocess.Popen, timeout: float = 60.0) -> str:
    """Wait for a process that kills itself (a hook); its stderr. Fails if it exits on its own."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)
        pytest.fail(f"the process did not reach its kill point in {timeout:.0f} s")
    assert process.returncode == -signal.SIGKILL, f"it exited (rc {process.returncode}) instead:\n{err[-3000:]}"
    return err
