"""Stores on s3:// against a live S3 endpoint (moto's server on 127.0.0.1, tests/s3_endpoint.py).

The same phantom LiTS download converted to a local folder and into a bucket must give
byte-identical chunks; every command works on the bucket; a run killed mid-case resumes;
and the endpoint failing (stopped mid-case, wrong credentials, a missing bucket) gives one
line naming the store and the reason, with nothing marked complete that is not.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.store import SliceStore
from killing import hook_env, kill, start, subprocess_env

pytestmark = pytest.mark.timeout(240)


def _cli(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lesionkit.cli", *map(str, args)], env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def _content(location) -> dict:
    store = SliceStore.open(location)
    return {c: (store.record(c).to_dict(), store.recorded_checksums(c), store.current_checksums(c))
            for c in store.case_ids()}


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctprep: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def local_store(lits_dataset_module, tmp_path_factory):
    path = tmp_path_factory.mktemp("s3_local") / "lits.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset_module.root), output=str(path)),
                    progress=False)
    return path


@pytest.fixture(scope="module")
def bucket_store(s3_endpoint, lits_dataset_module):
    """The download converted into a bucket by the CLI with two local workers (they reach it through the environment)."""
    url = f"s3://{s3_endpoint.new_bucket()}/lits.zarr"
    done = _cli("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", url,
                "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Found credentials" not in done.stderr and "Traceback" not in done.stderr
    return url


def test_a_bucket_store_is_byte_identical_to_a_local_one(bucket_store, local_store):
    assert SliceStore.open(bucket_store).case_ids() == SliceStore.open(local_store).case_ids()
    assert _content(bucket_store) == _content(local_store)  # the chunk files' hashes, recorded and as stored
    a, b = SliceStore.open(local_store), SliceStore.open(bucket_store)
    keys = [(c, z) for c in a.case_ids() for z in (0, 5, 11)]
    names = a.label_names(a.case_ids()[0])
    local, remote = a.read_slices(keys, names), b.read_slices(keys, names)
    assert np.array_equal(remote.image, local.image)
    assert all(np.array_equal(remote.labels[n], local.labels[n]) for n in names)


def test_verify_audit_info_and_preview_on_a_bucket(bucket_store, tmp_path):
    verified = _cli("verify", bucket_store, "--quiet")
    assert verified.returncode == 0 and verified.stdout.strip().endswith("OK"), verified.stderr
    audited = _cli("audit", bucket_store)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    info = _cli("info", bucket_store)
    assert info.returncode == 0 and f"store        {bucket_store}" in info.stdout and "3 complete" in info.stdout
    png = tmp_path / "preview.png"
    shown = _cli("preview", bucket_store, "--case", "volume-1", "--out", png)
    assert shown.returncode == 0, shown.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (verified.stderr + audited.stderr + info.stderr + shown.stderr).strip()


@pytest.mark.slow
def test_convert_on_a_dask_cluster_into_a_bucket(s3_endpoint, lits_dataset_module, local_store):
    url = f"s3://{s3_endpoint.new_bucket()}/lits.zarr"
    done = _cli("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", url,
                "--dask", "local:2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert _content(url) == _content(local_store)


# ---- killed, and resumed -----------------------------------------------------------------------
KILL_HOOK = textwrap.dedent("""
    import os, signal
    if os.environ.get("LESIONKIT_TEST_VICTIM"):
        from ctprep.store import SliceStore

        original, victim = SliceStore._write_slab, os.environ["LESIONKIT_TEST_VICTIM"]

        def write_slab(array, *args, **kwargs):
            written = original(array, *args, **kwargs)
            if array.path.split("/")[1] == victim:  # a slab of the victim's image is in the bucket, no more
                os.kill(os.getpid(), signal.SIGKILL)
            return written

        SliceStore._write_slab = staticmethod(write_slab)
""")


def test_a_run_killed_mid_case_resumes(s3_endpoint, lits_dataset_module, local_store, tmp_path):
    url = f"s3://{s3_endpoint.new_bucket()}/lits.zarr"
    command = [sys.executable, "-m", "lesionkit.cli", "convert", "--source", "lits", "--input",
               str(lits_dataset_module.root), "--output", url, "--quiet"]
    process = start(command, hook_env(tmp_path / "hook", KILL_HOOK, LESIONKIT_TEST_VICTIM="volume-1"))
    try:
        process.wait(timeout=120)
    finally:
        kill(process)
    assert process.returncode == -9, process.stderr.read()
    store = SliceStore.open(url)
    assert store.case_ids() == ["volume-0"] and store.incomplete_case_ids() == ["volume-1"]
    assert "volume-1" not in store and set(store.index().rows["case"].tolist()) == {"volume-0"}
    done = _cli("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", url, "--quiet")
    assert done.returncode == 0, done.stderr
    assert _content(url) == _content(local_store)
