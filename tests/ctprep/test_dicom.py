"""ctprep.formats.dicom: scanning folders and reading CT series onto the canonical grid.

Real files from ../shared/data (skipped when absent) and series generated with
ctprep.phantoms.dicom (random file names, InstanceNumber deliberately reversed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctprep.formats.dicom import AIR_HU, read_ct_series
from ctprep.formats.dicom_scan import scan_dicom_folder
from ctprep.phantoms.dicom import (FEET_FIRST_SUPINE, HEAD_FIRST_PRONE, HEAD_FIRST_SUPINE,
                                  IN_PLANE_ORIENTATIONS, write_ct_series)
from ctprep.errors import CaseInputError
from ctprep.geometry import canonicalize

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPACING = (2.5, 0.8, 0.7)
ORIGIN = (-100.0, -120.0, -300.0)


def shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real test data {folder} is absent (only on the project's machines)")
    return folder


def volume(shape=(6, 20, 16), seed=0, even=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    return (hu // 2 * 2).astype(np.int16) if even else hu


# ---- real data -----------------------------------------------------------------------------------

def test_visible_human_matches_reference_nifti():
    folder = shared("rtstruct_visible_human")
    inventory = scan_dicom_folder(folder)
    assert len(inventory.series) == 1
    (series,) = inventory.series.values()
    assert len(series.files) == 4
    assert series.patient_id == "C5NnmkW2D8md5V6uoN7OM9PAU"
    assert [r.path.name for r in inventory.rtstructs] == ["RS_Body_SpinalCord.dcm"]
    assert inventory.rtstructs[0].referenced_series_uid == series.series_uid
    assert {p.name for p, _ in inventory.unreadable} == {"Image.nii.gz", "Mask.nii.gz"}

    ct = read_ct_series(series.files)
    image = nib.load(folder / "Image.nii.gz")
    expected, geometry, _ = canonicalize(np.asarray(image.dataobj), image.affine)
    assert ct.hu.dtype == np.int16 and ct.hu.shape == (4, 512, 512)
    np.testing.assert_array_equal(ct.hu, expected)
    assert ct.geometry.shape == geometry.shape
    np.testing.assert_allclose(ct.geometry.spacing, geometry.spacing)
    np.testing.assert_allclose(ct.geometry.origin, geometry.origin)
    np.testing.assert_allclose(ct.geometry.direction, geometry.direction, atol=1e-9)
    assert ct.native_z_mm == (1000.0, 1001.0, 1002.0, 1003.0)
    # Files CT_1..CT_4 are at z 1002, 1000, 1003, 1001: sorted by position, not name.
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.name for p in series.files}
    assert [by_uid[u] for u in ct.native_sop_uids] == ["CT_2.dcm", "CT_4.dcm", "CT_1.dcm", "CT_3.dcm"]
    assert ct.notes == ()


def test_rtutils_phantom_padding_becomes_air():
    folder = shared("rtstruct_rtutils_phantom")
    inventory = scan_dicom_folder(folder)
    (series,) = inventory.series.values()
    assert len(inventory.rtstructs) == 2
    ct = read_ct_series(series.files)
    raw = np.stack([pydicom.dcmread(p).pixel_array for p in sorted(series.files)])
    padding = raw == -2000
    assert padding.sum() > 100_000
    assert ct.hu.min() == AIR_HU  # -2000 stored would be -3024 HU
    np.testing.assert_array_equal(ct.hu[padding], AIR_HU)
    np.testing.assert_array_equal(ct.hu[~padding], (raw[~padding] - 1024).astype(np.int16))
    assert any("padding" in n for n in ct.notes)
    assert ct.geometry.spacing == pytest.approx((5.0, 0.488281, 0.488281))
    assert ct.technical["Manufacturer"] == "GE MEDICAL SYSTEMS"


def test_totalseg_jpeg2000_series():
    folder = shared("totalseg_example/example_ct_dicom")
    inventory = scan_dicom_folder(folder)
    # The anonymised export has empty SeriesInstanceUIDs: grouped by folder.
    assert list(inventory.series) == ["no-series-uid:."]
    files = inventory.series["no-series-uid:."].files
    assert len(files) == 20
    ct = read_ct_series(files)
    assert ct.technical["TransferSyntaxUID"] == pydicom.uid.JPEG2000Lossless
    assert ct.hu.shape == (20, 512, 512) and ct.hu.dtype == np.int16
    assert ct.geometry.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ct.geometry.origin == pytest.approx((-249.51171875, -437.51171875, -804.5))
    # example_ct_sm.nii.gz is not this scan (3 mm, z 94..181 mm vs. this -804.5..-766.5): sanity only.
    assert ct.hu.min() == -1024 and 1000 < ct.hu.max() < 3000
    body = ct.hu[:, 200:300, 200:300]
    assert -200 < np.median(body) < 200  # soft tissue in the middle of an abdomen
    assert np.all(np.diff(ct.native_z_mm) == pytest.approx(2.0))
    one = pydicom.dcmread(files[0])
    z = ct.geometry.z_positions().index(pytest.approx(float(one.ImagePositionPatient[2])))
    np.testing.assert_array_equal(ct.hu[z], one.pixel_array.astype(np.int16) - 1024)
    assert "PatientID" not in ct.technical and "InstitutionAddress" not in ct.technical


# ---- generated series ----------------------------------------------------------------------------

def test_shuffled_names_and_orientations_land_on_the_same_array(tmp_path):
    hu = volume()
    for i, orientation in enumerate((HEAD_FIRST_SUPINE, FEET_FIRST_SUPINE, HEAD_FIRST_PRONE)):
        files = write_ct_series(tmp_path / str(i), hu, SPACING, orientation, origin=ORIGIN, seed=i)
        inventory = scan_dicom_folder(tmp_path / str(i))
        (series,) = inventory.series.values()
        assert series.patient_id == "PHANTOM-001" and sorted(series.files) == sorted(files)
        ct = read_ct_series(sorted(series.files))
        np.testing.assert_array_equal(ct.hu, hu)
        assert ct.geometry.spacing == pytest.approx(SPACING)
        assert ct.geometry.origin == pytest.approx(ORIGIN)
        assert ct.geometry.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        assert ct.notes == ()
        uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
        if orientation == FEET_FIRST_SUPINE:  # the normal points inferior: native order is descending z
            assert list(ct.native_sop_uids) == uids[::-1]
        else:
            assert list(ct.native_sop_uids) == uids
        # to_canonical maps a native-layout array exactly as hu: use the native HU themselves.
        native = np.stack([pydicom.dcmread(files[hu.shape[0] - 1 - k] if orientation == FEET_FIRST_SUPINE
                                           else files[k]).pixel_array for k in range(hu.shape[0])])
        np.testing.assert_array_equal(ct.to_canonical(native.astype(np.int16) - 1024), hu)
        # Back to the native (col, row, slice) layout for export: slice k is the k-th native slice.
        back = ct.source_grid.to_source(ct.hu)
        np.testing.assert_array_equal(back.transpose(2, 1, 0), native.astype(np.int16) - 1024)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(orientation=st.sampled_from(IN_PLANE_ORIENTATIONS), feet_first=st.booleans(), seed=st.integers(0, 99))
def test_any_orientation_gives_the_same_canonical_array(tmp_path_factory, orientation, feet_first, seed):
    hu = volume(shape=(4, 9, 7), seed=seed)
    row, col = orientation
    if feet_first:  # turning the patient around flips the row cosine's x sign (and the normal)
        flip = {"+x": "-x", "-x": "+x"}
        row, col = flip.get(row, row), flip.get(col, col)
    folder = tmp_path_factory.mktemp("orient")
    write_ct_series(folder, hu, SPACING, (row, col), origin=ORIGIN, seed=seed)
    ct = read_ct_series(sorted(folder.iterdir()))
    np.testing.assert_array_equal(ct.hu, hu)
    assert ct.geometry.origin == pytest.approx(ORIGIN)
    assert ct.geometry.spacing == pytest.approx(SPACING)


def test_rescale_slope_two(tmp_path):
    hu = volume(even=True)
    files = write_ct_series(tmp_path, hu, SPACING, slope=2.0, intercept=-1024.0)
    assert pydicom.dcmread(files[0]).RescaleSlope == 2
    np.testing.assert_array_equal(read_ct_series(files).hu, hu)


@pytest.mark.parametrize("syntax", ["implicit", "rle", "jpeg2000", "jpeg-lossless"])
def test_transfer_syntaxes_decode(tmp_path, syntax):
    hu = volume(shape=(3, 32, 40))
    files = write_ct_series(tmp_path, hu, SPACING, transfer_syntax=syntax)
    ct = read_ct_series(files)
    expected = {"implicit": "1.2.840.10008.1.2", "rle": "1.2.840.10008.1.2.5",
                "jpeg2000": "1.2.840.10008.1.2.4.90", "jpeg-lossless": "1.2.840.10008.1.2.4.70"}[syntax]
    assert ct.technical["TransferSyntaxUID"] == expected
    np.testing.assert_array_equal(ct.hu, hu)


def test_duplicates_identical_dropped_conflicting_refused(tmp_path):
    hu = volume()
    files = write_ct_series(tmp_path / "a", hu, SPACING, series_uid="1.2.3.4")
    shutil.copy(files[2], tmp_path / "a" / "copy.dcm")
    ct = read_ct_series(sorted((tmp_path / "a").iterdir()))
    np.testing.assert_array_equal(ct.hu, hu)
    assert any("duplicate" in n for n in ct.notes) and len(ct.native_sop_uids) == hu.shape[0]

    other = hu.copy()
    other[2] += 1
    conflicting = write_ct_series(tmp_path / "b", other, SPACING, series_uid="1.2.3.4", seed=5)
    with pytest.raises(CaseInputError, match="same position") as info:
        read_ct_series(files + [conflicting[2]])
    assert conflicting[2].name in str(info.value) and files[2].name in str(info.value)


def test_mixed_series_and_inconsistent_slices_refused(tmp_path):
    hu = volume()
    a = write_ct_series(tmp_path / "a", hu, SPACING, origin=ORIGIN)
    b = write_ct_series(tmp_path / "b", hu, SPACING, origin=(0, 0, 0), seed=1)
    inventory = scan_dicom_folder(tmp_path)
    assert sorted(len(s.files) for s in inventory.series.values()) == [6, 6]
    with pytest.raises(CaseInputError, match="mixed series") as info:
        read_ct_series(a + b[:1])
    assert b[0].name in str(info.value)

    small = write_ct_series(tmp_path / "c", volume(shape=(6, 20, 15)), SPACING, series_uid="9.9", seed=2)
    same = write_ct_series(tmp_path / "d", hu, SPACING, series_uid="9.9", seed=3)
    with pytest.raises(CaseInputError, match="rows/columns"):
        read_ct_series(same[:3] + small[3:4])
    rotated = write_ct_series(tmp_path / "e", hu.transpose(0, 2, 1).copy(), SPACING, ("+y", "+x"),
                              series_uid="9.9", seed=4)
    with pytest.raises(CaseInputError, match="rows/columns|ImageOrientationPatient"):
        read_ct_series(same[:3] + rotated[4:5])
    square = volume(shape=(6, 16, 16))
    s1 = write_ct_series(tmp_path / "f", square, SPACING, series_uid="8.8", seed=6)
    s2 = write_ct_series(tmp_path / "g", square, SPACING, ("-x", "-y"), series_uid="8.8", seed=7)
    with pytest.raises(CaseInputError, match="ImageOrientationPatient") as info:
        read_ct_series(s1[:3] + s2[4:5])
    assert s2[4].name in str(info.value)


def test_missing_slice_resampled_or_refused(tmp_path):
    z, y, x = np.meshgrid(np.arange(7), np.arange(10), np.arange(8), indexing="ij")
    hu = (z * 100 + y + x - 500).astype(np.int16)  # linear in z: interpolation is exact
    files = write_ct_series(tmp_path, hu, SPACING)
    files[3].unlink()
    kept = files[:3] + files[4:]
    with pytest.raises(CaseInputError, match="irregular slice spacing"):
        read_ct_series(kept, irregular="refuse")
    ct = read_ct_series(kept)
    np.testing.assert_array_equal(ct.hu, hu)
    assert ct.geometry.spacing == pytest.approx(SPACING)
    assert len(ct.native_z_mm) == 6 and any("irregular" in n for n in ct.notes)
    # A native-layout mask goes through the same z resampling (nearest): slice 3 comes from a neighbour.
    mask = np.zeros((6, 10, 8), np.uint8)
    mask[2, 4, 4] = 1
    canon = ct.to_canonical(mask)
    assert canon.shape == hu.shape and canon.dtype == np.uint8
    assert canon[2, 4, 4] == 1 and canon[:, 4, 4].sum() in (1, 2)


def test_gantry_tilt_corrected_or_refused(tmp_path):
    hu = np.full((5, 24, 20), -1000, np.int16)
    hu[:, 8, 5:15] = 300  # a bar at row 8 in every stored slice
    # Slice origins move one row (0.8 mm posterior) per slice: the stored slices are sheared.
    files = write_ct_series(tmp_path, hu, SPACING, tilt_mm=(0.0, SPACING[1]))
    with pytest.raises(CaseInputError, match="gantry tilt"):
        read_ct_series(files, irregular="refuse")
    ct = read_ct_series(files)
    assert any("gantry tilt" in n for n in ct.notes)
    assert ct.geometry.origin == pytest.approx(ORIGIN)
    for k in range(5):  # in world space the bar is at row 8 + k, air shifted in at the top
        assert list(np.nonzero(ct.hu[k, :, 10] == 300)[0]) == [8 + k]
        assert np.all(ct.hu[k, :k] == AIR_HU)
    mask = (hu == 300).astype(np.uint8)
    np.testing.assert_array_equal(ct.to_canonical(mask), (ct.hu == 300).astype(np.uint8))


def test_truncated_and_non_dicom_files(tmp_path):
    hu = volume()
    files = write_ct_series(tmp_path, hu, SPACING)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 100])
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "empty.dcm").write_bytes(b"")
    inventory = scan_dicom_folder(tmp_path)
    assert {p.name for p, _ in inventory.unreadable} == {"notes.txt", "empty.dcm"}
    (series,) = inventory.series.values()
    with pytest.raises(CaseInputError) as info:
        read_ct_series(series.files)
    assert files[1].name in str(info.value)
    files[2].write_bytes(data[:200])  # cut inside the header
    inventory = scan_dicom_folder(tmp_path)
    assert files[2] in {p for p, _ in inventory.unreadable}
    with pytest.raises(CaseInputError) as info:
        read_ct_series([files[0], files[2]])
    assert files[2].name in str(info.value)


def test_no_phi_kept(tmp_path):
    hu = volume(shape=(3, 8, 8))
    files = write_ct_series(tmp_path, hu, SPACING)
    ds = pydicom.dcmread(files[0])
    ds.PatientName, ds.PatientBirthDate, ds.InstitutionName = "Doe^Jane", "19700101", "Somewhere"
    ds.save_as(files[0])
    ct = read_ct_series(files)
    assert set(ct.technical) <= {"Modality", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel",
                                 "SliceThickness", "KVP", "PixelSpacing", "RescaleType",
                                 "TransferSyntaxUID", "Rows", "Columns", "NumberOfSlices"}
    assert "Doe" not in repr(ct.technical) + repr(ct.notes)
    assert ct.technical["NumberOfSlices"] == 3 and ct.technical["KVP"] == 120.0


def test_irregular_argument_checked(tmp_path):
    files = write_ct_series(tmp_path, volume(shape=(2, 8, 8)), SPACING)
    with pytest.raises(ValueError, match="irregular"):
        read_ct_series(files, irregular="maybe")
