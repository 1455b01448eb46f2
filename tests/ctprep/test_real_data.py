"""Conversion of real public files (../shared/data): KiTS19 label volumes and a real abdomen CT.

The KiTS19 imaging volumes are not public in git, so each real segmentation is
paired with a generated CT-like int16 volume of the same shape and affine. Every
expectation is computed from the original files with nibabel, independently of
ctprep's reader and reorientation.
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.store import SliceStore
from ctprep.windowing import window_reference

KITS_CASES = ("case_00002", "case_00061")
CANONICAL = orientations.axcodes2ornt(("L", "P", "S"))  # canonical x, y, z point to L, P, S


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """np.array_equal with a useful message: numpy.testing's version is slow on 68M-voxel volumes."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not np.array_equal(actual, expected):
        differ = np.count_nonzero(actual != expected)
        pytest.fail(f"{what}: {differ} of {actual.size} values differ")


def _lps_origin(affine: np.ndarray, voxel) -> np.ndarray:
    ras = affine @ np.asarray([*voxel, 1.0])
    return np.asarray([-ras[0], -ras[1], ras[2]])


def _ct_like(segmentation: np.ndarray) -> np.ndarray:
    """An int16 CT-like volume: HU by label plus a ramp along every file axis (so any flip shows)."""
    hu = np.array([-100, 150, 40], dtype=np.int16)[segmentation]
    for axis, period in enumerate((17, 13, 11)):
        shape = [1, 1, 1]
        shape[axis] = segmentation.shape[axis]
        hu += (np.arange(segmentation.shape[axis], dtype=np.int16) % period).reshape(shape) * (axis + 1)
    return hu


@pytest.fixture(scope="module")
def kits_store(tmp_path_factory, ct):
    source_root = ct.shared_data_path("kits19_seg")
    root = tmp_path_factory.mktemp("kits_real") / "kits19"
    files = {}
    for case in KITS_CASES:
        original = source_root / case / "segmentation.nii.gz"
        if not original.is_file():
            pytest.skip(f"real test data not available: {original} is absent")
        folder = root / case
        folder.mkdir(parents=True)
        shutil.copyfile(original, folder / "segmentation.nii.gz")
        label = nib.load(original)
        seg = np.asarray(label.dataobj)
        image = nib.Nifti1Image(_ct_like(seg), label.affine, label.header.copy())
        image.set_data_dtype(np.int16)
        nib.save(image, folder / "imaging.nii.gz")
        files[case] = (original, seg, label.affine)
    output = root.parent / "kits.zarr"
    report = convert_dataset(ConvertConfig(source="kits19", input_dir=str(root), output=str(output), keep_hu=True),
                             progress=False)
    assert [(o.case_id, o.status) for o in report.outcomes] == [(c, "converted") for c in KITS_CASES], \
        report.lines()
    store = SliceStore.open(output)
    cache = {}

    def read(case):  # each (large) case is read back once for all the tests
        if case not in cache:
            cache[case] = store.read_case(case, hu=True)
        return cache[case]

    return store, files, read


@pytest.mark.parametrize("case", KITS_CASES)
def test_kits19_orientation_is_slice_axis_first(kits_store, case):
    _, files, _ = kits_store
    _, seg, affine = files[case]
    assert nib.aff2axcodes(affine) == ("I", "P", "L")
    # file axis 0 is canonical z reversed (inferior -> superior), axis 1 is y, axis 2 is x
    transform = orientations.ornt_transform(orientations.io_orientation(affine), CANONICAL)
    np.testing.assert_array_equal(np.asarray(transform), [[2, -1], [1, 1], [0, 1]])
    by_nibabel = orientations.apply_orientation(seg, transform).transpose(2, 1, 0)
    assert_same(by_nibabel, seg[::-1])


@pytest.mark.parametrize("case", KITS_CASES)
def test_kits19_labels_equal_the_file(kits_store, case):
    store, files, read = kits_store
    _, seg, _ = files[case]
    canonical = seg[::-1]  # by hand, for IPL: flip axis 0 (checked against nibabel above)
    data = read(case)
    assert data.labels["kidney"].shape == seg.shape
    assert int(data.labels["kidney"].sum()) == np.count_nonzero((seg == 1) | (seg == 2))
    assert int(data.labels["tumour"].sum()) == np.count_nonzero(seg == 2) > 0
    assert_same(data.labels["tumour"], (canonical == 2).astype(np.uint8))
    assert_same(data.labels["kidney"], (canonical >= 1).astype(np.uint8))
    per_slice = np.count_nonzero((canonical == 2).reshape(len(canonical), -1), axis=1)
    assert data.record.lesion_pixels == tuple(int(n) for n in per_slice)
    # and back to the file's layout
    assert_same(data.record.source_grid.to_source(data.labels["tumour"]), (seg == 2))
    assert data.record.source_grid.axcodes == "IPL"


def test_kits19_counts_of_case_00002(kits_store):
    # the numbers in the original file, as counted with nibabel alone
    _, _, read = kits_store
    labels = read("case_00002").labels
    assert int(labels["tumour"].sum()) == 39630
    assert int(labels["kidney"].sum()) == 614297 + 39630


