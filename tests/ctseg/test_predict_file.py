"""``ctseg predict --input``: a CT file or DICOM series predicted without a store (ctseg.predict_file).

A tiny U-Net is trained on the real pyradiomics nodule store; the same CT is then given
as the LiTS NIfTI it was converted from and as a DICOM series (ctprep.phantoms.dicom,
with identifying header values added), and the file predictions must equal the store
prediction exported by ctprep.commands.export voxel for voxel. RTSTRUCT and SEG outputs
are read back with rt-utils and highdicom, including on the real Visible Human series.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
hd = pytest.importorskip("highdicom")

PHI = {"PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "InstitutionName": "St Example Hospital",
       "AccessionNumber": "ACC98765", "ReferringPhysicianName": "Who^Doctor", "StudyDate": "20200314",
       "OtherPatientIDs": "OTHER-4242", "PatientAddress": "1 Example Street", "StudyDescription": "CT CHEST PRIVATE"}
COPIED = {"PatientName"}  # ctprep.formats.dicom_outputs: the Patient module's name and id are copied


@pytest.fixture(scope="module")
def trained(tmp_path_factory, nodule_store):
    """A run folder: raw/ (the LiTS NIfTI of the nodule store), nodule.zarr, run/best.pt."""
    from ctseg.build import build_config
    from ctseg.train import train

    root = tmp_path_factory.mktemp("predict_file")
    shutil.copytree(nodule_store.parent / "raw", root / "raw")
    store = shutil.copytree(nodule_store, root / "nodule.zarr")
    layer = {"store": str(store), "target": "tumour", "out": str(root / "run"), "size": 64, "batch_size": 8,
             "epochs": 4, "steps_per_epoch": 10, "train_split": "all", "val_split": "all", "sampling": "balanced",
             "image_every": 0, "model_options": {"features": [8, 16]}}
    train(build_config(model="unet", layers=[layer]), progress=False)
    return root


@pytest.fixture(scope="module")
def store_mask(trained):
    """The store prediction of the same run, exported onto the NIfTI's grid (ctprep.commands.export)."""
    from ctprep.commands.export import export_label_nifti
    from ctseg.predict import predict_store

    store = trained / "predicted.zarr"
    shutil.copytree(trained / "nodule.zarr", store)
    predict_store(trained / "run" / "best.pt", store, name="run", progress=False)
    path = export_label_nifti(store, "volume-0", "pred_run_mask", trained / "store_mask.nii.gz").path
    mask = np.asarray(nib.load(path).dataobj)
    assert 0 < mask.sum() < mask.size, "the tiny run must predict some but not all voxels"
    return mask


@pytest.fixture(scope="module")
def dicom_series(trained):
    """The NIfTI CT written as a DICOM series (feet first: native order differs from canonical) with PHI."""
    from ctprep.formats.nifti import hu_int16, read_nifti
    from ctprep.geometry import canonicalize
    from ctprep.phantoms.dicom import FEET_FIRST_SUPINE, write_ct_series

    volume = read_nifti(trained / "raw" / "volume-0.nii")
    hu, geometry, _ = canonicalize(hu_int16(volume), volume.affine)
    folder = trained / "dicom" / "series-a"
    files = write_ct_series(folder, np.ascontiguousarray(hu), spacing=geometry.spacing, origin=geometry.origin,
                            orientation=FEET_FIRST_SUPINE, patient_id="PAT-7")
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return folder


def canonical(path: Path) -> np.ndarray:
    from ctprep.geometry import canonicalize

    image = nib.load(path)
    return np.asarray(canonicalize(np.asarray(image.dataobj), image.affine)[0])


def test_a_nifti_input_gives_the_store_prediction_on_its_own_grid(trained, store_mask, tmp_path):
    from ctseg.predict_file import predict_files

    done = predict_files(trained / "run" / "best.pt", trained / "raw" / "volume-0.nii", out=tmp_path, progress=False)
    out = tmp_path / "volume-0_pred_run_mask.nii.gz"
    assert done[0].outputs == (out,)
    image = nib.load(out)
    np.testing.assert_array_equal(np.asarray(image.dataobj), store_mask)
    np.testing.assert_allclose(image.affine, nib.load(trained / "raw" / "volume-0.nii").affine, atol=1e-5)


