"""Issue 17 D: odd names and odd fields give one line naming the file and lose nothing else.

A zero-size NIfTI dimension; names that only look like the layout (a trailing newline, non-ASCII
digits such as ``volume-\u0663.nii``): not cases, one warning each; a case id too long for the store's
file names (ENAMETOOLONG); a DeepLesion row with missing fields: only its lesion is rejected.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.phantoms.deeplesion import write_deeplesion_phantom
from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctprep.sources import get_source
from ctprep.store import SliceStore

SHAPE = (6, 24, 24)


def _convert(source: str, root: Path, out: Path, **kw):
    return convert_dataset(ConvertConfig(source=source, input_dir=str(root), output=str(out), **kw), progress=False)


def test_zero_size_nifti_dimension_names_the_file(tmp_path):
    root = tmp_path / "lits"
    write_lits_case(root, 1, shape=SHAPE)
    nib.save(nib.Nifti1Image(np.zeros((24, 0, 6), np.int16), np.eye(4)), root / "volume-5.nii")
    nib.save(nib.Nifti1Image(np.zeros((24, 0, 6), np.uint8), np.eye(4)), root / "segmentation-5.nii")
    report = _convert("lits", root, tmp_path / "out.zarr")
    (skipped,) = report.with_status("skipped")
    assert skipped.reason.startswith(f"{root / 'volume-5.nii'}: header gives a zero-size dimension"), skipped.reason
    assert "\n" not in skipped.reason and [o.case_id for o in report.with_status("converted")] == ["volume-1"]


@pytest.mark.parametrize("odd", ["volume-\u0663.nii", "volume-\uff13.nii", "volume-3.nii\n", "volume-3\n.nii"])
def test_lits_name_that_only_looks_like_the_layout(tmp_path, caplog, odd):
    root = tmp_path / "lits"
    write_lits_case(root, 1, shape=SHAPE)
    image, _ = write_lits_case(root, 3, shape=SHAPE)
    os.rename(image, root / odd)  # segmentation-3.nii stays: it must not pair with the odd volume
    with caplog.at_level(logging.WARNING):
        refs = get_source("lits").discover(root)
    assert [r.case_id for r in refs] == ["volume-1"]
    (line,) = [r.getMessage() for r in caplog.records if "does not match the layout" in r.getMessage()]
    assert repr(str(root / odd)) in line and "\n" not in line


@pytest.mark.parametrize("odd", ["case_0000\u0663", "case_00003\n"])
def test_kits19_folder_that_only_looks_like_the_layout(tmp_path, caplog, odd):
    root = tmp_path / "kits19"
    write_kits19_case(root, 1, shape=SHAPE)
    os.rename(write_kits19_case(root, 3, shape=SHAPE), root / odd)
    with caplog.at_level(logging.WARNING):
        refs = get_source("kits19").discover(root)
    assert [r.case_id for r in refs] == ["case_00001"]
    assert any(repr(str(root / odd)) in r.getMessage() for r in caplog.records)


def test_deeplesion_file_name_with_newline_is_not_a_case():
    from ctprep.formats.deeplesion import FILE_NAME

    assert FILE_NAME.fullmatch("000001_01_01_103.png")
    assert not FILE_NAME.fullmatch("000001_01_01_103.png\n") and not FILE_NAME.fullmatch("000001_01_01_1\u0660\u0663.png")


def test_case_id_too_long_for_the_store_is_one_line(tmp_path):
    root = tmp_path / "lits"
    write_lits_case(root, 1, shape=SHAPE)
    image, label = write_lits_case(root, 2, shape=SHAPE)
    number = "7" + "9" * 240  # segmentation-<241 digits>.nii is 257 bytes: keep the volume's name only
    os.rename(image, root / f"volume-{number}.nii")
    report = _convert("lits", root, tmp_path / "out.zarr")
    (skipped,) = report.with_status("skipped")
    assert skipped.reason.startswith(repr(str(root / f"volume-{number}.nii")) + ": the file name gives a case id")
    assert "store's file names" in skipped.reason and "Errno" not in skipped.reason
    assert SliceStore.open(tmp_path / "out.zarr").case_ids() == ["volume-1"]


def test_deeplesion_row_with_missing_fields_loses_only_its_lesion(tmp_path):
    phantom = write_deeplesion_phantom(tmp_path / "dl", size=64)
    rows = list(csv.reader(phantom.info.open(newline="")))
    by_case: dict[str, list[int]] = {}
    for lesion in phantom.lesions:
        by_case.setdefault(lesion.case_id, []).append(lesion.source_row)
    case_id, numbers = next((c, n) for c, n in sorted(by_case.items()) if len(n) > 1 and c in phantom.case_ids)
    cut = numbers[-1]
    rows[cut] = rows[cut][:6]  # the row ends after 6 of its 18 fields
    with phantom.info.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    report = _convert("deeplesion", phantom.root, tmp_path / "out.zarr", cases=(case_id,))
    assert [o.status for o in report.outcomes] == ["converted"], report.lines()
    annotations = SliceStore.open(tmp_path / "out.zarr").record(case_id).annotations
    assert [r["source_row"] for r in annotations["rejected_lesions"]] == [cut]
    assert "fields missing" in annotations["rejected_lesions"][0]["reason"]
    assert sorted(l["source_row"] for l in annotations["lesions"]) == sorted(numbers[:-1])