@pytest.mark.parametrize("case", KITS_CASES)
def test_kits19_spacing_and_origin_match_the_affine(kits_store, case):
    store, files, read = kits_store
    _, seg, affine = files[case]
    geometry = store.record(case).geometry
    norms = np.linalg.norm(affine[:3, :3], axis=0)  # mm per step along file axes 0, 1, 2
    assert geometry.shape == seg.shape
    np.testing.assert_allclose(geometry.spacing, norms, rtol=1e-6)  # (z, y, x) = file axes (0, 1, 2)
    np.testing.assert_allclose(geometry.origin, _lps_origin(affine, (seg.shape[0] - 1, 0, 0)), atol=1e-4)
    np.testing.assert_allclose(geometry.direction_matrix, np.eye(3), atol=1e-6)
    z = np.asarray(store.record(case).z_positions)
    assert np.all(np.diff(z) > 0)
    np.testing.assert_allclose(np.diff(z), norms[0], rtol=1e-6)


@pytest.mark.parametrize("case", KITS_CASES)
def test_kits19_hu_and_windows(kits_store, case):
    store, files, read = kits_store
    _, seg, _ = files[case]
    expected = _ct_like(seg)[::-1]
    data = read(case)
    assert_same(data.hu, expected)
    for channel, window in enumerate(data.record.windows):
        for z in (0, len(expected) // 2, len(expected) - 1):
            assert_same(data.image[z, channel], window_reference(expected[z], window))


# ---- a real CT in the LiTS layout ---------------------------------------------------------

@pytest.fixture(scope="module")
def totalseg(tmp_path_factory, ct):
    folder = ct.shared_data_path("totalseg_example")
    ct_path, seg_path = folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"
    for path in (ct_path, seg_path):
        if not path.is_file():
            pytest.skip(f"real test data not available: {path} is absent")
    root = tmp_path_factory.mktemp("totalseg") / "lits"
    root.mkdir()
    shutil.copyfile(ct_path, root / "volume-0.nii.gz")
    seg_image = nib.load(seg_path)
    classes = np.asarray(seg_image.dataobj)
    segmentation = ct.liver_with_made_up_tumour(classes)
    out = nib.Nifti1Image(segmentation, seg_image.affine, seg_image.header.copy())
    out.set_data_dtype(np.uint8)
    nib.save(out, root / "segmentation-0.nii.gz")
    output = root.parent / "real.zarr"
    report = convert_dataset(ConvertConfig(source="lits", input_dir=str(root), output=str(output), keep_hu=True),
                             progress=False)
    assert report.outcomes[0].status == "converted", report.outcomes[0].reason
    return SliceStore.open(output), nib.load(ct_path), classes, segmentation


def test_real_ct_hu_equals_nibabel(totalseg):
    store, image, _, _ = totalseg
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    transform = orientations.ornt_transform(orientations.io_orientation(image.affine), CANONICAL)
    reference = np.rint(image.get_fdata())
    expected = orientations.apply_orientation(reference, transform).transpose(2, 1, 0)
    assert_same(expected, reference[::-1, ::-1, :].transpose(2, 1, 0))  # RAS: flip x and y
    data = store.read_case("volume-0", hu=True)
    assert data.hu.dtype == np.int16 and data.hu.shape == (30, 101, 122)
    assert_same(data.hu, expected.astype(np.int16))
    for channel, window in enumerate(data.record.windows):
        assert_same(data.image[:, channel], window_reference(data.hu, window))
    geometry = data.record.geometry
    np.testing.assert_allclose(geometry.spacing, (3.0, 3.0, 3.0), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, _lps_origin(image.affine, (121, 100, 0)), atol=1e-4)


def test_real_ct_labels_and_anatomy(totalseg):
    store, _, classes, segmentation = totalseg
    canonical = lambda a: a[::-1, ::-1, :].transpose(2, 1, 0)  # noqa: E731 - RAS file -> (z, y, x)
    data = store.read_case("volume-0")
    assert_same(data.labels["liver"], canonical(segmentation >= 1).astype(np.uint8))
    assert_same(data.labels["tumour"], canonical(segmentation == 2).astype(np.uint8))
    assert int(data.labels["liver"].sum()) == np.count_nonzero(classes == 5)
    assert 0 < int(data.labels["tumour"].sum()) < np.count_nonzero(classes == 5)
    nx, ny = data.labels["liver"].shape[2], data.labels["liver"].shape[1]
    # real anatomy on the canonical grid: liver and right kidney on the patient's right (small x),
    # spleen and left kidney on the left, the spine posterior (large y)
    centroid_x = {v: np.nonzero(canonical(classes == v))[2].mean() for v in (1, 2, 3, 5)}
    assert centroid_x[5] < nx / 2 < centroid_x[1]
    assert centroid_x[2] < nx / 2 < centroid_x[3]
    assert np.nonzero(data.labels["liver"])[2].mean() < nx / 2
    hu = store.read_case("volume-0", hu=True).hu
    assert np.nonzero(hu > 300)[1].mean() > ny / 2
