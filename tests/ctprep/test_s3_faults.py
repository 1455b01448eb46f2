"""A live S3 endpoint failing: stopped mid-case, wrong credentials, a missing bucket.

Each gives one line (``ctprep: error: <store>: ...`` with the reason; no traceback, no
asyncio noise), and nothing is marked complete that is not: re-opened after the server
is back, the case it was writing is invisible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from ctprep.store import SliceStore
from killing import hook_env, kill, start, subprocess_env

pytestmark = pytest.mark.timeout(180)
FAST_FAIL = {"AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}  # botocore: no retries of a refused connection


def _convert(dataset, url: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lesionkit.cli", "convert", "--source", "lits", "--input",
                           str(dataset.root), "--output", url, "--quiet"], env=env, capture_output=True, text=True,
                          timeout=120)


def _one_line_error(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctprep: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_a_missing_bucket(s3_endpoint, lits_dataset_module):
    url = "s3://lesionkit-no-such-bucket/lits.zarr"
    done = _convert(lits_dataset_module, url, subprocess_env())
    assert done.returncode == 1
    _one_line_error(done.stderr, url, "bucket 'lesionkit-no-such-bucket' not found")


def test_wrong_credentials(s3_endpoint, lits_dataset_module):
    from s3_endpoint import checking_server

    server, endpoint = checking_server()
    try:
        env = subprocess_env(**FAST_FAIL, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1",
                             AWS_SECRET_ACCESS_KEY="wrong")
        url = "s3://lesionkit-any/lits.zarr"
        done = _convert(lits_dataset_module, url, env)
        assert done.returncode == 1
        line = _one_line_error(done.stderr, url, "cannot reach the store")
        assert "InvalidAccessKeyId" in line or "Access Denied" in line or "Forbidden" in line, line
        info = subprocess.run([sys.executable, "-m", "lesionkit.cli", "info", url], env=env, capture_output=True,
                              text=True, timeout=60)
        assert info.returncode == 1
        _one_line_error(info.stderr, url)
    finally:
        server.kill()
        server.wait()


# The victim case's image is in the bucket; the process then waits for the test to stop the
# server, and goes on writing the case's labels into a dead endpoint.
PAUSE_HOOK = textwrap.dedent("""
    import os, time
    from pathlib import Path
    if os.environ.get("LESIONKIT_TEST_VICTIM"):
        from ctprep.store import SliceStore

        original, victim = SliceStore._write_slab, os.environ["LESIONKIT_TEST_VICTIM"]
        folder = Path(os.environ["LESIONKIT_TEST_FOLDER"])

        def write_slab(array, *args, **kwargs):
            written = original(array, *args, **kwargs)
            if array.path == f"cases/{victim}/image" and not (folder / "paused").exists():
                (folder / "paused").write_text("")
                while not (folder / "go").exists():
                    time.sleep(0.02)
            return written

        SliceStore._write_slab = staticmethod(write_slab)
""")


def test_the_server_gone_mid_case(lits_dataset_module, tmp_path):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from s3_endpoint import S3Endpoint, forget_clients

    endpoint = S3Endpoint().start()
    url = f"s3://{endpoint.new_bucket()}/lits.zarr"
    env = hook_env(tmp_path / "hook", PAUSE_HOOK, **endpoint.env, **FAST_FAIL, LESIONKIT_TEST_VICTIM="volume-1",
                   LESIONKIT_TEST_FOLDER=str(tmp_path))
    process = start([sys.executable, "-m", "lesionkit.cli", "convert", "--source", "lits", "--input",
                     str(lits_dataset_module.root), "--output", url, "--quiet"], env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "paused").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.05)
        endpoint.stop()
        (tmp_path / "go").write_text("")
        _, err = process.communicate(timeout=120)
    finally:
        kill(process)
    assert process.returncode == 1, err
    line = _one_line_error(err, url, "case volume-1", "Could not connect to the endpoint URL",
                           "make the store reachable and re-run the same command to resume")
    assert "Traceback" not in line and "asyncio" not in err
    endpoint.start()  # the same port; moto keeps the bucket's objects in this process
    saved = {k: os.environ.get(k) for k in endpoint.env}
    os.environ.update(endpoint.env)
    forget_clients()
    try:
        store = SliceStore.open(url)
        assert store.case_ids() == ["volume-0"] and store.incomplete_case_ids() == ["volume-1"]
        assert "volume-1" not in store
    finally:
        endpoint.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        forget_clients()
