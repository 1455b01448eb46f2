"""RTSTRUCT rasterisation (ctprep.formats.rtstruct).

Real RTSTRUCTs against an independent reference mask, rt-utils round trips of known masks, error paths.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rt_utils import RTStructBuilder

from ctprep.errors import CaseInputError, MissingInputError
from ctprep.formats.rtstruct import find_gtvs, match_roi, rasterise_rois, roi_names

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VISIBLE_HUMAN = SHARED_DATA / "rtstruct_visible_human"
RTUTILS_PHANTOM = SHARED_DATA / "rtstruct_rtutils_phantom"
PATIENT_NAME = "Doe^Jane"  # must never appear in an error message

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real test files absent ({SHARED_DATA})")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# --------------------------------------------------------------------------- real files


@needs_shared
def test_visible_human_matches_reference_mask():
    ct_files = sorted(VISIBLE_HUMAN.glob("CT_*.dcm"))
    rs = VISIBLE_HUMAN / "RS_Body_SpinalCord.dcm"
    assert len(ct_files) == 4
    assert roi_names(rs) == ["BODY", "SpinalCord"]
    masks = rasterise_rois(ct_files, rs, ["BODY", "SpinalCord"])

    # The reference: SimpleITK reads LPS; with an identity direction the array is (z, row, col)
    # and voxel (col, row, k) lies at origin + (col, row, k) * spacing.
    reference = sitk.ReadImage(str(VISIBLE_HUMAN / "Mask.nii.gz"))
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(VISIBLE_HUMAN / "Image.nii.gz")))
    labels = sitk.GetArrayFromImage(reference)
    assert np.allclose(reference.GetDirection(), np.eye(3).ravel())
    assert labels.shape == image.shape == (4, 512, 512)
    ref_z = [reference.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(labels.shape[0])]

    body_dice, cord_dice = [], []
    overall = {"BODY": [0, 0, 0], "SpinalCord": [0, 0, 0]}  # intersection, ours, reference
    for f in ct_files:
        ds = pydicom.dcmread(f)
        uid = ds.SOPInstanceUID
        ipp = [float(v) for v in ds.ImagePositionPatient]
        assert list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
        assert np.allclose(ipp[:2], reference.GetOrigin()[:2])
        assert np.allclose(ds.PixelSpacing, reference.GetSpacing()[:2])
        k = int(np.argmin([abs(z - ipp[2]) for z in ref_z]))
        assert abs(ref_z[k] - ipp[2]) < 1e-3, "no reference slice at this CT slice's z"
        # Verify the voxel correspondence with the reference tool's own image: same HU, no flip.
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(image[k], hu)
        # Mask.nii.gz: 1 = SpinalCord painted over 2 = BODY, so BODY is every labelled voxel.
        for roi, ref in (("BODY", labels[k] >= 1), ("SpinalCord", labels[k] == 1)):
            ours = masks[roi][uid]
            assert ours.shape == (512, 512) and ours.dtype == np.uint8 and set(np.unique(ours)) <= {0, 1}
            (body_dice if roi == "BODY" else cord_dice).append(dice(ours, ref))
            overall[roi][0] += np.count_nonzero(ours.astype(bool) & ref)
            overall[roi][1] += np.count_nonzero(ours)
            overall[roi][2] += np.count_nonzero(ref)
    assert set(masks["BODY"]) == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_files}
    body = 2 * overall["BODY"][0] / (overall["BODY"][1] + overall["BODY"][2])
    cord = 2 * overall["SpinalCord"][0] / (overall["SpinalCord"][1] + overall["SpinalCord"][2])
    assert body >= 0.99 and min(body_dice) >= 0.99, (body, body_dice)
    assert cord >= 0.93 and min(cord_dice) >= 0.93, (cord, cord_dice)


@needs_shared
def test_rtutils_phantom_rasterises_with_hole():
    ct = [RTUTILS_PHANTOM / "ct_1.dcm", RTUTILS_PHANTOM / "ct_2.dcm"]
    uid1, uid2 = (pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct)
    masks = rasterise_rois(ct[::-1], RTUTILS_PHANTOM / "rt.dcm", ["ROI-1"])
    assert set(masks["ROI-1"]) == {uid1, uid2}
    on1, on2 = masks["ROI-1"][uid1], masks["ROI-1"][uid2]
    assert on2.sum() == 0
    # Outer square x, y in [-51, -27] mm and an inner contour [-47, -32] mm drawn as a hole, at
    # 0.488281 mm pixels from -125 mm: pixels 152..201 filled, inner boundary 160..191 kept, 161..190 empty.
    to_px = lambda mm: round((mm + 125) / 0.488281)  # noqa: E731
    assert (to_px(-51), to_px(-27)) == (152, 201)
    assert on1[152:202, 152:202].sum() == on1.sum()
    assert on1[175, 175] == 0 and on1[155, 155] == 1
    hole = on1[162:190, 162:190]
    assert hole.sum() == 0
    assert 1500 < on1.sum() < 1800, on1.sum()  # 50x50 square less a ~30x30 hole


@needs_shared
def test_invalid_reference_is_a_case_error():
    ct = [RTUTILS_PHANTOM / "ct_1.dcm", RTUTILS_PHANTOM / "ct_2.dcm"]
    rs = RTUTILS_PHANTOM / "invalid_reference_rt.dcm"
    assert roi_names(rs) == ["ROI-1", "ROI-2", "ROI-3", "ROI-4"]
    with pytest.raises(CaseInputError) as err:
        rasterise_rois(ct, rs, ["ROI-3"])
    message = str(err.value)
    assert err.value.path == str(rs)
    assert "'ROI-3'" in message and "1 of the 3 CT slices" in message and "not in the series" in message


@needs_shared
def test_ct_slice_is_not_an_rtstruct():
    with pytest.raises(CaseInputError, match="not an RTSTRUCT"):
        roi_names(RTUTILS_PHANTOM / "ct_1.dcm")


# --------------------------------------------------------------------------- generated data

SIZE = 48
SPACING = 0.75
ORIGIN_XY = (-20.0, 10.0)
Z_STEP = 2.5


def write_ct_series(folder: Path, n: int = 6, *, flip: bool = False) -> list[Path]:
    """n CT slices 48x48 written in shuffled file order; flip: row direction -x (normal -z)."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    order = list(range(n))
    random.Random(n).shuffle(order)
    for name, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = PATIENT_NAME, "P1", "20240101", "120000"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0] if flip else [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ORIGIN_XY[0], ORIGIN_XY[1], -50.0 + Z_STEP * k]
        ds.PixelSpacing = [SPACING, SPACING]
        ds.SliceThickness = Z_STEP
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.full((SIZE, SIZE), -1000 + 10 * k, dtype=np.int16).tobytes()
        path = folder / f"img{name:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def expected_masks(uids_in_order: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Known masks per ROI and slice (slice index = rt-utils' order of the series)."""
    blank = np.zeros((SIZE, SIZE), bool)
    n = len(uids_in_order)
    out = {name: [blank.copy() for _ in range(n)] for name in ("Disc", "Ring", "GTV-1", "GTV-2")}
    for k in (1, 2, 3):
        out["Disc"][k] = disc(20, 26, 9 + k)
    out["Ring"][2] = disc(24, 24, 15) & ~disc(24, 24, 7)
    out["Ring"][3] = disc(24, 24, 15) & ~disc(20, 20, 4) & ~disc(30, 29, 4)  # two holes
    out["GTV-1"][0] = disc(12, 12, 5)
    out["GTV-1"][1] = disc(12, 12, 6) | disc(35, 36, 4)  # two islands on one slice
    out["GTV-2"][4] = disc(30, 15, 7)
    return {name: dict(zip(uids_in_order, slices)) for name, slices in out.items()}


