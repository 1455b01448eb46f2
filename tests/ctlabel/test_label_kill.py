"""``ctlabel softmask`` killed (SIGKILL) mid-run, then re-run: the labels equal a clean run's, bytes and attributes.

The store is a real conversion of a LiTS phantom download; the killed runs are CLI subprocesses,
killed at seeded random moments of the labelling or, through a start-up hook, at the one moment
where a label is in place but not yet recorded in its case.
"""

from __future__ import annotations

import random
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from killing import hook_env, kill, start, subprocess_env, wait_for, wait_killed

from ctlabel.cli import main
from ctlabel.label import LabelConfig, label_store
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.store import SliceStore
from ctprep.commands.verify import verify_store

LABELS = ("trimap_tumour", "soft_tumour")
COMMAND = ["softmask", "--from", "mask", "--label", "tumour", "--quiet"]

# sitecustomize of the killed run: SIGKILL right after the n-th label named LESIONKIT_TEST_LABEL is
# renamed into place by SliceStore.write_label, before the write is recorded in the case.
RENAME_HOOK = textwrap.dedent("""
    import os, signal
    from pathlib import Path

    if os.environ.get("LESIONKIT_TEST_LABEL"):
        name, n, count = os.environ["LESIONKIT_TEST_LABEL"], int(os.environ["LESIONKIT_TEST_N"]), [0]
        original = os.replace

        def replace(source, destination, *args, **kwargs):
            original(source, destination, *args, **kwargs)
            if Path(destination).name == name and Path(destination).parent.name == "labels":
                count[0] += 1
                if count[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
""")


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """8 converted LiTS phantom cases (lesion slices only): ~40 lesions, one too thin to label."""
    from ctprep.phantoms.nifti import write_lits_case

    root = tmp_path_factory.mktemp("label-kill")
    for number in range(8):
        write_lits_case(root / "LiTS", number, shape=(24, 96, 96))
    report = convert_dataset(ConvertConfig(source="lits", input_dir=str(root / "LiTS"), output=str(root / "lits.zarr"),
                                           slices="lesion"), progress=False)
    assert not report.with_status("skipped")
    return root / "lits.zarr"


@pytest.fixture(scope="module")
def clean(unlabelled, tmp_path_factory):
    path = tmp_path_factory.mktemp("label-clean") / "clean.zarr"
    shutil.copytree(unlabelled, path)
    report = label_store(LabelConfig(store=str(path), source="mask", label="tumour"), progress=False)
    assert len(report.with_status("labelled")) == 8 and report.lesions("skipped")
    return path


def _labels(path) -> dict:
    """Per case and label: dtype, bytes, attributes and the chunk checksums recorded with it."""
    store = SliceStore.open(path)
    out = {}
    for case_id in store.case_ids():
        recorded = store.recorded_checksums(case_id)
        for name in store.label_names(case_id):
            if name in LABELS:
                array = store.read_label(case_id, name)
                out[case_id, name] = (array.dtype.str, array.tobytes(), store.label_attributes(case_id, name),
                                      recorded.get(f"labels/{name}"))
    return out


def _rerun_equals_clean(path, clean) -> str:
    """Re-run the same command to completion; the labels are the clean run's and the store verifies."""
    done = CliRunner().invoke(main, [COMMAND[0], str(path), *COMMAND[1:]])
    assert done.exit_code == 0, done.output
    assert _labels(path) == _labels(clean)
    store = SliceStore.open(path)
    for case_id in store.case_ids():  # staging folders of the killed write are never labels
        assert set(store.label_names(case_id)) == {"liver", "tumour", *LABELS}
    # ... and the re-run, rewriting the labels the kill interrupted, removed them from disk
    assert not [p for p in Path(path).glob("cases/*/labels/_staging.*")]
    report = verify_store(path)
    assert report.ok, report.lines()
    return done.output


@pytest.mark.timeout(90)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_at_a_random_moment_then_resumed(unlabelled, clean, tmp_path, seed):
    path = tmp_path / "killed.zarr"
    shutil.copytree(unlabelled, path)
    labels = list((path / "cases").glob("*/labels"))

    def writing() -> bool:  # the first label is being written: labelling has begun
        return any(name.startswith(("_staging.", "trimap_")) for folder in labels for name in
                   (p.name for p in folder.iterdir()))

    process = start([sys.executable, "-m", "ctlabel.cli", COMMAND[0], str(path), *COMMAND[1:]], subprocess_env())
    try:
        wait_for(writing, process, what="ctlabel softmask")
        time.sleep(random.Random(seed).uniform(0.0, 0.35))  # the rest takes ~1.2 s here
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL, "the labelling finished before it could be killed"
    before = _labels(path)
    done_before = {case for case, name in before if before[case, name][3] is not None}
    # Whatever the kill left is complete: a recorded label already holds the clean run's bytes.
    reference = _labels(clean)
    assert {key: value for key, value in before.items() if value[3] is not None} == \
        {key: reference[key] for key, value in before.items() if value[3] is not None}
    output = _rerun_equals_clean(path, clean)
    complete = sum(all(before.get((case, name), (None,) * 4)[3] is not None for name in LABELS) for case in done_before)
    assert f"{complete} already done" in output


@pytest.mark.timeout(90)
def test_killed_between_a_label_and_its_record(unlabelled, clean, tmp_path):
    """The third soft mask is in place when the process dies, but its write is not recorded: it is redone."""
    path = tmp_path / "killed.zarr"
    shutil.copytree(unlabelled, path)
    env = hook_env(tmp_path / "hook", RENAME_HOOK, LESIONKIT_TEST_LABEL="soft_tumour", LESIONKIT_TEST_N="3")
    process = start([sys.executable, "-m", "ctlabel.cli", COMMAND[0], str(path), *COMMAND[1:]], env)
    try:
        wait_killed(process)
    finally:
        kill(process)
    store = SliceStore.open(path)
    unrecorded = [case for case in store.case_ids() if "soft_tumour" in store.label_names(case)
                  and "labels/soft_tumour" not in store.recorded_checksums(case)]
    assert len(unrecorded) == 1  # what `ctprep verify` would not vouch for
    assert not verify_store(path).ok
    output = _rerun_equals_clean(path, clean)
    assert "2 already done" in output and "6 cases labelled" in output
