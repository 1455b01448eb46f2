"""``ctprep demo`` end to end, as a user runs it: one real subprocess, its output read as it streams.

Checks the demo's promises: each step's summary is printed as soon as the step ends (the
first conversion summary arrives while nothing has been trained yet), every store is
right, ``index.html`` links only files that exist, and the evaluation is on held-out cases
the model never trained on.
"""

from __future__ import annotations

import csv
import html.parser
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from ctprep.conversion_manifest import manifest_path
from ctprep.store import SliceStore

EXPECTED = {"lits": (6, 248), "kits19": (2, 80), "nsclc": (2, 40), "lidc": (2, 32)}


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.targets += [value for name, value in attrs if name in ("href", "src") and value]


def run_demo_streaming(out: Path) -> tuple[list[str], bool]:
    """Run the demo; return its stdout lines and whether training had started when the first summary arrived."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lesionkit.cli", "demo", str(out), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines, trained_before_first_summary = [], None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if trained_before_first_summary is None and " converted, " in line:
            trained_before_first_summary = (out / "runs").exists()
    stderr = process.stderr.read()
    assert process.wait() == 0, stderr
    assert "Traceback" not in stderr, stderr
    return lines, bool(trained_before_first_summary)


def test_demo(tmp_path):
    out = tmp_path / "demo"
    lines, trained_early = run_demo_streaming(out)
    text = "\n".join(lines)
    assert not trained_early, "the first conversion summary came after training had started"
    assert text.index(" converted, ") < text.index("training a small U-Net")
    assert "loading torch" in text and "loading the matting kernels" in text
    for source, (cases, slices) in EXPECTED.items():
        store = SliceStore.open(out / f"{source}.zarr")
        assert len(store.case_ids()) == cases
        assert len(store.index()) == slices
        lesion = int(store.index().has_lesion.sum())
        assert 0 < lesion < slices
        assert f"{out / f'{source}.zarr'}: {cases} converted, 0 already complete, 0 skipped; {slices} slices" in text
        assert f"  slices       {slices} ({lesion} with lesion)" in text
        assert manifest_path(out / f"{source}.zarr").is_file()
    for png in ("lits_volume-0.png", "kits19_case_00000.png", "nsclc_LUNG1-001.png", "lidc_LIDC-IDRI-0001.png"):
        assert f"preview: {out / png}" in text
        assert cv2.imread(str(out / png)) is not None
    _check_stores(out)
    _check_index(out)
    _check_held_out(out, text)


def _check_stores(out: Path) -> None:
    # the LiTS orientations landed on the same canonical anatomy: liver on the patient's right
    store = SliceStore.open(out / "lits.zarr")
    for case_id in store.case_ids():
        liver = store.read_case(case_id).labels["liver"]
        assert np.nonzero(liver)[2].mean() < 0.4 * liver.shape[2]
    nsclc = SliceStore.open(out / "nsclc.zarr").read_case("LUNG1-001").labels
    assert set(nsclc) == {"tumour", "gtv_1", "gtv_2", "lungs"}
    np.testing.assert_array_equal(nsclc["tumour"], nsclc["gtv_1"] | nsclc["gtv_2"])
    lidc = SliceStore.open(out / "lidc.zarr").read_case("LIDC-IDRI-0001").labels
    assert lidc["nodule_any"].sum() > lidc["nodule_consensus_50"].sum() > lidc["nodule_all"].sum() > 0


def _check_index(out: Path) -> None:
    page = (out / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert len(parser.targets) >= 12, parser.targets  # previews, store pages, soft masks, the evaluation report
    for target in parser.targets:
        assert (out / target).is_file(), f"index.html links {target}, which does not exist"
    for needed in ("lits.report/index.html", "deeplesion_", "_softmask.png", "runs/unet/eval/test/report.html"):
        assert any(needed in t for t in parser.targets), needed
    assert page.count("<h2>") == 7  # five conversions, soft masks, training


def _check_held_out(out: Path, text: str) -> None:
    store = SliceStore.open(out / "lits.zarr")
    splits = {c: store.record(c).split for c in store.case_ids()}
    assert set(splits.values()) == {"train", "val", "test"}
    with open(out / "runs" / "unet" / "eval" / "test" / "per_case.csv", newline="") as handle:
        evaluated = {row["case"] for row in csv.DictReader(handle)}
    assert evaluated and all(splits[c] == "test" for c in evaluated)
    trained = {c for c, s in splits.items() if s == "train"}
    assert not evaluated & trained
    assert f"never trained on: {', '.join(sorted(evaluated))}" in text
