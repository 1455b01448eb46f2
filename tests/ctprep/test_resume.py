"""Killing a conversion mid-run and re-running it gives exactly what a clean run gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from killing import hook_env, kill, subprocess_env, wait_for

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.store import SliceStore

SHAPE = (16, 48, 48)
CASES = {n: ("", axcodes, n % 2 == 1) for n, axcodes in enumerate(
    [("R", "A", "S"), ("L", "P", "S"), ("A", "R", "I"), ("R", "A", "S"), ("I", "P", "L"), ("L", "A", "S")])}
IDS = [f"volume-{n}" for n in CASES]

# Runs convert_dataset with writes that hang (after the image array is on disk) in the third case,
# so the parent can SIGKILL it with exactly two complete cases and one incomplete case group.
HANGING_CONVERSION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.store import SliceStore

    input_dir, output, hang_case, marker = sys.argv[1:5]
    original = SliceStore._write_slab

    def write_slab(array, *args, **kwargs):
        written = original(array, *args, **kwargs)
        if array.path.split("/")[1] == hang_case:  # cases/<case>/...: its first slab of the image is on disk
            Path(marker).write_text("hanging")
            time.sleep(600)
        return written

    SliceStore._write_slab = staticmethod(write_slab)
    convert_dataset(ConvertConfig(source="lits", input_dir=input_dir, output=output, keep_hu=True,
                                  slices="lesion+2"), progress=False)
""")

# Installed as sitecustomize in every process of the run (workers of a pool or of a dask
# cluster start fresh interpreters): the process writing the victim case dies (SIGKILL, as
# from the kernel's OOM killer) in the middle of it, once; the marker file remembers.
DYING_WORKER_HOOK = textwrap.dedent("""
    import os, signal
    from pathlib import Path

    if os.environ.get("LESIONKIT_TEST_VICTIM"):
        from ctprep.store import SliceStore

        original = SliceStore._write_slab
        victim, marker = os.environ["LESIONKIT_TEST_VICTIM"], Path(os.environ["LESIONKIT_TEST_MARKER"])

        def write_slab(array, *args, **kwargs):
            written = original(array, *args, **kwargs)
            if array.path.split("/")[1] == victim and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return written

        SliceStore._write_slab = staticmethod(write_slab)
""")

def _wait_for(condition, process: subprocess.Popen, timeout: float = 40.0) -> None:
    wait_for(condition, process, timeout, what="the conversion")


def _complete_cases(output: Path) -> list[str]:
    try:
        return SliceStore.open(output).case_ids()
    except Exception:  # not created yet, or its metadata half-written
        return []


def _manifest_cases(output: Path) -> dict:
    """The manifest's per-case entries without what legitimately differs between runs."""
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest == SliceStore.open(output).manifest()
    keep = ("status", "reason", "slices", "quirks", "inputs", "split")
    return {case: {k: entry.get(k) for k in keep} for case, entry in manifest["cases"].items()}


def assert_same_store(resumed: Path, clean: Path) -> None:
    a, b = SliceStore.open(resumed), SliceStore.open(clean)
    assert a.case_ids() == b.case_ids() == IDS
    assert a.incomplete_case_ids() == b.incomplete_case_ids() == []
    assert a.parameters == b.parameters
    for case_id in IDS:
        x, y = a.read_case(case_id, hu=True), b.read_case(case_id, hu=True)
        assert x.record.to_dict() == y.record.to_dict(), case_id
        np.testing.assert_array_equal(x.image, y.image, err_msg=case_id)
        np.testing.assert_array_equal(x.hu, y.hu, err_msg=case_id)
        assert set(x.labels) == set(y.labels) == {"liver", "tumour"}
        for name in x.labels:
            np.testing.assert_array_equal(x.labels[name], y.labels[name], err_msg=f"{case_id} {name}")
    assert np.array_equal(a.index().rows, b.index().rows)
    assert np.array_equal(a.stored_index().rows, b.stored_index().rows)  # the consolidated index too
    assert _manifest_cases(resumed) == _manifest_cases(clean)
    summary = json.loads(manifest_path(resumed).read_text())["summary"]
    assert summary == {"converted": len(IDS), "skipped": []}


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    from ctprep.phantoms.nifti import write_lits_case

    for number, (_, axcodes, gz) in CASES.items():
        write_lits_case(folder / "lits", number, shape=SHAPE, axcodes=axcodes, gz=gz)
    return folder / "lits"


@pytest.fixture(scope="module")
def clean_store(download, tmp_path_factory):
    output = tmp_path_factory.mktemp("clean") / "clean.zarr"
    report = convert_dataset(ConvertConfig(source="lits", input_dir=str(download), output=str(output),
                                           keep_hu=True, slices="lesion+2"), progress=False)
    assert [o.status for o in report.outcomes] == ["converted"] * len(IDS)
    return output


