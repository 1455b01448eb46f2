"""DeepLesion source: the 158 real DL_info.csv rows of ../shared/data paired with 16-bit PNGs of real CT.

The PNGs are slices of the real chest CT ``pyradiomics_lung/lung1_image.nrrd`` (512x512,
the size every real row gives) written as HU + 32768 in the real folder layout; slice
number s of every series shows CT slice (s - 1) mod 48, so the stored order of the
slices can be checked. Only the slices that a converted case reads are written.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctprep.case import CaseVolume
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.phantoms.deeplesion import write_deeplesion_phantom, write_dl_info, write_png16
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.sources import SOURCES, get_source
from ctprep.formats.deeplesion import COLUMNS, case_fields, parse_lesion, parse_row
from ctprep.formats.recist import recist_mask
from ctprep.sources.deeplesion import DeepLesionSource
from ctprep.store import SliceStore
from ctprep.windowing import PRESETS, Window, window_reference
from test_sources import SourceContract

SPLIT = {"1": "train", "2": "val", "3": "test"}
# Converted end to end: every split, slice intervals 1, 2 and 5 mm, several lesions on one key slice,
# a lung window and a key slice at the start of its series (000091_01_02_004: Slice_range 1-12).
E2E_CASES = ("000089_01_01_037", "000089_05_02_176", "000090_02_01_045", "000091_01_02_004",
             "000091_03_01_093", "000096_02_01_106", "000097_02_01_065", "000098_03_01_038",
             "000098_04_02_135", "000100_01_01_057")


# ---- real rows and real CT ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_csv(ct) -> Path:
    return ct.shared_data_path("deeplesion_info", "DL_info_subset.csv")


@pytest.fixture(scope="module")
def real_rows(real_csv) -> list[dict]:
    with open(real_csv, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lung(ct) -> np.ndarray:
    import SimpleITK as sitk

    path = ct.shared_data_path("pyradiomics_lung", "lung1_image.nrrd")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int16)


def ct_slice(lung: np.ndarray, number: int) -> np.ndarray:
    """The HU written as slice ``number`` of any series."""
    return lung[(number - 1) % lung.shape[0]]


def rows_of(rows: list[dict], case_id: str) -> list[dict]:
    return [r for r in rows if r["File_name"] == f"{case_id}.png"]


def series_folder(root: Path, case_id: str) -> Path:
    return root / "Images_png" / case_id.rsplit("_", 1)[0]


def write_case_pngs(root: Path, rows: list[dict], case_id: str, lung: np.ndarray, context: int = 2) -> list[int]:
    """Write the released slices the case reads (key +- context, clamped to Slice_range)."""
    row = rows_of(rows, case_id)[0]
    key = int(row["Key_slice_index"])
    lo, hi = (int(v) for v in row["Slice_range"].split(","))
    numbers = sorted({min(max(s, lo), hi) for s in range(key - context, key + context + 1)})
    for number in numbers:
        write_png16(series_folder(root, case_id) / f"{number:03d}.png", ct_slice(lung, number))
    return numbers


def expected_rows(row: dict, context: int) -> tuple[list[int], list[int]]:
    """Per stored row (descending slice number): requested slice and the released one read."""
    key = int(row["Key_slice_index"])
    lo, hi = (int(v) for v in row["Slice_range"].split(","))
    requested = [key + context - r for r in range(2 * context + 1)]
    return requested, [min(max(s, lo), hi) for s in requested]


@pytest.fixture(scope="module")
def real_download(tmp_path_factory, real_csv, real_rows, lung) -> Path:
    root = tmp_path_factory.mktemp("deeplesion") / "DeepLesion"
    root.mkdir()
    shutil.copyfile(real_csv, root / "DL_info.csv")  # the real rows, byte for byte
    for case_id in E2E_CASES:
        write_case_pngs(root, real_rows, case_id, lung)
    for number in range(1, 13):  # the whole released range of 000091_01_02 (for --context 8)
        write_png16(root / "Images_png" / "000091_01_02" / f"{number:03d}.png", ct_slice(lung, number))
    return root


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, real_download) -> SliceStore:
    out = tmp_path_factory.mktemp("deeplesion_store") / "dl.zarr"
    config = ConvertConfig(source="deeplesion", input_dir=str(real_download), output=str(out),
                           cases=E2E_CASES, keep_hu=True)
    report = convert_dataset(config, progress=False)
    assert [o.status for o in report.outcomes] == ["converted"] * len(E2E_CASES), report.lines()
    return SliceStore.open(out)


# ---- registration and manifest ------------------------------------------------------------------
def test_registered_with_its_manifest():
    source = get_source("deeplesion")
    assert SOURCES["deeplesion"] is DeepLesionSource
    assert source.manifest.lesion_label == "recist_ellipse"
    assert [s.name for s in source.manifest.labels] == ["recist_ellipse"]
    assert source.manifest.windows() == (PRESETS["abdomen"], PRESETS["lung"], PRESETS["bone"])
    assert "036501" in source.manifest.citation and "Yan" in source.manifest.citation
    assert source.manifest.official_split is not None  # official, given per row by the CSV
    assert (source.context, source.keep_noisy, source.dicom_window) == (2, False, False)


def test_options_are_validated():
    assert get_source("deeplesion", {"context": 5, "keep_noisy": True}).context == 5
    with pytest.raises(ValueError, match="context must be an integer >= 0"):
        get_source("deeplesion", {"context": -1})
    with pytest.raises(ValueError, match="does not take the option"):
        get_source("deeplesion", {"rois": ["GTV-1"]})


# ---- every real row, parsed -----------------------------------------------------------------------
def test_all_real_rows_parse_to_their_values(tmp_path, real_csv, real_rows):
    assert len(real_rows) == 158 and list(real_rows[0]) == list(COLUMNS)
    shutil.copyfile(real_csv, tmp_path / "DL_info.csv")
    refs = get_source("deeplesion").discover(tmp_path)
    stems = sorted({r["File_name"][:-4] for r in real_rows})
    assert [ref.case_id for ref in refs] == stems and len(refs) == 152
    lesions = 0
    for ref in refs:
        rows = rows_of(real_rows, ref.case_id)
        assert ref.patient_id == ref.case_id[:6] == f"{int(rows[0]['Patient_index']):06d}"
        assert ref.split == SPLIT[rows[0]["Train_Val_Test"]]
        assert ref.path("image") == tmp_path / "Images_png" / ref.case_id[:12] / f"{ref.case_id[13:]}.png"
        parsed = [parse_row(ref.path("info"), raw) for raw in ref.rows]
        case = case_fields(ref.path("info"), ref.case_id, parsed, need_window=True)
        sx, sy, dz = (float(v) for v in rows[0]["Spacing_mm_px_"].split(","))
        assert case.spacing_xy == (sx, sy) and case.slice_interval == dz
        assert case.dicom_window == tuple(float(v) for v in rows[0]["DICOM_windows"].split(","))
        for info_row, row in zip(parsed, rows):
            assert real_rows[info_row.number - 1] is row  # row numbers count data rows from 1
            lesion = parse_lesion(info_row, case)
            coords = [float(v) for v in row["Measurement_coordinates"].split(",")]
            assert [*lesion.long_axis[0], *lesion.long_axis[1], *lesion.short_axis[0], *lesion.short_axis[1]] == coords
            record = lesion.record("x", 2, case.spacing_xy)
            np.testing.assert_allclose(record["diameters_mm"],
                                       [float(v) * sx for v in row["Lesion_diameters_Pixel_"].split(",")],
                                       atol=2e-3)
            assert record["type"] == int(row["Coarse_lesion_type"]) and record["noisy"] is False
            lesions += 1
    assert lesions == 158
    # the official split is patient-level in the real rows: one split per patient
    per_patient = {}
    for row in real_rows:
        per_patient.setdefault(row["Patient_index"], set()).add(row["Train_Val_Test"])
    assert all(len(s) == 1 for s in per_patient.values()) and len(per_patient) == 12


# ---- end to end on real rows ------------------------------------------------------------------------
def test_e2e_hu_order_geometry_and_split(real_store, real_rows, lung):
    assert real_store.case_ids() == sorted(E2E_CASES)
    assert {real_store.record(c).split for c in E2E_CASES} == {"train", "val", "test"}
    for case_id in E2E_CASES:
        row = rows_of(real_rows, case_id)[0]
        record = real_store.record(case_id)
        assert record.split == SPLIT[row["Train_Val_Test"]]
        assert record.patient_id == case_id[:6]
        sx, sy, dz = (float(v) for v in row["Spacing_mm_px_"].split(","))
        assert record.geometry.shape == (5, 512, 512)
        assert record.geometry.spacing == (dz, sy, sx)
        np.testing.assert_allclose(record.geometry.direction_matrix, np.eye(3))
        requested, slices = expected_rows(row, 2)
        assert record.annotations["slice_numbers"] == slices == requested
        np.testing.assert_allclose(record.z_positions, [-(s - 1) * dz for s in requested])
        assert list(record.z_positions) == sorted(record.z_positions)  # ascending: superior last
        data = real_store.read_case(case_id, hu=True)
        for z, number in enumerate(slices):
            np.testing.assert_array_equal(data.hu[z], ct_slice(lung, number), err_msg=f"{case_id} row {z}")
        for channel, window in enumerate(record.windows):
            np.testing.assert_array_equal(data.image[:, channel], window_reference(data.hu, window))
        assert [w.name for w in record.windows] == ["abdomen", "lung", "bone"]


def test_e2e_lesions_match_the_csv(real_store, real_rows, real_download):
    import cv2

    for case_id in E2E_CASES:
        rows = rows_of(real_rows, case_id)
        record = real_store.record(case_id)
        lesions = record.annotations["lesions"]
        assert len(lesions) == len(rows) >= 1
        assert record.annotations["key_z"] == 2 and record.annotations["key_slice"] == int(case_id[-3:])
        key_png = cv2.imread(str(series_folder(real_download, case_id) / f"{case_id[-3:]}.png"), cv2.IMREAD_UNCHANGED)
        hu = real_store.read_case(case_id, hu=True).hu
        sx = float(rows[0]["Spacing_mm_px_"].split(",")[0])
        for lesion, row in zip(lesions, rows):
            coords = [float(v) for v in row["Measurement_coordinates"].split(",")]
            # no in-plane flip: stored pixel (x, y) is the PNG's column x, row y
            assert lesion["recist"] == {"long": [coords[0:2], coords[2:4]], "short": [coords[4:6], coords[6:8]]}
            for x, y in np.reshape(coords, (4, 2)):
                c, r = int(round(x)), int(round(y))
                assert int(hu[2, r, c]) == int(key_png[r, c]) - 32768
            assert lesion["box"] == [float(v) for v in row["Bounding_boxes"].split(",")]
            assert lesion["diameters_px"] == [float(v) for v in row["Lesion_diameters_Pixel_"].split(",")]
            np.testing.assert_allclose(lesion["diameters_mm"], np.multiply(lesion["diameters_px"], sx), atol=2e-3)
            assert lesion["location"] == [float(v) for v in row["Normalized_lesion_location"].split(",")]
            assert lesion["type"] == int(row["Coarse_lesion_type"])
            assert lesion["z"] == 2 and lesion["noisy"] is False
            assert real_rows[lesion["source_row"] - 1] is row
        assert len({lesion["lesion_id"] for lesion in lesions}) == len(lesions)


def test_e2e_label_and_index(real_store, real_rows):
    labels = {}
    for case_id in E2E_CASES:
        record = real_store.record(case_id)
        mask = real_store.read_case(case_id).labels["recist_ellipse"]
        assert mask[[0, 1, 3, 4]].sum() == 0 and mask[2].sum() > 0
        for lesion in record.annotations["lesions"]:
            for x, y in (*lesion["recist"]["long"], *lesion["recist"]["short"]):
                # every RECIST endpoint touches the region the axes span
                r, c = int(round(y)), int(round(x))
                assert mask[2, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any(), (case_id, x, y)
        labels[case_id] = int(mask[2].sum())
        assert record.lesion_pixels == (0, 0, labels[case_id], 0, 0)
    index = real_store.index(lesion_only=True)
    assert sorted(zip(index.rows["z"].tolist(), index.rows["lesion_pixels"].tolist())) == \
        sorted((2, n) for n in labels.values())
    for split in ("train", "val", "test"):
        assert len(real_store.index(split=split)) == 5 * sum(
            SPLIT[rows_of(real_rows, c)[0]["Train_Val_Test"]] == split for c in E2E_CASES)


def test_e2e_manifest_lists_inputs_and_official_split(real_store, real_download):
    manifest = real_store.manifest()
    assert manifest["split"]["official"] is True
    entry = manifest["cases"]["000091_03_01_093"]
    assert entry["split"] == "test"
    roles = sorted((f["role"], f["path"]) for f in entry["inputs"])
    assert roles[0] == ("context", "Images_png/000091_03_01/091.png") and ("info", "DL_info.csv") in roles
    assert ("image", "Images_png/000091_03_01/093.png") in roles and len(roles) == 6
    assert manifest_path(real_store.path).is_file()


def test_context_clamped_to_the_released_range(real_download, real_rows, lung):
    source = get_source("deeplesion", {"context": 8})
    ref = next(r for r in source.discover(real_download) if r.case_id == "000091_01_02_004")
    volume = source.load(ref)
    requested, slices = expected_rows(rows_of(real_rows, ref.case_id)[0], 8)
    assert requested == list(range(12, -5, -1)) and slices == [*range(12, 0, -1), 1, 1, 1, 1, 1]
    notes = volume.annotations
    assert notes["requested_slices"] == requested and notes["slice_numbers"] == slices
    assert notes["clamped_rows"] == [12, 13, 14, 15, 16]
    assert notes["key_z"] == 8 and volume.hu.shape == (17, 512, 512)
    for z, number in enumerate(slices):
        np.testing.assert_array_equal(volume.hu[z], ct_slice(lung, number))
    # positions stay on the requested grid: clamped rows repeat a slice, they do not move it
    np.testing.assert_allclose(volume.geometry.z_positions(), [-(s - 1) * 5.0 for s in requested])


def test_resize_maps_recist_into_stored_pixels(tmp_path, real_download, real_rows):
    case_id = "000097_02_01_065"
    out = tmp_path / "half.zarr"
    config = ConvertConfig(source="deeplesion", input_dir=str(real_download), output=str(out),
                           cases=(case_id,), size=(256, 256), slices="lesion")
    report = convert_dataset(config, progress=False)
    assert report.outcomes[0].status == "converted", report.lines()
    store = SliceStore.open(out)
    record = store.record(case_id)
    assert record.geometry.shape == (5, 256, 256) and record.slice_indices == (2,)
    assert record.annotations["key_z"] == 0 and record.annotations["slice_numbers"] == [65]
    sx = float(rows_of(real_rows, case_id)[0]["Spacing_mm_px_"].split(",")[0])
    for lesion, row in zip(record.annotations["lesions"], rows_of(real_rows, case_id)):
        coords = np.array([float(v) for v in row["Measurement_coordinates"].split(",")]).reshape(4, 2)
        # pixel centres: x_new = (x + 0.5) * 256 / 512 - 0.5 (the field of view is kept)
        expected = (coords + 0.5) / 2 - 0.5
        stored = np.array([*lesion["recist"]["long"], *lesion["recist"]["short"]])
        np.testing.assert_allclose(stored, expected, atol=1e-9)
        np.testing.assert_allclose(lesion["diameters_px"],
                                   [float(v) / 2 for v in row["Lesion_diameters_Pixel_"].split(",")], atol=2e-3)
        np.testing.assert_allclose(lesion["diameters_mm"], np.multiply(lesion["diameters_px"], 2 * sx), atol=4e-3)
        assert lesion["z"] == 0
    assert store.read_case(case_id).labels["recist_ellipse"][0].sum() > 0


def test_z_resampling_is_refused(tmp_path, real_download):
    config = ConvertConfig(source="deeplesion", input_dir=str(real_download), output=str(tmp_path / "z.zarr"),
                           cases=("000089_01_01_037",), spacing=(2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="--spacing must keep the z axis"):
        convert_dataset(config, progress=False)


def test_dicom_window_channel(tmp_path, real_download, real_rows):
    cases = ("000098_04_02_135", "000098_03_01_038")
    out = tmp_path / "dicom.zarr"
    config = ConvertConfig(source="deeplesion", input_dir=str(real_download), output=str(out), cases=cases,
                           windows=(PRESETS["abdomen"],), source_options={"dicom_window": True})
    convert_dataset(config, progress=False)
    store = SliceStore.open(out)
    for case_id in cases:
        lo, hi = (float(v) for v in rows_of(real_rows, case_id)[0]["DICOM_windows"].split(","))
        record = store.record(case_id)
        assert record.windows == (PRESETS["abdomen"], Window.from_range("dicom", lo, hi))
        data = store.read_case(case_id)
        hu = get_source("deeplesion").load(next(r for r in get_source("deeplesion").discover(real_download)
                                                 if r.case_id == case_id)).hu
        np.testing.assert_array_equal(data.image[:, 1], window_reference(np.asarray(hu), record.windows[1]))
    config = ConvertConfig(source="deeplesion", input_dir=str(real_download), output=str(tmp_path / "x.zarr"),
                           windows=(Window(name="dicom", level=0, width=100),), source_options={"dicom_window": True})
    with pytest.raises(ValueError, match="name 'dicom' is taken"):
        convert_dataset(config, progress=False)


# ---- malformed rows: per-lesion and per-case errors, the others converted ----------------------
def test_malformed_rows_are_reported_and_others_converted(tmp_path, real_rows, lung):
    import cv2

    root = tmp_path / "bad"
    rows = [dict(r) for r in real_rows]
    by_case = {c: rows_of(rows, c) for c in E2E_CASES}
    for case_id in E2E_CASES:
        write_case_pngs(root, rows, case_id, lung)
    # one of two lesions with 7 coordinates: that lesion is left out, the other kept
    by_case["000097_02_01_065"][1]["Measurement_coordinates"] = "1, 2, 3, 4, 5, 6, 7"
    # the only lesion's RECIST outside the image: the case has no lesion left
    by_case["000089_01_01_037"][0]["Measurement_coordinates"] = "154.273, 176.808, 600.5, 209.029, " \
                                                                 "160.939, 200.511, 137.977, 191.252"
    # a released context slice is missing
    (series_folder(root, "000090_02_01_045") / "044.png").unlink()
    # the key slice is an 8-bit PNG
    key8 = series_folder(root, "000098_04_02_135") / "135.png"
    cv2.imwrite(str(key8), np.clip(ct_slice(lung, 135) // 16 + 64, 0, 255).astype(np.uint8))
    # Image_size disagrees with the PNG
    by_case["000100_01_01_057"][0]["Image_size"] = "512, 400"
    # two rows of one key slice disagree on the spacing
    by_case["000098_03_01_038"][1]["Spacing_mm_px_"] = "0.5, 0.5, 2"
    write_dl_info(root / "DL_info.csv", rows)
    config = ConvertConfig(source="deeplesion", input_dir=str(root), output=str(tmp_path / "bad.zarr"), cases=E2E_CASES)
    report = convert_dataset(config, progress=False)
    status = {o.case_id: (o.status, o.reason) for o in report.outcomes}
    kept_row, wrong_row = (rows.index(r) + 1 for r in by_case["000097_02_01_065"])
    assert status["000089_01_01_037"][0] == "skipped"
    assert "RECIST point(s) (600.5, 209.029) outside the 512x512 image" in status["000089_01_01_037"][1]
    assert f"row {rows.index(by_case['000089_01_01_037'][0]) + 1}" in status["000089_01_01_037"][1]
    assert status["000090_02_01_045"] == ("skipped", f"{series_folder(root, '000090_02_01_045') / '044.png'}: "
                                          "slice PNG not found (its slice lies within the row's Slice_range, "
                                          "so it should have been released)")
    assert status["000098_04_02_135"] == ("skipped", f"{key8}: 8-bit PNG; DeepLesion slices are 16-bit "
                                          "(value = HU + 32768)")
    assert "slice is 512x512 (width x height) but the row's Image_size says 512x400" in status["000100_01_01_057"][1]
    assert "disagree on Spacing_mm_px_" in status["000098_03_01_038"][1]
    converted = {c for c, (s, _) in status.items() if s == "converted"}
    assert converted == {"000089_05_02_176", "000091_01_02_004", "000091_03_01_093", "000096_02_01_106",
                         "000097_02_01_065"}
    record = SliceStore.open(tmp_path / "bad.zarr").record("000097_02_01_065")
    assert [lesion["source_row"] for lesion in record.annotations["lesions"]] == [kept_row]
    assert record.annotations["rejected_lesions"] == [{
        "source_row": wrong_row,
        "reason": f"row {wrong_row}: Measurement_coordinates needs 8 numbers, found 7 ('1, 2, 3, 4, 5, 6, 7')"}]


def test_check_reads_png_headers(phantom, tmp_path):
    import cv2

    from ctprep.commands.check import check_download

    root = tmp_path / "copy"
    shutil.copytree(phantom.root, root)
    source = get_source("deeplesion")
    refs = {r.case_id: r for r in source.discover(root)}
    assert all(source.header_problem(r) is None for r in refs.values())
    bad = refs["000001_01_01_018"].path("image").with_name("017.png")
    cv2.imwrite(str(bad), np.zeros((128, 128), dtype=np.uint8))
    assert source.header_problem(refs["000001_01_01_018"]) == (
        f"{bad}: 8-bit PNG of colour type 0; DeepLesion slices are 16-bit grey (colour type 0, value = HU + 32768)")
    missing = refs["000002_01_01_002"].path("image").with_name("001.png")
    missing.unlink()
    assert source.header_problem(refs["000002_01_01_002"]) == f"{missing}: slice PNG not found"
    report = check_download("deeplesion", root)
    assert dict(report.unreadable) == {"000001_01_01_018": f"{bad}: 8-bit PNG of colour type 0; DeepLesion slices "
                                                           "are 16-bit grey (colour type 0, value = HU + 32768)",
                                       "000002_01_01_002": f"{missing}: slice PNG not found"}


def test_csv_without_the_official_columns(tmp_path):
    (tmp_path / "DL_info.csv").write_text("File_name,Key_slice_index\nx.png,1\n")
    with pytest.raises(CaseInputError, match="columns Patient_index, Study_index, .* missing"):
        get_source("deeplesion").discover(tmp_path)


def test_malformed_file_names_are_ignored(tmp_path, real_rows, caplog):
    rows = [dict(real_rows[0]), dict(real_rows[1], File_name="scan.png")]
    write_dl_info(tmp_path / "DL_info.csv", rows)
    with caplog.at_level("WARNING", logger="ctprep"):
        refs = get_source("deeplesion").discover(tmp_path)
    assert [r.case_id for r in refs] == ["000089_01_01_037"]
    assert "row 2: File_name 'scan.png' is not <patient>_<study>_<series>_<slice>.png" in caplog.text


def test_rows_disagreeing_on_the_split(tmp_path, real_rows, lung):
    rows = [dict(r) for r in rows_of(real_rows, "000096_02_01_106")]
    rows[1]["Train_Val_Test"] = "3"
    write_dl_info(tmp_path / "DL_info.csv", rows)
    write_case_pngs(tmp_path, rows, "000096_02_01_106", lung)
    source = get_source("deeplesion")
    (ref,) = source.discover(tmp_path)
    assert ref.split is None
    with pytest.raises(CaseInputError, match=r"rows 1, 2 disagree on Train_Val_Test \(1 vs 3\)"):
        source.load(ref)


# ---- noisy lesions, on the phantom download -------------------------------------------------------
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_deeplesion_phantom(tmp_path_factory.mktemp("dl_phantom") / "DeepLesion", size=128, spacing_xy=1.4)


def test_noisy_lesions_left_out_by_default_and_kept_with_the_option(phantom):
    default = {r.case_id: r for r in get_source("deeplesion").discover(phantom.root)}
    kept = {r.case_id: r for r in get_source("deeplesion", {"keep_noisy": True}).discover(phantom.root)}
    assert tuple(default) == phantom.case_ids and phantom.noisy_only_case_ids == ("000003_02_01_012",)
    assert set(kept) == set(phantom.case_ids) | {"000003_02_01_012"}
    mixed = "000003_02_01_009"  # one clean and one noisy lesion
    lesions = get_source("deeplesion").load(default[mixed]).annotations["lesions"]
    assert [lesion["noisy"] for lesion in lesions] == [False]
    lesions = get_source("deeplesion", {"keep_noisy": True}).load(kept[mixed]).annotations["lesions"]
    assert [lesion["noisy"] for lesion in lesions] == [False, True]
    noisy = [lesion for lesion in phantom.lesions if lesion.noisy]
    assert [lesion["source_row"] for lesion in lesions][1] == noisy[0].source_row


def test_phantom_converts_with_exact_recist(tmp_path, phantom):
    out = tmp_path / "phantom.zarr"
    report = convert_dataset(ConvertConfig(source="deeplesion", input_dir=str(phantom.root), output=str(out)),
                             progress=False)
    assert [o.case_id for o in report.with_status("converted")] == list(phantom.case_ids)
    store = SliceStore.open(out)
    assert [store.record(c).split for c in phantom.case_ids] == ["train", "train", "val", "test"]
    for case_id in phantom.case_ids:
        record = store.record(case_id)
        truth = phantom.truth[case_id]
        mask = store.read_case(case_id).labels["recist_ellipse"][2]
        own = [lesion for lesion in phantom.lesions if lesion.case_id == case_id and not lesion.noisy]
        for stored, lesion in zip(record.annotations["lesions"], own):
            np.testing.assert_allclose(stored["recist"]["long"], lesion.long_axis, atol=1e-3)
            np.testing.assert_allclose(stored["recist"]["short"], lesion.short_axis, atol=1e-3)
        # the RECIST region of an ellipse cross-section is that ellipse
        dice = 2 * np.sum(truth & mask) / (truth.sum() + mask.sum())
        assert dice > (0.95 if case_id != "000003_02_01_009" else 0.6), (case_id, dice)
        # the lesion (0 HU) is darker than a ring of liver/body (40-60 HU) around it, in the abdomen window
        import cv2

        image = store.read_case(case_id).image[2, 0]
        ring = (cv2.dilate(truth, np.ones((7, 7), np.uint8)) == 1) & (truth == 0)
        assert image[mask == 1].mean() + 10 < image[ring].mean()
    clamped = store.record("000002_01_01_002").annotations
    assert clamped["requested_slices"] == [4, 3, 2, 1, 0] and clamped["slice_numbers"] == [4, 3, 2, 1, 1]
    assert clamped["clamped_rows"] == [4]


def test_cli_convert_with_source_options(tmp_path, phantom):
    from click.testing import CliRunner

    from ctprep.cli import main

    out = tmp_path / "cli.zarr"
    result = CliRunner().invoke(main, ["convert", "--source", "deeplesion", "--input", str(phantom.root),
                                       "--output", str(out), "--context", "1", "--keep-noisy", "--dicom-window",
                                       "--window", "abdomen", "--quiet"])
    assert result.exit_code == 0, result.output
    store = SliceStore.open(out)
    assert len(store.case_ids()) == 5
    record = store.record("000003_02_01_012")
    assert record.geometry.shape[0] == 3 and record.annotations["context"] == 1
    assert [w.name for w in record.windows] == ["abdomen", "dicom"]
    assert (record.windows[1].lo, record.windows[1].hi) == (-160, 240)
    assert store.parameters["source_options"] == {"context": 1, "keep_noisy": True, "dicom_window": True}


# ---- the RECIST region --------------------------------------------------------------------------------
def test_recist_region_of_crossing_axes():
    # axes crossing off-centre: the region passes through all four endpoints and stays inside their span
    long_axis, short_axis = ((10.0, 20.0), (40.0, 20.0)), ((20.0, 12.0), (20.0, 26.0))
    mask = recist_mask(long_axis, short_axis, (40, 50))
    for x, y in (*long_axis, *short_axis):
        assert mask[int(y), int(x)] == 1
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 40, 12, 26)
    assert mask[20, 41] == 0 and mask[11, 20] == 0
    # quarter-ellipse areas: pi/4 * (10*8 + 10*6 + 20*8 + 20*6) pixels, give or take the rim
    assert abs(mask.sum() - np.pi / 4 * (80 + 60 + 160 + 120)) < 0.08 * mask.sum()


def test_tiny_lesion_still_marks_its_slice():
    mask = recist_mask(((5.2, 5.2), (5.6, 5.2)), ((5.4, 5.1), (5.4, 5.3)), (10, 10))
    assert mask.sum() == 1 and mask[5, 5] == 1


# ---- the source contract ------------------------------------------------------------------------------
class TestDeepLesionContract(SourceContract):
    """The contract shared by every source, on the phantom DeepLesion download; NIfTI-specific
    checks are replaced by their DeepLesion counterparts."""

    source_name = "deeplesion"
    organ_label = "recist_ellipse"

    def write(self, ct, root: Path):
        return write_deeplesion_phantom(root, size=96, spacing_xy=1.8)

    def test_discover_finds_exactly_the_written_cases(self, dataset, source):
        refs = source.discover(dataset.root)
        assert [r.case_id for r in refs] == list(dataset.case_ids)
        for ref in refs:
            assert ref.source == "deeplesion" and Path(ref.root) == dataset.root
            assert ref.path("image").is_file() and ref.path("info") == dataset.info
            assert not Path(dict(ref.files)["image"]).is_absolute()

    def test_load_equals_the_canonical_phantom(self, dataset, source):
        import cv2

        for ref in source.discover(dataset.root):
            volume = source.load(ref)
            assert isinstance(volume, CaseVolume) and volume.hu.dtype == np.int16
            for z, number in enumerate(volume.annotations["slice_numbers"]):
                png = cv2.imread(str(ref.path("image").with_name(f"{number:03d}.png")), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(volume.hu[z], png.astype(np.int32) - 32768)
            label = np.asarray(volume.labels["recist_ellipse"])
            expected = np.zeros_like(label)
            for lesion in volume.annotations["lesions"]:
                expected[2] |= recist_mask(lesion["recist"]["long"], lesion["recist"]["short"], label.shape[1:])
            np.testing.assert_array_equal(label, expected)

    def test_grid_is_what_was_written(self, ct, dataset, source):
        for ref in source.discover(dataset.root):
            geometry = source.load(ref).geometry
            key = int(ref.case_id[-3:])
            assert geometry.shape == (5, 96, 96)
            np.testing.assert_allclose(geometry.spacing, (2.5, 1.8, 1.8))
            np.testing.assert_allclose(geometry.origin, (0.0, 0.0, -(key + 2 - 1) * 2.5))
            np.testing.assert_allclose(geometry.direction_matrix, np.eye(3))

    def test_inputs_are_recorded(self, ct, dataset, source):
        ref = source.discover(dataset.root)[0]
        roles = {}
        for entry in source.load(ref).inputs:
            roles.setdefault(entry.role, []).append(entry)
            path = dataset.root / entry.path
            assert entry.size == path.stat().st_size and entry.sha256 == ct.sha256_of(path)
        assert sorted(roles) == ["context", "image", "info"]
        assert [e.path for e in roles["image"]] == [str(ref.path("image").relative_to(dataset.root))]
        assert len(roles["context"]) == 4

    def test_source_grid_maps_back_to_the_file(self, dataset, source):
        import cv2

        for ref in source.discover(dataset.root):
            volume = source.load(ref)
            back = volume.source_grid.to_source(volume.hu)  # (column, row, ascending slice number)
            assert back.shape == volume.source_grid.shape == (96, 96, 5)
            for k, number in enumerate(volume.annotations["slice_numbers"][::-1]):
                png = cv2.imread(str(ref.path("image").with_name(f"{number:03d}.png")), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(back[:, :, k].T, png.astype(np.int32) - 32768)

    def check_organ_side(self, volume: CaseVolume) -> None:
        # the phantom liver (about 60 HU, beside 40 HU body) lies on the patient's right: small x
        nx = volume.hu.shape[2]
        _, _, xx = np.nonzero((volume.hu > 52) & (volume.hu < 75))
        assert np.count_nonzero(xx < nx / 2) > 2 * np.count_nonzero(xx > nx / 2)

    def test_load_missing_label_file(self, dataset, source):
        ref = source.discover(dataset.root)[0]
        context_png = ref.path("image").with_name(f"{int(ref.case_id[-3:]) + 1:03d}.png")
        context_png.unlink()
        with pytest.raises(MissingInputError) as info:
            source.load(ref)
        assert str(context_png) in str(info.value) and "not found" in str(info.value)

    def test_load_rejects_unknown_label_values(self, dataset, source):
        # DeepLesion has no label file; the counterpart is a slice that is not 16-bit
        import cv2

        ref = source.discover(dataset.root)[-1]
        cv2.imwrite(str(ref.path("image")), np.zeros((96, 96), dtype=np.uint8))
        with pytest.raises(CaseInputError, match="8-bit PNG; DeepLesion slices are 16-bit"):
            source.load(ref)


def test_check_reports_readability_only_since_the_manifest_cannot_list_every_key_slice(tmp_path):
    from ctprep.commands.check import check_download

    phantom = write_deeplesion_phantom(tmp_path / "DeepLesion", size=96, spacing_xy=1.8)
    report = check_download("deeplesion", phantom.root)
    assert report.ok and len(report.found) == 4 and not report.missing and not report.unexpected
    victim = get_source("deeplesion").discover(phantom.root)[0].path("image")  # a key slice
    victim.write_bytes(b"not a png")
    report = check_download("deeplesion", phantom.root)
    assert not report.ok and len(report.unreadable) >= 1
    assert str(victim.name) in " ".join(reason for _, reason in report.unreadable)