@pytest.fixture(scope="module", params=[False, True], ids=["axial", "flipped-x"])
def generated(request, tmp_path_factory):
    """A CT series and an rt-utils RTSTRUCT written from known masks (plus an empty ROI)."""
    folder = tmp_path_factory.mktemp("gen")
    files = write_ct_series(folder / "ct", flip=request.param)
    rt = RTStructBuilder.create_new(dicom_series_path=str(folder / "ct"))
    uids = [str(s.SOPInstanceUID) for s in rt.series_data]
    truth = expected_masks(uids)
    for name, per_uid in truth.items():
        rt.add_roi(mask=np.stack([per_uid[u] for u in uids], axis=-1), name=name)
    rt.add_roi(mask=np.zeros((SIZE, SIZE, len(uids)), bool), name="Empty")
    rs = folder / "rs.dcm"
    rt.save(str(rs))
    return files, rs, truth


def test_generated_round_trip_is_exact(generated):
    files, rs, truth = generated
    assert roi_names(rs) == ["Disc", "Ring", "GTV-1", "GTV-2", "Empty"]
    masks = rasterise_rois(files, rs, ["Disc", "Ring", "GTV-1", "GTV-2"])
    assert set(masks) == {"Disc", "Ring", "GTV-1", "GTV-2"}
    for name, per_uid in truth.items():
        assert set(masks[name]) == set(per_uid), name
        for uid, expected in per_uid.items():
            got = masks[name][uid]
            assert got.dtype == np.uint8 and got.shape == (SIZE, SIZE)
            assert np.count_nonzero(got != expected) == 0, (name, uid, int(got.sum()), int(expected.sum()))
    ring = next(m for m in masks["Ring"].values() if m.any() and m[24, 24] == 0)
    assert ring.sum() == np.count_nonzero(disc(24, 24, 15) & ~disc(24, 24, 7))  # the hole stays a hole


