"""``ctprep export --format rtstruct|seg`` and ``--label image|hu`` (ctprep.commands.export_dicom).

The truth is what the phantom wrote (its ROI masks, its HU volume) or the real Visible
Human reference; SEGs are read back with highdicom, RTSTRUCTs rasterised with rt-utils
(ctprep.formats.rtstruct), both over the series files as written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.cli import main
from ctprep.commands.export_dicom import export_image_nifti, export_labels_dicom
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.errors import CaseInputError
from ctprep.formats.dicom import read_ct_series
from ctprep.formats.dicom_outputs import read_seg_masks
from ctprep.formats.rtstruct import rasterise_rois
from ctprep.phantoms.nsclc import write_nsclc_case
from ctprep.sources.dicom_source import stack_native
from ctprep.store import SliceStore


def lps_zyx(image: nib.Nifti1Image) -> np.ndarray:
    """The NIfTI's array with axes (x, y, z) pointing to L, P, S, as (z, y, x): nibabel alone."""
    from nibabel import orientations as o

    ornt = o.ornt_transform(o.io_orientation(image.affine), o.axcodes2ornt(("L", "P", "S")))
    return o.apply_orientation(np.asarray(image.dataobj), ornt).transpose(2, 1, 0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def lung(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsclc")
    phantom = write_nsclc_case(root, 1, shape=(8, 40, 40), lungs=False)
    out = root.parent / "nsclc.zarr"
    config = ConvertConfig(source="nsclc", input_dir=str(root), output=str(out), keep_hu=True,
                           source_options={"gtvs": "merge"})
    report = convert_dataset(config, progress=False)
    assert [o.status for o in report.outcomes] == ["converted"], report.lines()
    return phantom, SliceStore.open(out), phantom.ct_files[0].parent


def native_truth(phantom) -> np.ndarray:
    """The phantom's GTV as rasterised from its own RTSTRUCT, in the series' native stack."""
    ct = read_ct_series(phantom.ct_files)
    roi = next(name for name in phantom.rois if name.startswith("GTV"))
    masks = rasterise_rois(ct.files, phantom.rtstruct, [roi], headers=ct.headers)
    return stack_native(masks[roi], ct.native_sop_uids, ct.native_shape).astype(bool), ct


def test_seg_round_trip_is_exact(lung, tmp_path):
    phantom, store, series = lung
    result = export_labels_dicom(store, "LUNG1-001", ["tumour"], series, tmp_path / "gt_seg.dcm", "seg")
    truth, ct = native_truth(phantom)
    back = read_seg_masks(result.path, ct.files)
    assert list(back) == ["tumour"]
    np.testing.assert_array_equal(back["tumour"], truth)
    assert result.voxels == (int(truth.sum()),) and truth.sum() > 0


def test_rtstruct_round_trip_dice(lung, tmp_path):
    phantom, store, series = lung
    result = export_labels_dicom(store, "LUNG1-001", ["tumour"], series, tmp_path / "gt_rt.dcm", "rtstruct")
    truth, ct = native_truth(phantom)
    masks = rasterise_rois(ct.files, result.path, ["tumour"], headers=ct.headers)
    back = stack_native(masks["tumour"], ct.native_sop_uids, ct.native_shape)
    score = dice(back, truth)
    print(f"RTSTRUCT export round trip on the NSCLC phantom: Dice {score:.4f}")
    assert score >= 0.98, score


def test_prediction_label_thresholded(lung, tmp_path):
    """A float pred_<run> label is cut at the threshold: a probability map of 0.7 inside the truth."""
    phantom, store, series = lung
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.path, copy)
    writable = SliceStore.open(copy, mode="a")
    truth = writable.read_label("LUNG1-001", "tumour")
    writable.write_label("LUNG1-001", "pred_demo", truth.astype(np.float32) * 0.7)
    result = export_labels_dicom(writable, "LUNG1-001", ["pred_demo", "tumour"], series, tmp_path / "p.dcm", "seg")
    back = read_seg_masks(result.path, native_truth(phantom)[1].files)
    np.testing.assert_array_equal(back["pred_demo"], back["tumour"])
    with pytest.raises(ValueError):
        export_labels_dicom(writable, "LUNG1-001", ["pred_demo"], series, tmp_path / "q.dcm", "seg", threshold=1.5)


def test_wrong_series_is_refused_in_one_line(lung, tmp_path):
    phantom, store, _ = lung
    other = write_nsclc_case(tmp_path / "other", 2, shape=(8, 40, 40), lungs=False, origin=(5.0, 0.0, 0.0))
    with pytest.raises(CaseInputError, match="not the series of case LUNG1-001") as info:
        export_labels_dicom(store, "LUNG1-001", ["tumour"], other.ct_files[0].parent, tmp_path / "x.dcm", "seg")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.dcm").exists()


def test_changed_files_are_refused(lung, tmp_path):
    """Same grid, other bytes (the recorded digest of the series' listing differs)."""
    import pydicom

    phantom, store, series = lung
    copy = tmp_path / "series"
    shutil.copytree(series, copy)
    first = sorted(copy.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SeriesDescription = "edited"
    ds.save_as(first)
    with pytest.raises(CaseInputError, match="sha256 of their listing"):
        export_labels_dicom(store, "LUNG1-001", ["tumour"], copy, tmp_path / "y.dcm", "rtstruct")


def test_image_and_hu_on_the_source_grid(lung, tmp_path):
    phantom, store, series = lung
    export_image_nifti(store, "LUNG1-001", "hu", tmp_path / "hu.nii.gz")
    hu = nib.load(tmp_path / "hu.nii.gz")
    assert hu.shape == tuple(store.record("LUNG1-001").source_grid.shape)
    # independent of the code: the NIfTI, put on the canonical grid by nibabel, equals the stored HU
    stored = store.read_case("LUNG1-001", labels=[], hu=True).hu
    np.testing.assert_array_equal(lps_zyx(hu), stored)
    lines = export_image_nifti(store, "LUNG1-001", "image", tmp_path / "img.nii.gz", channel=0)
    image = lps_zyx(nib.load(tmp_path / "img.nii.gz"))
    np.testing.assert_array_equal(image, store.read_case("LUNG1-001", labels=[]).image[:, 0])
    assert "uint8" in lines[0]


def test_cli_refuses_without_dicom_and_writes_with_it(lung, tmp_path):
    _, store, series = lung
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(store.path), "--case", "LUNG1-001", "--label", "tumour",
                                  "--format", "seg", "--out", str(tmp_path / "a.dcm")])
    assert result.exit_code == 1 and "needs --dicom" in result.output
    result = runner.invoke(main, ["export", str(store.path), "--case", "LUNG1-001", "--label", "tumour",
                                  "--format", "rtstruct", "--dicom", str(series), "--out", str(tmp_path / "a.dcm")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.dcm").is_file() and "RTSTRUCT" in result.output


def test_visible_human_seg_round_trip(ct, tmp_path):
    """The real Visible Human series (files not in z order): SEG export of the converted BODY is exact."""
    folder = ct.shared_data_path("rtstruct_visible_human")
    out = tmp_path / "vh.zarr"
    config = ConvertConfig(source="nsclc", input_dir=str(folder), output=str(out),
                           source_options={"rois": ["body"], "gtvs": "merge"})
    (outcome,) = convert_dataset(config, progress=False).outcomes
    store = SliceStore.open(out)
    series = folder  # the CT slices beside the RTSTRUCT and the reference NIfTIs: one CT series
    result = export_labels_dicom(store, outcome.case_id, ["tumour"], series, tmp_path / "vh_seg.dcm", "seg")
    series = read_ct_series(sorted(folder.glob("CT_*.dcm")))
    body = rasterise_rois(series.files, next(folder.glob("RS*.dcm")), ["BODY"], headers=series.headers)
    truth = stack_native(body["BODY"], series.native_sop_uids, series.native_shape).astype(bool)
    np.testing.assert_array_equal(read_seg_masks(result.path, series.files)["tumour"], truth)
    assert truth.sum() > 10_000