def test_a_dicom_series_gives_nifti_rtstruct_and_seg_that_read_back(trained, store_mask, dicom_series, tmp_path):
    from rt_utils import RTStructBuilder

    from ctprep.formats.dicom import read_ct_series
    from ctprep.formats.dicom_outputs import read_seg_masks
    from ctseg.cli import main

    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained / "run" / "best.pt"), "--input",
                                       str(dicom_series), "--out", str(tmp_path), "--format", "nifti,rtstruct,seg",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    nifti = tmp_path / "series-a_pred_run_mask.nii.gz"
    np.testing.assert_array_equal(canonical(nifti), canonical(trained / "store_mask.nii.gz"))
    native = np.asarray(nib.load(nifti).dataobj).transpose(2, 1, 0).astype(bool)  # (slice, row, col)
    series = read_ct_series(sorted(dicom_series.iterdir()))

    seg_path = tmp_path / "series-a_pred_run_seg.dcm"
    seg = hd.seg.segread(seg_path)
    source = pydicom.dcmread(series.files[0])
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = {str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced == set(series.native_sop_uids)
    np.testing.assert_array_equal(read_seg_masks(seg_path, series.files)["tumour"], native)

    rt_path = tmp_path / "series-a_pred_run_rtstruct.dcm"
    rt = RTStructBuilder.create_from(str(dicom_series), str(rt_path))  # checks the series references
    assert rt.get_roi_names() == ["tumour"]
    got = rt.get_roi_mask_by_name("tumour").transpose(2, 0, 1)  # rt-utils: (row, col, slice), square images
    assert 2 * (got & native).sum() / (got.sum() + native.sum()) >= 0.98

    for path in (seg_path, rt_path):
        ds = pydicom.dcmread(path)
        text = str(ds)
        for keyword, value in PHI.items():
            assert (value in text) == (keyword in COPIED), f"{path.name}: {keyword}"
        assert ds.PatientID == "PAT-7" and ds.PatientBirthDate == "" and ds.StudyDate == ""


def test_the_real_visible_human_series(trained, tmp_path):
    from rt_utils import RTStructBuilder

    from ctprep.formats.dicom import read_ct_series
    from ctprep.formats.dicom_outputs import read_seg_masks
    from ctseg.predict_file import predict_files

    folder = SHARED_DATA / "rtstruct_visible_human"
    if not folder.is_dir():
        pytest.skip(f"real test data not available: {folder}")
    files = sorted(folder.glob("CT_*.dcm"))
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    done = predict_files(trained / "run" / "best.pt", folder, out=tmp_path, series=uid,
                         formats=("nifti", "rtstruct", "seg"), progress=False)
    assert len(done) == 1
    nifti, rt_path, seg_path = done[0].outputs
    native = np.asarray(nib.load(nifti).dataobj).transpose(2, 1, 0).astype(bool)
    series = read_ct_series(files)
    assert native.shape == series.native_shape
    np.testing.assert_array_equal(read_seg_masks(seg_path, series.files)["tumour"], native)
    reference = nib.load(folder / "Image.nii.gz")  # that tool's own conversion: same grid and affine
    np.testing.assert_allclose(nib.load(nifti).affine, reference.affine, atol=1e-3)
    copy = tmp_path / "series"
    copy.mkdir()
    for f in files:
        shutil.copy(f, copy)
    rt = RTStructBuilder.create_from(str(copy), str(rt_path))
    got = rt.get_roi_mask_by_name("tumour").transpose(2, 0, 1)
    if native.any():
        assert 2 * (got & native).sum() / (got.sum() + native.sum()) >= 0.98
    else:
        assert not got.any()
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    for path in (rt_path, seg_path):
        out = pydicom.dcmread(path)
        for element in source:
            if element.tag.group == 0x0010 and element.keyword not in ("PatientID", "PatientName") and element.value:
                assert element.keyword not in out or out[element.tag].value in ("", None), element.keyword


def run_cli(*args) -> "object":
    from ctseg.cli import main

    return CliRunner().invoke(main, ["predict", *map(str, args), "--quiet"])


def one_error_line(result, *words) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctseg: error:"), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_input_is_one_line_and_writes_nothing(trained, dicom_series, tmp_path):
    from ctprep.phantoms.dicom import write_ct_series
    from ctseg import checkpoint as ckpt

    best = trained / "run" / "best.pt"
    out = tmp_path / "out"
    # a CT file with no usable geometry (a zero voxel size)
    bad = tmp_path / "flat.nii"
    image = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), None)
    image.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # y has no direction; no qform
    nib.save(image, bad)
    one_error_line(run_cli("--checkpoint", best, "--input", bad, "--out", out), "flat.nii", "singular")
    # a checkpoint whose model reads a window channel that came from the source's own files
    data = ckpt.load(best)
    data["preprocessing"]["windows"].append({"name": "dicom", "level": 40.0, "width": 400.0})
    data["config"]["channels"] = [1]
    foreign = tmp_path / "foreign.pt"
    ckpt.save_atomic(data, foreign)
    one_error_line(run_cli("--checkpoint", foreign, "--input", trained / "raw" / "volume-0.nii", "--out", out),
                   "dicom", "cannot give")
    # a folder of two series: listed; --series picks one
    two = tmp_path / "two"
    shutil.copytree(dicom_series, two / "a")
    write_ct_series(two / "b", np.full((3, 16, 16), -1000, np.int16), series_uid="1.2.3.4.5")
    result = run_cli("--checkpoint", best, "--input", two, "--out", out)
    one_error_line(result, "2 DICOM series", "1.2.3.4.5", "--series")
    # DICOM formats need a DICOM input
    one_error_line(run_cli("--checkpoint", best, "--input", trained / "raw" / "volume-0.nii", "--out", out,
                           "--format", "seg"), "needs DICOM", "volume-0.nii")
    assert not out.exists()
    # an output that exists is refused unless --overwrite
    assert run_cli("--checkpoint", best, "--input", two, "--series", "1.2.3.4.5", "--out", out).exit_code == 0
    written = out / "b_pred_run_mask.nii.gz"
    before = written.read_bytes()
    one_error_line(run_cli("--checkpoint", best, "--input", two, "--series", "1.2.3.4.5", "--out", out),
                   str(written), "--overwrite")
    assert written.read_bytes() == before
    assert run_cli("--checkpoint", best, "--input", two, "--series", "1.2.3.4.5", "--out", out,
                   "--overwrite").exit_code == 0