@pytest.mark.timeout(60)
def test_kill_mid_case_then_resume(download, clean_store, tmp_path):
    output, marker = tmp_path / "killed.zarr", tmp_path / "hanging"
    process = subprocess.Popen([sys.executable, "-c", HANGING_CONVERSION, str(download), str(output), IDS[2],
                                str(marker)], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _wait_for(marker.exists, process)
    finally:
        kill(process)
    # killed with two complete cases and the third half-written
    store = SliceStore.open(output)
    assert store.case_ids() == IDS[:2]
    assert store.incomplete_case_ids() == [IDS[2]]
    assert (output / "cases" / IDS[2] / "image").exists()
    assert not manifest_path(output).exists()  # consolidation happens at the end of a run
    # readers do not see the incomplete case
    assert IDS[2] not in store
    assert set(store.index().rows["case"].tolist()) == set(IDS[:2])
    # re-running the same conversion resumes: complete cases kept, the incomplete one redone
    report = convert_dataset(ConvertConfig(source="lits", input_dir=str(download), output=str(output),
                                           keep_hu=True, slices="lesion+2"), progress=False)
    assert [o.status for o in report.outcomes] == ["existing"] * 2 + ["converted"] * 4
    assert_same_store(output, clean_store)


@pytest.mark.timeout(60)
# zarr warns about the temporary "*.partial" file a SIGKILL can leave behind in a group folder
@pytest.mark.filterwarnings("ignore:Object at .*partial is not recognized")
def test_kill_the_cli_then_resume(download, clean_store, tmp_path):
    output = tmp_path / "cli.zarr"
    command = [sys.executable, "-m", "ctprep.cli", "convert", "--source", "lits", "--input", str(download),
               "--output", str(output), "--keep-hu", "--slices", "lesion+2", "--quiet"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 40
        while not _complete_cases(output) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL, "the conversion finished before it could be killed"
    done = _complete_cases(output)
    assert done, "no case completed before the kill"
    assert len(done) < len(IDS)
    # a second run of the same command finishes the job
    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=50)
    assert resumed.returncode == 0, resumed.stderr
    summary = resumed.stdout.splitlines()[0]
    existing = int(summary.split(" already complete")[0].rsplit(", ", 1)[1])
    assert existing >= len(done)
    assert f"{len(IDS) - existing} converted" in summary
    assert_same_store(output, clean_store)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers, dask", [(2, ""), (1, "local:2")], ids=["process-pool", "dask-local-cluster"])
def test_a_worker_killed_mid_case_never_leaves_it_half_visible(download, clean_store, tmp_path, workers, dask):
    if dask:
        pytest.importorskip("distributed")
    output, marker = tmp_path / "dying.zarr", tmp_path / "died"
    env = hook_env(tmp_path / "hook", DYING_WORKER_HOOK, LESIONKIT_TEST_VICTIM=IDS[3],
                   LESIONKIT_TEST_MARKER=str(marker))
    command = [sys.executable, "-m", "ctprep.cli", "convert", "--source", "lits", "--input", str(download),
               "--output", str(output), "--keep-hu", "--slices", "lesion+2", "--quiet"]
    extra = ["--dask", dask] if dask else ["--workers", str(workers)]
    run = subprocess.run(command + extra, env=env, capture_output=True, text=True, timeout=100)
    assert marker.exists(), run.stderr[-3000:]  # a worker really died mid-case
    assert int(marker.read_text()) != os.getpid()
    statuses = {line.split()[1].rstrip(":"): "skipped" for line in run.stdout.splitlines() if line.startswith("  skipped ")}
    statuses = {case: statuses.get(case, "converted") for case in IDS}
    store = SliceStore.open(output)
    assert store.case_ids() == sorted(c for c, s in statuses.items() if s == "converted")
    if dask:  # the scheduler reran the dead worker's task elsewhere: nothing lost
        assert set(statuses.values()) == {"converted"}
    else:  # the pool broke: the victim and the cases in flight are reported, never half-visible
        assert statuses[IDS[3]] == "skipped"
        assert IDS[3] not in store
    # Whatever the first run left, the same command finishes the job and equals a clean run.
    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=100)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_store(output, clean_store)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.filterwarnings("ignore:Object at .*partial is not recognized")
def test_killed_at_a_random_moment_then_resumed(download, clean_store, tmp_path, seed):
    import random

    output = tmp_path / "random.zarr"
    command = [sys.executable, "-m", "ctprep.cli", "convert", "--source", "lits", "--input", str(download),
               "--output", str(output), "--keep-hu", "--slices", "lesion+2", "--quiet"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:  # wait until the store exists, then a random moment of the conversion
        _wait_for(lambda: (output / "zarr.json").exists(), process)
        time.sleep(random.Random(seed).uniform(0.0, 0.4))
    finally:
        kill(process)
    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_store(output, clean_store)


@pytest.mark.timeout(60)
def test_incomplete_case_left_by_hand_is_redone(download, clean_store, tmp_path):
    import shutil

    output = tmp_path / "copy.zarr"
    shutil.copytree(clean_store, output)
    # make volume-4 look interrupted: drop its completion marker and damage an array chunk
    group_meta = output / "cases" / "volume-4" / "zarr.json"
    meta = json.loads(group_meta.read_text())
    meta["attributes"]["lesionkit_case"] = {"complete": False}
    group_meta.write_text(json.dumps(meta))
    image = output / "cases" / "volume-4" / "image"
    chunk = next(p for p in image.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\0" * 5)
    store = SliceStore.open(output)
    assert store.incomplete_case_ids() == ["volume-4"]
    report = convert_dataset(ConvertConfig(source="lits", input_dir=str(download), output=str(output),
                                           keep_hu=True, slices="lesion+2"), progress=False)
    assert {o.case_id: o.status for o in report.outcomes} == {
        **{c: "existing" for c in IDS}, "volume-4": "converted"}
    assert_same_store(output, clean_store)
