"""The ctlabel command line: every command end to end on a small store, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ctlabel.cli import main
from ctprep.store import SliceStore

SPACING = (2.0, 0.8, 0.8)


@pytest.fixture
def store_path(tmp_path, lk):
    """One case with a lesion on slice 1 and a RECIST annotation measured on it."""
    return lk.one_recist_case(tmp_path / "cli.zarr", SPACING)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_trimap_softmask_soften_preview(store_path, tmp_path):
    done = _run("trimap", store_path, "--from", "mask", "--label", "tumour", "--quiet")
    assert done.exit_code == 0, done.output
    assert "1 cases labelled" in done.output and "labels trimap_tumour" in done.output
    done = _run("softmask", store_path, "--recist", "--quiet", "--workers", "1", "--iterations", "2")
    assert done.exit_code == 0, done.output
    assert "1 lesions labelled" in done.output and "trimap_recist, soft_recist" in done.output
    again = _run("softmask", store_path, "--from", "recist", "--quiet", "--iterations", "2")
    assert "1 already done" in again.output
    refused = _run("softmask", store_path, "--from", "recist", "--quiet", "--iterations", "4")
    assert refused.exit_code == 1
    assert refused.output.startswith("ctlabel: error: ") and "grabcut_iterations: has 2, asked 4" in refused.output
    assert "--overwrite" in refused.output
    done = _run("soften", store_path, "--soft", "soft_recist", "--binary", "tumour", "--threshold", "0.5")
    assert done.exit_code == 0, done.output
    store = SliceStore.open(store_path)
    assert {"trimap_tumour", "trimap_recist", "soft_recist", "softened_recist", "binary_recist"} <= set(
        store.label_names("case-1"))
    labels = store.read_case("case-1", labels=["soft_recist", "softened_recist", "binary_recist", "tumour"]).labels
    np.testing.assert_array_equal(labels["softened_recist"], np.maximum(labels["soft_recist"], labels["tumour"]))
    np.testing.assert_array_equal(labels["binary_recist"], (labels["soft_recist"] >= 0.5).astype(np.uint8))
    png = tmp_path / "out" / "preview.png"
    done = _run("preview", store_path, "--case", "case-1", "--name", "recist", "--out", png)
    assert done.exit_code == 0, done.output
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line(store_path, tmp_path):
    cases = [
        (["softmask", store_path, "--from", "mask", "--cases", "nope", "--quiet"], "no case 'nope'"),
        (["preview", store_path, "--case", "case-1", "--out", tmp_path / "p.png"], "no ctlabel labels"),
        (["soften", store_path, "--soft", "soft_missing"], "no label 'soft_missing'"),
        (["trimap", tmp_path, "--from", "mask"], "not a lesionkit store"),
    ]
    for args, message in cases:
        done = _run(*args)
        assert done.exit_code == 1, (args, done.output)
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctlabel: error: ") and message in lines[0], done.output


def test_usage_errors(store_path):
    done = _run("softmask", store_path, "--quiet")
    assert done.exit_code == 2 and "--from recist|readers|mask" in done.output
    done = _run("softmask", store_path, "--recist", "--from", "mask")
    assert done.exit_code == 2 and "--recist contradicts --from mask" in done.output


def test_nothing_labelled_exits_1(store_path):
    done = _run("softmask", store_path, "--from", "readers", "--quiet")
    assert done.exit_code == 1
    lines = done.stderr.strip().splitlines()  # one line before any case: no case has the readers' labels
    assert len(lines) == 1 and "unknown label 'nodule_all'" in lines[0] and "(valid: tumour)" in lines[0], lines


def test_help_is_instant_and_lists_commands():
    code = "import sys; from ctlabel.cli import main; print(sorted(m for m in ('cv2', 'pymatting', 'zarr') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    help_text = _run("--help").output
    for command in ("trimap", "softmask", "soften", "preview"):
        assert command in help_text
