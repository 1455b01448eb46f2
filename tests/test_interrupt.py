"""Issue 17 D: a real SIGINT mid-convert ends ``ctprep`` with one line, ``ctprep: interrupted``, and
exit status 130 (lkbase.cli.fail_cleanly), also with ``--workers 2`` (workers ignore SIGINT and
leave the report to the parent); the store it leaves verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ctprep.phantoms.nifti import write_lits_case


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigint_mid_convert_gives_one_line_and_status_130(tmp_path, workers):
    root = tmp_path / "lits"
    for number in range(12):
        write_lits_case(root, number, shape=(24, 96, 96), spacing=(2.5, 0.8, 0.8))
    store = tmp_path / "store.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "ctprep.cli", "convert", "--source", "lits", "--input", str(root),
                             "--output", str(store), "--workers", workers, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while not (store / "cases").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "convert finished before it could be interrupted; make the corpus bigger"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert err.strip().splitlines()[-1:] == ["ctprep: interrupted"] and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert proc.returncode == 130, (proc.returncode, err)
    verify = subprocess.run([sys.executable, "-m", "ctprep.cli", "verify", str(store)], capture_output=True, text=True)
    assert "Traceback" not in verify.stderr, verify.stderr