def test_roi_without_contours(generated):
    files, rs, _ = generated
    with pytest.raises(CaseInputError, match="'Empty' has no contours"):
        rasterise_rois(files, rs, ["Empty"])


def test_missing_roi_lists_available(generated):
    files, rs, _ = generated
    with pytest.raises(CaseInputError) as err:
        rasterise_rois(files, rs, ["GTV-3"])
    # the ROIs the conversion did not ask for are listed by hash only (an ROI name is free text)
    assert "no ROI named 'GTV-3'" in str(err.value)
    assert str(err.value).count("'roi-") == 5 and "Disc" not in str(err.value)
    assert PATIENT_NAME not in str(err.value) and "Doe" not in str(err.value)


def _edit(rs: Path, out: Path, roi: str, change) -> Path:
    """Copy ``rs`` to ``out`` with change(contour_sequence, datasets by uid) applied to one ROI's contours."""
    ds = pydicom.dcmread(rs)
    number = next(i.ROINumber for i in ds.StructureSetROISequence if i.ROIName == roi)
    item = next(i for i in ds.ROIContourSequence if str(i.ReferencedROINumber) == str(number))
    change(item.ContourSequence)
    ds.save_as(out)
    return out


def _contour_like(template: Dataset, points_mm) -> Dataset:
    c = copy.deepcopy(template)
    pts = np.asarray(points_mm, dtype=float)
    c.ContourData = [float(v) for v in pts.ravel()]
    c.NumberOfContourPoints = len(pts)
    return c


def _z_of(contour: Dataset) -> float:
    return float(contour.ContourData[2])


def test_short_and_out_of_view_contours(generated, tmp_path):
    files, rs, truth = generated

    def add_junk(seq):
        t = seq[0]
        z = _z_of(t)
        seq.append(_contour_like(t, [[0.0, 20.0, z]]))  # 1 point: rt-utils crashes on it
        seq.append(_contour_like(t, [[-10.0, 20.0, z], [0.0, 25.0, z]]))  # 2 points: rt-utils paints a line
        seq.append(_contour_like(t, [[500, 500, z], [520, 500, z], [520, 520, z]]))  # far outside the image

    edited = _edit(rs, tmp_path / "junk.dcm", "GTV-2", add_junk)
    got = rasterise_rois(files, edited, ["GTV-2"])["GTV-2"]
    for uid, expected in truth["GTV-2"].items():
        assert np.array_equal(got[uid], expected), uid

    def only_short(seq):
        t = seq[0]
        z = _z_of(t)
        seq.clear()
        seq.append(_contour_like(t, [[0.0, 20.0, z]]))
        seq.append(_contour_like(t, [[-10.0, 20.0, z], [0.0, 25.0, z]]))

    with pytest.raises(CaseInputError, match="no closed contour of 3 or more points"):
        rasterise_rois(files, _edit(rs, tmp_path / "short.dcm", "GTV-2", only_short), ["GTV-2"])

    def only_outside(seq):
        t = seq[0]
        z = _z_of(t)
        seq.clear()
        seq.append(_contour_like(t, [[500, 500, z], [520, 500, z], [520, 520, z]]))

    with pytest.raises(CaseInputError, match="cover no pixel"):
        rasterise_rois(files, _edit(rs, tmp_path / "out.dcm", "GTV-2", only_outside), ["GTV-2"])


def test_partly_outside_contour_is_clipped(generated, tmp_path):
    files, rs, _ = generated
    ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
    row_dir = np.asarray(ds0.ImageOrientationPatient[:3], float)
    origin = np.asarray(ds0.ImagePositionPatient, float)

    def square(seq):  # pixels rows/cols -10..9: only rows/cols 0..9 are in the image
        t = seq[0]
        z = _z_of(t)
        seq.clear()
        corners = [(-10, -10), (9, -10), (9, 9), (-10, 9)]  # (col, row)
        pts = [origin[:2] + SPACING * (c * row_dir[:2] + r * np.array([0.0, 1.0])) for c, r in corners]
        seq.append(_contour_like(t, [[p[0], p[1], z] for p in pts]))

    got = rasterise_rois(files, _edit(rs, tmp_path / "clip.dcm", "GTV-2", square), ["GTV-2"])["GTV-2"]
    on = [m for m in got.values() if m.any()]
    assert len(on) == 1 and on[0].sum() == 100 and on[0][:10, :10].all()


