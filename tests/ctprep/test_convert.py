"""End-to-end conversion of phantom downloads into slice stores (ctprep.convert)."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version

import numpy as np
import pytest

from ctprep.case import SPLITS
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.datasets import SplitConfig, assign_split, load_dataset_manifest
from ctprep.errors import CaseInputError, StoreParameterError
from ctprep.store import SliceStore
from ctprep.windowing import apply_windows, parse_window, window_reference


def convert(dataset, output, **kwargs):
    config = ConvertConfig(source=dataset.source, input_dir=str(dataset.root), output=str(output), **kwargs)
    return config, convert_dataset(config, progress=False)


def expected_slices(has_lesion: np.ndarray, margin: int) -> list[int]:
    """Indices within ``margin`` slices of a lesion slice, computed the slow, obvious way."""
    lesion = np.flatnonzero(has_lesion)
    return [i for i in range(len(has_lesion)) if any(abs(i - j) <= margin for j in lesion)]


@pytest.fixture(scope="module")
def converted(lits_dataset_module, tmp_path_factory):
    """The LiTS phantom download converted with default parameters."""
    output = tmp_path_factory.mktemp("converted") / "lits.zarr"
    config, report = convert(lits_dataset_module, output)
    return lits_dataset_module, config, report, output


# ---- the default conversion ----------------------------------------------------------------

def test_every_case_is_converted(converted):
    dataset, _, report, output = converted
    store = SliceStore.open(output)
    assert store.case_ids() == sorted(dataset.case_ids)
    assert [o.case_id for o in report.outcomes] == list(dataset.case_ids)
    assert [o.status for o in report.outcomes] == ["converted"] * 3
    assert report.slices_written == 3 * dataset.shape[0]
    assert store.incomplete_case_ids() == []
    line = report.lines()[0]
    assert line.startswith(f"{output}: 3 converted, 0 already complete, 0 skipped; 72 slices in ")


def test_record_fields(converted, ct):
    dataset, config, _, output = converted
    store = SliceStore.open(output)
    manifest = load_dataset_manifest("lits")
    axcodes = {"volume-0": "RAS", "volume-1": "LPS", "volume-2": "ARI"}
    for case_id in dataset.case_ids:
        record = store.record(case_id)
        _, seg = dataset.phantom(case_id)
        assert record.case_id == case_id and record.patient_id == case_id and record.source == "lits"
        assert record.split in SPLITS
        assert record.split == assign_split(case_id, SplitConfig())
        assert [w.name for w in record.windows] == ["liver", "abdomen"]
        assert record.windows == manifest.windows()
        assert record.labels == manifest.labels
        assert record.lesion_label == "tumour"
        assert record.slice_indices == tuple(range(dataset.shape[0]))
        z = np.asarray(record.z_positions)
        assert np.all(np.diff(z) > 0)
        np.testing.assert_allclose(z, ct.ORIGIN[2] + ct.SPACING[0] * np.arange(dataset.shape[0]), atol=1e-4)
        expected_pixels = np.count_nonzero((seg == 2).reshape(dataset.shape[0], -1), axis=1)
        assert record.lesion_pixels == tuple(int(v) for v in expected_pixels)
        assert sum(record.lesion_pixels) > 0
        assert record.has_hu is False
        assert record.geometry.shape == dataset.shape
        np.testing.assert_allclose(record.geometry.spacing, ct.SPACING, rtol=1e-6)
        assert record.canonical_geometry == record.geometry
        assert record.source_grid.axcodes == axcodes[case_id]
        assert record.parameters == json.loads(json.dumps(config.content_parameters()
                                                          | {"windows": [w.to_dict() for w in manifest.windows()]}))
        assert "inputs" not in record.to_dict()  # input paths only in the manifest (PHI, issue 17 C7)
        assert {f["role"] for f in store.manifest()["cases"][case_id]["inputs"]} == {"image", "label"}


def test_arrays_equal_the_phantom(converted):
    dataset, _, _, output = converted
    store = SliceStore.open(output)
    windows = load_dataset_manifest("lits").windows()
    for case_id in dataset.case_ids:
        hu, seg = dataset.phantom(case_id)
        data = store.read_case(case_id)
        assert data.image.dtype == np.uint8
        assert data.image.shape == (dataset.shape[0], 2, *dataset.shape[1:])
        np.testing.assert_array_equal(data.image, apply_windows(hu, windows))
        for channel, window in enumerate(windows):  # and the window formula itself
            np.testing.assert_array_equal(data.image[:, channel], window_reference(hu, window))
        assert set(data.labels) == {"liver", "tumour"}
        np.testing.assert_array_equal(data.labels["liver"], (seg >= 1).astype(np.uint8))
        np.testing.assert_array_equal(data.labels["tumour"], (seg == 2).astype(np.uint8))
        lesion = np.count_nonzero(data.labels["tumour"].reshape(len(data.labels["tumour"]), -1), axis=1)
        assert tuple(lesion) == data.record.lesion_pixels


def test_slice_index(converted):
    dataset, _, _, output = converted
    store = SliceStore.open(output)
    index = store.index()
    assert len(index) == 3 * dataset.shape[0]
    expected_lesion = sum(np.count_nonzero((dataset.phantom(c)[1] == 2).reshape(dataset.shape[0], -1).any(1))
                          for c in dataset.case_ids)
    assert int(index.has_lesion.sum()) == expected_lesion
    assert index.keys()[:2] == [("volume-0", 0), ("volume-0", 1)]
    for split in SPLITS:
        cases = {c for c in dataset.case_ids if store.record(c).split == split}
        assert set(index.filter(split=split).rows["case"].tolist()) == cases


# ---- slice selection -----------------------------------------------------------------------

@pytest.mark.parametrize("mode, margin", [("lesion", 0), ("lesion+1", 1), ("lesion+3", 3), ("lesion+40", 40)])
def test_slice_modes_keep_the_expected_slices(lits_dataset_module, tmp_path, ct, mode, margin):
    dataset = lits_dataset_module
    _, report = convert(dataset, tmp_path / "s.zarr", slices=mode, keep_hu=True)
    assert [o.status for o in report.outcomes] == ["converted"] * 3
    store = SliceStore.open(tmp_path / "s.zarr")
    windows = load_dataset_manifest("lits").windows()
    for case_id in dataset.case_ids:
        hu, seg = dataset.phantom(case_id)
        keep = expected_slices((seg == 2).reshape(len(seg), -1).any(1), margin)
        data = store.read_case(case_id, hu=True)
        assert list(data.record.slice_indices) == keep
        assert data.record.num_slices == len(keep) == data.image.shape[0]
        np.testing.assert_allclose(data.record.z_positions, ct.ORIGIN[2] + ct.SPACING[0] * np.asarray(keep),
                                   atol=1e-4)
        np.testing.assert_array_equal(data.hu, hu[keep])
        np.testing.assert_array_equal(data.image, apply_windows(hu[keep], windows))
        np.testing.assert_array_equal(data.labels["tumour"], (seg[keep] == 2).astype(np.uint8))
        assert data.record.lesion_pixels == tuple(int(n) for n in (seg[keep] == 2).reshape(len(keep), -1).sum(1))
        # the geometry still describes the whole grid; slice_indices say which slices were kept
        assert data.record.geometry.shape == dataset.shape
    if margin == 0:
        assert all(n > 0 for r in store.records() for n in r.lesion_pixels)
    assert len(store.index()) == sum(r.num_slices for r in store.records())


def test_lesion_mode_skips_a_case_without_lesion(tmp_path, ct):
    import nibabel as nib

    dataset = ct.write_lits(tmp_path / "in", cases={0: ("", ("R", "A", "S"), False), 1: ("", ("R", "A", "S"), False)})
    path = tmp_path / "in" / "segmentation-1.nii"
    image = nib.load(path)
    seg = np.asarray(image.dataobj).copy()
    seg[seg == 2] = 1
    nib.save(nib.Nifti1Image(seg, image.affine, image.header), path)
    _, report = convert(dataset, tmp_path / "s.zarr", slices="lesion")
    assert [o.status for o in report.outcomes] == ["converted", "skipped"]
    reason = report.outcomes[1].reason
    assert "segmentation-1.nii" in reason and "no tumour voxels" in reason
    # with all slices the same case converts
    _, report = convert(dataset, tmp_path / "all.zarr")
    assert [o.status for o in report.outcomes] == ["converted", "converted"]


def test_bad_slice_mode_is_refused():
    with pytest.raises(ValueError, match="lesion"):
        ConvertConfig(source="lits", input_dir=".", output="x.zarr", slices="tumour+2")


# ---- resampling ----------------------------------------------------------------------------

@pytest.mark.parametrize("spacing, size, shape, expected_spacing", [
    ((5.0, 0, 0), None, (12, 64, 64), (5.0, 0.8, 0.8)),
    ((2.5, 1.6, 1.6), None, (24, 32, 32), (2.5, 1.6, 1.6)),
    ((0, 0.4, 0), None, (24, 128, 64), (2.5, 0.4, 0.8)),
    (None, (48, 40), (24, 48, 40), (2.5, 64 * 0.8 / 48, 64 * 0.8 / 40)),
    ((5.0, 0, 0), (32, 32), (12, 32, 32), (5.0, 1.6, 1.6)),
])
def test_resampling_shapes(lits_dataset_module, tmp_path, spacing, size, shape, expected_spacing):
    dataset = lits_dataset_module
    _, report = convert(dataset, tmp_path / "r.zarr", spacing=spacing, size=size, cases=("volume-0",))
    assert report.outcomes[0].status == "converted", report.outcomes[0].reason
    data = SliceStore.open(tmp_path / "r.zarr").read_case("volume-0")
    assert data.record.geometry.shape == shape
    assert data.image.shape == (shape[0], 2, *shape[1:])
    np.testing.assert_allclose(data.record.geometry.spacing, expected_spacing, rtol=1e-5)
    # the field of view is kept
    extent = np.asarray(shape) * np.asarray(data.record.geometry.spacing)
    np.testing.assert_allclose(extent, np.asarray(dataset.shape) * np.asarray(dataset.spacing), rtol=1e-5)
    # the record keeps the grid before resampling
    assert data.record.canonical_geometry.shape == dataset.shape
    for name, label in data.labels.items():
        assert label.dtype == np.uint8 and set(np.unique(label).tolist()) <= {0, 1}, name
    assert np.all(data.labels["tumour"] <= data.labels["liver"])
    assert data.labels["tumour"].any()
    voxel = np.prod(data.record.geometry.spacing)
    original = np.count_nonzero(dataset.phantom("volume-0")[1] >= 1) * np.prod(dataset.spacing)
    assert abs(data.labels["liver"].sum() * voxel - original) < 0.15 * original


def test_resampled_labels_are_nearest_neighbour(lits_dataset_module, tmp_path):
    # Downsampling by 2 on every axis: each output voxel centre lies between two input centres,
    # and nearest neighbour must pick one of them: the labels are a strided subsample of the phantom's.
    dataset = lits_dataset_module
    convert(dataset, tmp_path / "r.zarr", spacing=(5.0, 0, 0), size=(32, 32), cases=("volume-1",), keep_hu=True)
    data = SliceStore.open(tmp_path / "r.zarr").read_case("volume-1", hu=True)
    hu, seg = dataset.phantom("volume-1")
    liver = (seg >= 1).astype(np.uint8)
    matches = [(oz, oy, ox) for oz in (0, 1) for oy in (0, 1) for ox in (0, 1)
               if np.array_equal(data.labels["liver"], liver[oz::2, oy::2, ox::2])]
    assert matches, "resampled liver label is not a nearest-neighbour subsample of the phantom's"
    oz, oy, ox = matches[0]
    np.testing.assert_array_equal(data.labels["tumour"], (seg[oz::2, oy::2, ox::2] == 2).astype(np.uint8))
    # linear HU at the centre of 2x2x2 input voxels is their mean
    mean8 = hu.astype(np.float64).reshape(12, 2, 32, 2, 32, 2).mean(axis=(1, 3, 5))
    assert data.hu.dtype == np.int16
    assert np.abs(data.hu - mean8).max() <= 1.0


# ---- options -------------------------------------------------------------------------------

def test_keep_hu_keeps_the_phantom_hu(lits_dataset_module, tmp_path):
    dataset = lits_dataset_module
    convert(dataset, tmp_path / "h.zarr", keep_hu=True, cases=("volume-2", "volume-1"))
    store = SliceStore.open(tmp_path / "h.zarr")
    assert store.case_ids() == ["volume-1", "volume-2"]
    for case_id in store.case_ids():
        data = store.read_case(case_id, hu=True)
        assert data.record.has_hu
        assert data.hu.dtype == np.int16
        np.testing.assert_array_equal(data.hu, dataset.phantom(case_id)[0])


def test_case_subset(converted, tmp_path):
    dataset, _, _, full_output = converted
    _, report = convert(dataset, tmp_path / "sub.zarr", cases=("volume-2", "volume-0"))
    assert [o.case_id for o in report.outcomes] == ["volume-0", "volume-2"]
    sub, full = SliceStore.open(tmp_path / "sub.zarr"), SliceStore.open(full_output)
    assert sub.case_ids() == ["volume-0", "volume-2"]
    for case_id in sub.case_ids():  # stable splits: a subset never moves a patient
        assert sub.record(case_id).split == full.record(case_id).split
        np.testing.assert_array_equal(sub.read_case(case_id).image, full.read_case(case_id).image)


def test_unknown_case_is_refused(lits_dataset_module, tmp_path):
    with pytest.raises(CaseInputError, match="volume-77"):
        convert(lits_dataset_module, tmp_path / "x.zarr", cases=("volume-0", "volume-77"))
    assert not (tmp_path / "x.zarr").exists()


def test_windows_option(lits_dataset_module, tmp_path):
    dataset = lits_dataset_module
    windows = (parse_window("lung"), parse_window("soft=40,400"), parse_window("-100:200"))
    convert(dataset, tmp_path / "w.zarr", windows=windows, cases=("volume-0",))
    data = SliceStore.open(tmp_path / "w.zarr").read_case("volume-0")
    assert [w.name for w in data.record.windows] == ["lung", "soft", "w-100_200"]
    hu = dataset.phantom("volume-0")[0]
    for channel, window in enumerate(windows):
        np.testing.assert_array_equal(data.image[:, channel], window_reference(hu, window))


# ---- splits --------------------------------------------------------------------------------

def test_splits_are_deterministic_and_patient_level(converted, tmp_path):
    dataset, _, _, output = converted
    convert(dataset, tmp_path / "again.zarr")
    first, second = SliceStore.open(output), SliceStore.open(tmp_path / "again.zarr")
    assert {r.case_id: r.split for r in first.records()} == {r.case_id: r.split for r in second.records()}
    config = SplitConfig(seed=0)
    patients = [f"patient-{i}" for i in range(300)]
    splits = [assign_split(p, config) for p in patients]
    # every scan of one patient lands on the same side, whatever else is converted
    assert all(assign_split(p, config) == s for p, s in zip(patients, splits))
    assert [assign_split(p, config) for p in reversed(patients)] == splits[::-1]
    counts = {s: splits.count(s) for s in SPLITS}
    assert 170 < counts["train"] < 250 and 20 < counts["val"] < 75 and 20 < counts["test"] < 75
    other = [assign_split(p, SplitConfig(seed=1)) for p in patients]
    assert other != splits
    assert {assign_split(p, SplitConfig(fractions=(0.0, 0.0, 1.0))) for p in patients} == {"test"}
    assert assign_split("patient-1", config, {"patient-1": "val"}) == "val"


def test_split_seed_is_a_content_parameter(converted):
    dataset, _, _, output = converted
    with pytest.raises(StoreParameterError, match="split"):
        convert(dataset, output, split=SplitConfig(seed=5))


# ---- manifest ------------------------------------------------------------------------------

def test_manifest_json_beside_and_inside(converted, ct):
    dataset, config, _, output = converted
    path = manifest_path(output)
    assert path == output.with_name("lits.manifest.json")
    manifest = json.loads(path.read_text())
    assert manifest == SliceStore.open(output).manifest()
    assert manifest["format"] == "lesionkit-conversion-manifest"
    assert manifest["dataset"]["name"] == "lits"
    assert manifest["parameters"]["source"] == "lits"
    assert [w["name"] for w in manifest["parameters"]["windows"]] == ["liver", "abdomen"]
    assert manifest["parameters"]["slices"] == "all" and manifest["parameters"]["keep_hu"] is False
    libraries = manifest["libraries"]
    for name in ("numpy", "zarr", "nibabel", "numcodecs"):
        assert libraries[name] == version(name)
    assert libraries["python"].count(".") == 2
    assert sorted(manifest["cases"]) == sorted(dataset.case_ids)
    assert manifest["summary"] == {"converted": 3, "skipped": []}
    for case_id, entry in manifest["cases"].items():
        assert entry["status"] == "converted" and entry["slices"] == dataset.shape[0]
        assert entry["split"] == SliceStore.open(output).record(case_id).split
        assert manifest["split"]["patients"][case_id] == entry["split"]
        files = {f["role"]: f for f in entry["inputs"]}
        assert set(files) == {"image", "label"}
        for f in files.values():
            on_disk = dataset.root / f["path"]
            assert not f["path"].startswith("/") and on_disk.is_file()
            assert f["size"] == on_disk.stat().st_size
    entry = manifest["cases"]["volume-1"]
    image = {f["role"]: f for f in entry["inputs"]}["image"]
    assert image["path"] == "Training Batch 1/volume-1.nii.gz"
    assert image["sha256"] == hashlib.sha256((dataset.root / image["path"]).read_bytes()).hexdigest()
    label = {f["role"]: f for f in entry["inputs"]}["label"]
    assert label["sha256"] == ct.sha256_of(dataset.root / "Training Batch 1" / "segmentation-1.nii.gz")


def test_quirks_are_reported(tmp_path, ct, caplog):
    dataset = ct.write_lits(tmp_path / "in", cases={3: ("", ("R", "A", "S"), False),
                                                    28: ("", ("L", "P", "S"), False),
                                                    54: ("", ("R", "A", "S"), True)})
    with caplog.at_level("WARNING", logger="ctprep"):
        _, report = convert(dataset, tmp_path / "q.zarr")
    store = SliceStore.open(tmp_path / "q.zarr")
    assert store.record("volume-3").quirks == ()
    (quirk28,) = store.record("volume-28").quirks
    assert quirk28.startswith("identity-affine: ")
    (quirk54,) = store.record("volume-54").quirks
    assert quirk54.startswith("shifted-labels: ")
    by_id = {o.case_id: o for o in report.outcomes}
    assert by_id["volume-28"].quirks == (quirk28,)
    manifest = json.loads(manifest_path(tmp_path / "q.zarr").read_text())
    assert manifest["cases"]["volume-28"]["quirks"] == [quirk28]
    assert manifest["cases"]["volume-3"]["quirks"] == []
    assert any("volume-28" in r.getMessage() and "identity-affine" in r.getMessage() for r in caplog.records)
    # a quirk is information, not a reason to skip: the data are still exact
    np.testing.assert_array_equal(store.read_case("volume-28").labels["tumour"],
                                  (dataset.phantom("volume-28")[1] == 2).astype(np.uint8))


# ---- re-running ----------------------------------------------------------------------------

def test_rerun_with_other_windows_is_refused(converted, ct):
    dataset, _, _, output = converted
    before = ct.store_file_bytes(output / "cases")
    with pytest.raises(StoreParameterError) as info:
        convert(dataset, output, windows=(parse_window("lung"),))
    message = str(info.value)
    assert str(output) in message and "windows" in message and "--overwrite" in message
    with pytest.raises(StoreParameterError, match="keep_hu"):
        convert(dataset, output, keep_hu=True)
    assert ct.store_file_bytes(output / "cases") == before


def test_rerun_with_the_same_parameters_changes_nothing(converted, ct):
    dataset, _, _, output = converted
    before = ct.store_file_bytes(output / "cases")
    _, report = convert(dataset, output)
    assert [o.status for o in report.outcomes] == ["existing"] * 3
    assert report.lines()[0].startswith(f"{output}: 0 converted, 3 already complete, 0 skipped")
    assert ct.store_file_bytes(output / "cases") == before
    manifest = json.loads(manifest_path(output).read_text())
    assert all(e["status"] == "converted" and e["inputs"] for e in manifest["cases"].values())


def test_overwrite_rebuilds(lits_dataset_module, tmp_path):
    dataset = lits_dataset_module
    output = tmp_path / "o.zarr"
    convert(dataset, output, cases=("volume-0", "volume-1"))
    _, report = convert(dataset, output, windows=(parse_window("bone"),), cases=("volume-2",), overwrite=True)
    assert [o.status for o in report.outcomes] == ["converted"]
    store = SliceStore.open(output)
    assert store.case_ids() == ["volume-2"]
    data = store.read_case("volume-2")
    assert [w.name for w in data.record.windows] == ["bone"]
    assert data.image.shape[1] == 1
    np.testing.assert_array_equal(data.image[:, 0], window_reference(dataset.phantom("volume-2")[0],
                                                                      parse_window("bone")))
    assert store.parameters["windows"][0]["name"] == "bone"
    manifest = json.loads(manifest_path(output).read_text())
    assert sorted(manifest["cases"]) == ["volume-2"]


def test_overwrite_refuses_a_foreign_folder(lits_dataset_module, tmp_path):
    output = tmp_path / "precious"
    output.mkdir()
    (output / "thesis.tex").write_text("do not delete")
    with pytest.raises(Exception, match="not a lesionkit store"):
        convert(lits_dataset_module, output, overwrite=True)
    assert (output / "thesis.tex").read_text() == "do not delete"


def test_two_workers_give_identical_arrays(converted, tmp_path):
    dataset, _, _, output = converted
    _, report = convert(dataset, tmp_path / "w2.zarr", workers=2)
    assert sorted(o.status for o in report.outcomes) == ["converted"] * 3
    assert [o.case_id for o in report.outcomes] == list(dataset.case_ids)
    one, two = SliceStore.open(output), SliceStore.open(tmp_path / "w2.zarr")
    assert one.case_ids() == two.case_ids()
    for case_id in one.case_ids():
        a, b = one.read_case(case_id), two.read_case(case_id)
        assert a.record == b.record
        np.testing.assert_array_equal(a.image, b.image)
        for name in a.labels:
            np.testing.assert_array_equal(a.labels[name], b.labels[name])
    assert np.array_equal(one.index().rows, two.index().rows)


def test_kits19_end_to_end(kits_dataset_module, tmp_path):
    dataset = kits_dataset_module
    _, report = convert(dataset, tmp_path / "k.zarr", slices="lesion+1", keep_hu=True)
    assert [o.status for o in report.outcomes] == ["converted"] * 3
    store = SliceStore.open(tmp_path / "k.zarr")
    assert store.case_ids() == list(dataset.case_ids)
    for case_id in dataset.case_ids:
        hu, seg = dataset.phantom(case_id)
        keep = expected_slices((seg == 2).reshape(len(seg), -1).any(1), 1)
        data = store.read_case(case_id, hu=True)
        assert list(data.record.slice_indices) == keep
        assert [w.name for w in data.record.windows] == ["kidney", "abdomen"]
        assert data.record.source_grid.axcodes == "IPL"
        np.testing.assert_array_equal(data.hu, hu[keep])
        np.testing.assert_array_equal(data.labels["kidney"], (seg[keep] >= 1).astype(np.uint8))
        np.testing.assert_array_equal(data.labels["tumour"], (seg[keep] == 2).astype(np.uint8))
