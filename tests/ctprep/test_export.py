"""Export of stored labels back onto each case's source grid (ctprep.commands.export, ``ctprep export``).

Every expectation is read from the source files with nibabel and mapped through
the dataset's label values, independently of ctprep's reorientation code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from nibabel import orientations
from scipy import ndimage

from ctprep.cli import main
from ctprep.public_paths import resolve
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.commands.export import export_label_nifti, label_on_source_grid
from ctprep.store import SliceStore


def convert(dataset, output: Path, **kwargs) -> SliceStore:
    config = ConvertConfig(source=dataset.source, input_dir=str(dataset.root), output=str(output), **kwargs)
    report = convert_dataset(config, progress=False)
    assert all(o.status == "converted" for o in report.outcomes), report.lines()
    return SliceStore.open(output)


def source_file(store: SliceStore, root: Path, case_id: str, role: str) -> Path:
    """The raw file behind a case, from the manifest's public input paths (the store keeps none)."""
    (entry,) = [f for f in store.manifest()["cases"][case_id]["inputs"] if f["role"] == role]
    return resolve(root, [entry["path"]])[entry["path"]]


def expected_label(store: SliceStore, root: Path, case_id: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The source segmentation mapped through the label's values, and the file's affine (nibabel only)."""
    image = nib.load(source_file(store, root, case_id, "label"))
    (spec,) = [s for s in store.record(case_id).labels if s.name == label]
    return np.isin(np.asarray(image.dataobj), spec.values).astype(np.uint8), image.affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def export_and_load(store, case_id, label, path) -> tuple[np.ndarray, nib.Nifti1Image, object]:
    result = export_label_nifti(store, case_id, label, path)
    image = nib.load(path)
    return np.asarray(image.dataobj), image, result


@pytest.fixture(scope="module", params=["lits", "kits19"])
def dataset(request, lits_dataset_module, kits_dataset_module):
    """The LiTS phantoms (RAS, LPS, ARI files) and the KiTS19 phantoms (IPL files)."""
    return lits_dataset_module if request.param == "lits" else kits_dataset_module


@pytest.fixture(scope="module")
def stores(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"export_{dataset.source}")
    made = {}

    def get(name: str, **kwargs) -> SliceStore:
        if name not in made:
            made[name] = convert(dataset, folder / f"{name}.zarr", **kwargs)
        return made[name]

    return dataset, folder, get


# ---- exact round trips ---------------------------------------------------------------------------
def test_ground_truth_export_reproduces_the_source_label_file(stores):
    dataset, folder, get = stores
    store = get("all")
    for case_id in dataset.case_ids:
        for label in store.record(case_id).label_names:
            path = folder / f"{case_id}_{label}.nii.gz"
            array, image, result = export_and_load(store, case_id, label, path)
            expected, affine = expected_label(store, dataset.root, case_id, label)
            assert array.dtype == np.uint8 and array.shape == expected.shape
            assert np.array_equal(array, expected), (case_id, label, np.count_nonzero(array != expected))
            assert expected.any()
            # the source's affine, so the export overlays the source image in a viewer
            np.testing.assert_array_equal(image.affine, affine)
            np.testing.assert_array_equal(image.affine, nib.load(source_file(store, dataset.root, case_id,
                                                                              "image")).affine)
            assert int(image.header["sform_code"]) == 1 and image.header.get_xyzt_units()[0] == "mm"
            assert result.missing_slices == 0 and not result.resampled
            assert result.lines() == [f"wrote {path}: {case_id} label {label!r}, uint8 "
                                      f"{'x'.join(map(str, expected.shape))} on the source grid"]


def _canonical_slices(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """The source axis running inferior-superior and, per index along it, the canonical slice number."""
    ornt = orientations.io_orientation(affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    steps = np.arange(shape[axis])
    return axis, steps if ornt[axis, 1] > 0 else steps[::-1]


def test_lesion_slices_export_fills_missing_slices_with_zero(stores):
    dataset, folder, get = stores
    store = get("lesion", slices="lesion")
    organ = "liver" if dataset.source == "lits" else "kidney"
    for case_id in dataset.case_ids:
        record = store.record(case_id)
        assert record.num_slices < record.geometry.shape[0]
        tumour, _, result = export_and_load(store, case_id, "tumour", folder / f"lesion_{case_id}_tumour.nii")
        expected_tumour, _ = expected_label(store, dataset.root, case_id, "tumour")
        assert np.array_equal(tumour, expected_tumour)  # every tumour slice was kept
        assert result.missing_slices == record.geometry.shape[0] - record.num_slices
        assert result.lines()[-1] == (f"  {result.missing_slices} of {record.geometry.shape[0]} slices were not "
                                      "stored (converted with --slices): written as 0")
        organ_array, _, _ = export_and_load(store, case_id, organ, folder / f"lesion_{case_id}_{organ}.nii")
        expected_organ, affine = expected_label(store, dataset.root, case_id, organ)
        axis, canonical_z = _canonical_slices(affine, expected_organ.shape)
        stored = np.isin(canonical_z, record.slice_indices)
        shape = [1, 1, 1]
        shape[axis] = -1
        assert np.array_equal(organ_array, expected_organ * stored.reshape(shape))
        assert np.count_nonzero(expected_organ * ~stored.reshape(shape)) > 0  # some organ really was dropped


def test_integer_upsampling_round_trip_is_exact(stores):
    """Slices halved (2.5 -> 1.25 mm): each source voxel becomes two, nearest neighbour brings it back."""
    dataset, folder, get = stores
    store = get("half_z", spacing=(1.25, 0.0, 0.0))
    case_id = dataset.case_ids[0]
    assert store.record(case_id).geometry.shape[0] == 2 * dataset.shape[0]
    for label in store.record(case_id).label_names:
        array, image, result = export_and_load(store, case_id, label, folder / f"half_{label}.nii.gz")
        expected, affine = expected_label(store, dataset.root, case_id, label)
        assert result.resampled and np.array_equal(array, expected), label
        np.testing.assert_array_equal(image.affine, affine)


@pytest.mark.parametrize("name, options", [("spacing", {"spacing": (2.0, 1.0, 1.0)}), ("size", {"size": (48, 48)})])
def test_resampled_export_is_close_on_the_source_grid(stores, name, options):
    dataset, folder, get = stores
    store = get(name, **options)
    # Dice bounds by size: the liver spans ~25 voxels, each phantom kidney ~8 and a tumour ~5
    # (64x64 slices), and nearest neighbour there and back moves up to a voxel at the edge.
    bounds = {"liver": 0.95, "kidney": 0.9, "tumour": 0.7}
    for case_id in dataset.case_ids:
        assert store.record(case_id).geometry != store.record(case_id).canonical_geometry
        for label in store.record(case_id).label_names:
            bound = bounds[label]
            array, image, result = export_and_load(store, case_id, label, folder / f"{name}_{case_id}_{label}.nii")
            expected, affine = expected_label(store, dataset.root, case_id, label)
            assert result.resampled and array.shape == expected.shape
            np.testing.assert_array_equal(image.affine, affine)
            assert dice(array, expected) >= bound, (case_id, label, dice(array, expected))
            # nearest-neighbour errors only at the boundary: within one voxel of the label's edge
            edge = ndimage.binary_dilation(expected) & ~ndimage.binary_erosion(expected)
            assert not np.any((array != expected) & ~ndimage.binary_dilation(edge))


# ---- probabilities ---------------------------------------------------------------------------------
def test_probabilities_export_as_float32_on_the_source_grid(stores):
    dataset, folder, get = stores
    store = SliceStore.open(get("all").path, mode="a")
    case_id = dataset.case_ids[-1]
    tumour = store.read_label(case_id, "tumour").astype(np.float32)
    soft = ndimage.gaussian_filter(tumour, 1.0).astype(np.float32)
    store.write_label(case_id, "pred_test", soft, attributes={"kind": "probability"})
    array, image, _ = export_and_load(store, case_id, "pred_test", folder / "pred_test.nii.gz")
    assert array.dtype == np.float32
    # the canonical (z, y, x) array brought to the file's axes with nibabel alone
    _, affine = expected_label(store, dataset.root, case_id, "tumour")
    transform = orientations.ornt_transform(orientations.axcodes2ornt(("L", "P", "S")),
                                            orientations.io_orientation(affine))
    expected = orientations.apply_orientation(soft.transpose(2, 1, 0), transform)
    assert np.array_equal(array, expected)
    # thresholding the export at 0.5 is thresholding on the source grid
    expected_tumour, _ = expected_label(store, dataset.root, case_id, "tumour")
    assert dice(array >= 0.5, expected_tumour) > 0.5


def test_probabilities_resample_linearly(stores):
    dataset, folder, get = stores
    store = SliceStore.open(get("spacing", spacing=(2.0, 1.0, 1.0)).path, mode="a")
    case_id = dataset.case_ids[0]
    store.write_label(case_id, "pred_soft", store.read_label(case_id, "tumour").astype(np.float32))
    exported = label_on_source_grid(store, case_id, "pred_soft")
    expected, _ = expected_label(store, dataset.root, case_id, "tumour")
    values = exported.array
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert np.count_nonzero((values > 0) & (values < 1)) > 0  # interpolated, not nearest
    assert dice(values >= 0.5, expected) >= 0.7


# ---- real KiTS19 segmentations -----------------------------------------------------------------------
# case_00061 (29 slices) is converted whole; case_00002 (261 slices of 512x512) with --slices lesion,
# which keeps every tumour slice and keeps the fixture to a few seconds.
REAL_KITS = {"case_00061": "all", "case_00002": "lesion"}


@pytest.fixture(scope="module")
def kits_real(tmp_path_factory, ct):
    source = ct.shared_data_path("kits19_seg")
    root = tmp_path_factory.mktemp("kits_real_export") / "kits19"
    stores = {}
    for case, slices in REAL_KITS.items():
        original = source / case / "segmentation.nii.gz"
        if not original.is_file():
            pytest.skip(f"real test data not available: {original} is absent")
        (root / case).mkdir(parents=True)
        shutil.copyfile(original, root / case / "segmentation.nii.gz")
        label = nib.load(original)
        seg = np.asarray(label.dataobj)
        image = nib.Nifti1Image((seg.astype(np.int16) * 60 - 100), label.affine, label.header.copy())
        image.set_data_dtype(np.int16)  # a CT-like volume on the label's grid (imaging is not public)
        nib.save(image, root / case / "imaging.nii")  # uncompressed: quicker to write and read
        output = root.parent / f"{case}.zarr"
        report = convert_dataset(ConvertConfig(source="kits19", input_dir=str(root), output=str(output),
                                               cases=(case,), slices=slices), progress=False)
        assert [o.status for o in report.outcomes] == ["converted"], report.lines()
        stores[case] = SliceStore.open(output)
    return root, stores


@pytest.mark.parametrize("case_id", sorted(REAL_KITS))
def test_real_kits19_export_reproduces_the_segmentation(kits_real, tmp_path, case_id):
    root, stores = kits_real
    store = stores[case_id]
    original = nib.load(root / case_id / "segmentation.nii.gz")
    seg = np.asarray(original.dataobj)
    assert nib.aff2axcodes(original.affine) == ("I", "P", "L")  # KiTS19's slice-axis-first layout
    record = store.record(case_id)
    tumour, image, result = export_and_load(store, case_id, "tumour", tmp_path / "tumour.nii")
    assert tumour.shape == seg.shape and np.count_nonzero(seg == 2) > 0
    assert np.array_equal(tumour, seg == 2), np.count_nonzero(tumour != (seg == 2))  # KiTS19: 2 = tumour
    np.testing.assert_array_equal(image.affine, original.affine)
    assert result.missing_slices == seg.shape[0] - record.num_slices
    kidney, _, _ = export_and_load(store, case_id, "kidney", tmp_path / "kidney.nii")
    kept = np.isin(np.arange(seg.shape[0])[::-1], record.slice_indices)  # file axis 0 runs inferior (I)
    expected = ((seg == 1) | (seg == 2)) & kept[:, None, None]
    assert np.array_equal(kidney, expected), np.count_nonzero(kidney != expected)
    if REAL_KITS[case_id] == "lesion":
        assert result.missing_slices > 0 and np.count_nonzero(seg[~kept]) > 0  # kidney slices were dropped


# ---- command line ------------------------------------------------------------------------------------
def test_cli_export(stores, tmp_path):
    dataset, _, get = stores
    store = get("all")
    case_id = dataset.case_ids[0]
    out = tmp_path / "out" / "tumour.nii.gz"
    result = CliRunner().invoke(main, ["export", str(store.path), "--case", case_id, "--label", "tumour",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: {case_id} label 'tumour', uint8")
    expected, _ = expected_label(store, dataset.root, case_id, "tumour")
    assert np.array_equal(np.asarray(nib.load(out).dataobj), expected)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tumour.nii.gz"]  # no partial file left


@pytest.mark.parametrize("args, fragments", [
    (["--label", "nope", "--out", "x.nii.gz"], ["has no label 'nope'", "tumour"]),
    (["--label", "tumour", "--out", "x.png"], ["x.png", "expected a .nii or .nii.gz"]),
])
def test_cli_export_errors_are_one_line(stores, tmp_path, args, fragments):
    dataset, _, get = stores
    store = get("all")
    args = [a if a != "x.nii.gz" and a != "x.png" else str(tmp_path / a) for a in args]
    result = CliRunner().invoke(main, ["export", str(store.path), "--case", dataset.case_ids[0], *args])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctprep: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
