"""``ctprep report``: the browsable page of a store, thumbnails written once, and ``info --cases``."""

from __future__ import annotations

import html.parser
import re

import cv2
import numpy as np
from click.testing import CliRunner

import pytest

from ctprep.cli import main
from ctprep.commands.report import THUMB, write_store_report
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.store import SliceStore


@pytest.fixture(scope="module")
def lits_store(lits_dataset_module, tmp_path_factory):
    """The phantom LiTS download converted (path, dataset)."""
    path = tmp_path_factory.mktemp("report") / "lits.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset_module.root), output=str(path)),
                    progress=False)
    return path, lits_dataset_module


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "tr" and "data-case" in attrs:
            self.rows.append(attrs)


def test_report_page_lists_every_case_with_a_thumbnail(lits_store, tmp_path):
    path, _ = lits_store
    store = SliceStore.open(path)
    result = write_store_report(path, tmp_path / "page", progress=False)
    assert result.cases == len(store.case_ids()) and result.thumbnails_written == result.cases
    page = _Page()
    page.feed(result.page.read_text())
    assert [r["data-case"] for r in page.rows] == store.case_ids()
    for image in page.images:
        assert image["loading"] == "lazy"
        thumb = cv2.imread(str(tmp_path / "page" / image["src"]))
        assert thumb.shape == (THUMB, THUMB, 3)
        assert np.any(thumb[..., 1] > thumb[..., 0] + 100)  # a label outline is drawn (green)
    for row in page.rows:  # lesion volume = lesion voxels x voxel volume, as sorted on
        record = store.record(row["data-case"])
        expected = sum(record.lesion_pixels) * float(np.prod(record.geometry.spacing)) / 1000
        assert abs(float(row["data-lesionml"]) - expected) < 1e-3
    text = result.page.read_text()
    assert "CC BY-NC-SA 4.0" in text and "Skipped cases (0)" in text
    assert "liver [-45, 105] HU" in text  # the windows in plain words


def test_report_reuses_thumbnails_until_a_case_changes(lits_store, tmp_path):
    path, _ = lits_store
    write_store_report(path, tmp_path / "page", progress=False)
    again = write_store_report(path, tmp_path / "page", progress=False)
    assert again.thumbnails_written == 0 and again.thumbnails_reused == again.cases


def test_report_cli_and_info_cases(lits_store, tmp_path):
    path, _ = lits_store
    store = SliceStore.open(path)
    result = CliRunner().invoke(main, ["report", str(path), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"wrote {re.escape(str(tmp_path / 'r' / 'index.html'))}: \d+ cases .*\n", result.stdout)
    listed = CliRunner().invoke(main, ["info", str(path), "--cases"])
    assert listed.exit_code == 0
    for case_id in store.case_ids():
        record = store.record(case_id)
        assert re.search(rf"^{re.escape(case_id)}\s+{record.split}\s+{record.num_slices}\s", listed.stdout, re.M)


def test_wrong_case_names_the_valid_ones(lits_store, tmp_path):
    path, _ = lits_store
    first = SliceStore.open(path).case_ids()[0]
    result = CliRunner().invoke(main, ["preview", str(path), "--case", first + "x", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert f"unknown case '{first}x'; did you mean '{first}'?" in line and "valid:" in line