def test_contour_without_image_reference_uses_its_plane(generated, tmp_path):
    files, rs, truth = generated

    def drop_refs(seq):
        for c in seq:
            del c.ContourImageSequence

    got = rasterise_rois(files, _edit(rs, tmp_path / "noref.dcm", "GTV-1", drop_refs), ["GTV-1"])["GTV-1"]
    for uid, expected in truth["GTV-1"].items():
        assert np.array_equal(got[uid], expected), uid


def test_contour_off_its_slice_plane(generated, tmp_path):
    files, rs, _ = generated

    def shift(seq):
        pts = np.asarray(seq[0].ContourData, float).reshape(-1, 3)
        pts[:, 2] += Z_STEP  # now lies on the next slice's plane, still referring to its own
        seq[0].ContourData = [float(v) for v in pts.ravel()]

    with pytest.raises(CaseInputError, match="off the plane of slice"):
        rasterise_rois(files, _edit(rs, tmp_path / "shift.dcm", "GTV-2", shift), ["GTV-2"])


def test_contours_on_slices_absent_from_series(generated):
    files, rs, truth = generated
    # Leave out the slice carrying GTV-2's only contour.
    gtv2_uid = next(u for u, m in truth["GTV-2"].items() if m.any())
    kept = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID != gtv2_uid]
    assert len(kept) == len(files) - 1
    with pytest.raises(CaseInputError, match=r"'GTV-2': 1 of the 1 CT slices .* not in the series \(5 slices\)"):
        rasterise_rois(kept, rs, ["GTV-2"])
    # ROIs with every contour on the slices given still rasterise, one entry per slice given.
    disc_masks = rasterise_rois(kept, rs, ["Disc"])["Disc"]
    assert len(disc_masks) == 5 and gtv2_uid not in disc_masks


def test_unreadable_inputs(generated, tmp_path):
    files, rs, _ = generated
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(CaseInputError, match="not a readable DICOM file") as err:
        rasterise_rois(files, junk, ["GTV-1"])
    assert err.value.path == str(junk)
    with pytest.raises(CaseInputError, match="not an RTSTRUCT"):
        rasterise_rois(files, files[0], ["GTV-1"])
    with pytest.raises(MissingInputError):
        roi_names(tmp_path / "absent.dcm")
    with pytest.raises(CaseInputError, match="not a readable DICOM file") as err:
        rasterise_rois([*files, junk], rs, ["GTV-1"])
    assert err.value.path == str(junk)
    with pytest.raises(CaseInputError, match="no CT series files"):
        rasterise_rois([], rs, ["GTV-1"])


def test_gantry_tilt_refused(tmp_path, generated):
    _, rs, _ = generated
    files = write_ct_series(tmp_path / "ct", n=3)
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = [ORIGIN_XY[0], ORIGIN_XY[1] + 3.0, ds.ImagePositionPatient[2]]
    ds.save_as(files[1])
    with pytest.raises(CaseInputError, match="shifted in-plane"):
        rasterise_rois(files, rs, ["GTV-1"])


# --------------------------------------------------------------------------- names


def test_match_roi():
    names = ["BODY", "Spinal_Cord", "gtv 1", "GTV-2", "Lung-L", "lung_l2"]
    assert match_roi(names, "BODY") == "BODY"
    assert match_roi(names, "body") == "BODY"
    assert match_roi(names, "spinal cord") == "Spinal_Cord"
    assert match_roi(names, "SpinalCord") == "Spinal_Cord"
    assert match_roi(names, "GTV-1") == "gtv 1"
    assert match_roi(names, "gtv_2") == "GTV-2"
    assert match_roi(names, "Lung L") == "Lung-L"
    assert match_roi(names, "Lung") is None
    assert match_roi(names, "Cord", aliases=["spinalcord", "SC"]) == "Spinal_Cord"
    assert match_roi(names, "External", aliases=["Skin", "body"]) == "BODY"
    # exact beats normalised, and the wanted name beats an alias
    assert match_roi(["GTV 1", "GTV-1"], "GTV-1") == "GTV-1"
    assert match_roi(["Body", "Skin"], "skin", aliases=["Body"]) == "Skin"
    with pytest.raises(CaseInputError, match="ambiguous"):
        match_roi(["GTV 1", "gtv_1"], "GTV-1")
    assert match_roi([], "BODY") is None


def test_find_gtvs():
    names = ["GTV-2", "BODY", "GTV-1", "gtv3", "GTV_10", "Gtv 04", "GTV", "GTVp", "GTV-1vol", "CTV-1",
             "PTV-1", "GTV-0", "GTV-1 ring", "Lung-GTV-1", "ITV-1", "gtv-5 "]
    assert find_gtvs(names) == ["GTV-1", "GTV-2", "gtv3", "Gtv 04", "gtv-5 ", "GTV_10"]
    assert find_gtvs(["GTV-1", "GTV 1"]) == ["GTV 1", "GTV-1"]
    assert find_gtvs(["BODY", "Heart"]) == []
