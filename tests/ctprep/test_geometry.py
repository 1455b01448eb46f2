"""ctprep.geometry: canonical reorientation keeps every voxel's world position and can be undone."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel import orientations

from ctprep.geometry import Geometry, SourceGrid, canonicalize
from ctprep.phantoms.nifti import to_nifti

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
KITS_SEG = Path(__file__).resolve().parents[3] / "shared/data/kits19_seg/case_00002/segmentation.nii.gz"

# All 48 orientations: which RAS axis each array axis runs along, and in which direction.
ALL_ORNTS = [
    np.array([[axis, flip] for axis, flip in zip(perm, flips)], dtype=float)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((1, -1), repeat=3)
]


def test_there_are_48_distinct_orientations():
    codes = {"".join(orientations.ornt2axcodes(o)) for o in ALL_ORNTS}
    assert len(codes) == 48


def _affine(ornt: np.ndarray, spacing, origin, rotation: np.ndarray | None = None) -> np.ndarray:
    """RAS affine whose array axis i runs along RAS axis ornt[i, 0], sign ornt[i, 1], step spacing[i]."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (axis, flip) in enumerate(ornt):
        affine[int(axis), i] = flip * spacing[i]
    if rotation is not None:
        affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = origin
    return affine


def _rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


orientation_index = st.integers(0, len(ALL_ORNTS) - 1)
shapes = st.tuples(*[st.integers(1, 6)] * 3)
spacings = st.tuples(*[st.floats(0.2, 6.0, allow_nan=False)] * 3)
origins = st.tuples(*[st.floats(-500, 500, allow_nan=False)] * 3)
small_angles = st.tuples(*[st.floats(-0.35, 0.35, allow_nan=False)] * 3)  # up to 20 degrees


def _check_world_positions(array, affine_ras, zyx, geometry, rng):
    """Every canonical voxel sits where its source voxel sat (the values are the source's flat index)."""
    lps_of_canonical = geometry.affine_lps()
    nz, ny, nx = zyx.shape
    picks = [(0, 0, 0), (nz - 1, ny - 1, nx - 1)]
    picks += [tuple(int(rng.integers(n)) for n in zyx.shape) for _ in range(20)]
    for z, y, x in picks:
        source_index = np.unravel_index(int(zyx[z, y, x]), array.shape)
        ras = affine_ras @ np.array([*source_index, 1.0])
        expected_lps = RAS_TO_LPS @ ras[:3]
        got_lps = (lps_of_canonical @ np.array([x, y, z, 1.0]))[:3]
        np.testing.assert_allclose(got_lps, expected_lps, rtol=0, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(which=orientation_index, shape=shapes, spacing=spacings, origin=origins, seed=st.integers(0, 2**16))
def test_canonicalize_axis_aligned(which, shape, spacing, origin, seed):
    ornt = ALL_ORNTS[which]
    affine = _affine(ornt, spacing, origin)
    array = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    zyx, geometry, source = canonicalize(array, affine)

    assert np.shares_memory(zyx, array)  # a view, never a copy
    assert zyx.shape == geometry.shape
    # The canonical shape is the source shape permuted: axis i of the source is RAS axis ornt[i, 0].
    sizes_xyz = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        sizes_xyz[int(axis)] = shape[i]
    assert zyx.shape == tuple(sizes_xyz[::-1])
    expected_spacing_xyz = [0.0, 0.0, 0.0]
    for i, (axis, _) in enumerate(ornt):
        expected_spacing_xyz[int(axis)] = spacing[i]
    np.testing.assert_allclose(geometry.spacing, expected_spacing_xyz[::-1], rtol=1e-12)
    np.testing.assert_allclose(geometry.direction_matrix, np.eye(3), atol=1e-12)
    z_positions = geometry.z_positions()
    assert len(z_positions) == zyx.shape[0]
    assert all(b > a for a, b in zip(z_positions, z_positions[1:]))
    np.testing.assert_allclose(z_positions[0], geometry.origin[2])

    _check_world_positions(array, affine, zyx, geometry, np.random.default_rng(seed))

    assert source.shape == shape
    assert source.axcodes == "".join(orientations.ornt2axcodes(ornt))
    back = source.to_source(zyx)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert np.shares_memory(back, array)


@settings(max_examples=80, deadline=None)
@given(which=orientation_index, shape=shapes, spacing=spacings, origin=origins,
       angles=small_angles, seed=st.integers(0, 2**16))
def test_canonicalize_oblique_keeps_world_positions(which, shape, spacing, origin, angles, seed):
    ornt = ALL_ORNTS[which]
    affine = _affine(ornt, spacing, origin, _rotation(angles))
    array = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    zyx, geometry, source = canonicalize(array, affine)
    assert np.shares_memory(zyx, array)
    direction = geometry.direction_matrix
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)  # orthonormal
    assert np.all(np.diag(direction) > 0.5)  # each axis still mostly along L, P, S
    _check_world_positions(array, affine, zyx, geometry, np.random.default_rng(seed))
    np.testing.assert_array_equal(source.to_source(zyx), array)


@pytest.mark.parametrize("ornt", ALL_ORNTS, ids=lambda o: "".join(orientations.ornt2axcodes(o)))
def test_phantom_nifti_round_trip_every_orientation(ornt):
    """phantom.to_nifti writes a canonical grid in any orientation; canonicalize brings it back."""
    rng = np.random.default_rng(0)
    canonical = rng.integers(-1000, 1000, size=(3, 4, 5)).astype(np.int16)
    geometry = Geometry(shape=(3, 4, 5), spacing=(2.5, 0.8, 0.7), origin=(-10.0, 20.0, -300.0))
    image = to_nifti(canonical, geometry, orientations.ornt2axcodes(ornt))
    array = np.asanyarray(image.dataobj)
    zyx, geometry_back, _ = canonicalize(array, image.affine)
    np.testing.assert_array_equal(zyx, canonical)
    assert geometry_back.shape == geometry.shape
    np.testing.assert_allclose(geometry_back.spacing, geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry_back.origin, geometry.origin, atol=1e-4)
    np.testing.assert_allclose(geometry_back.direction, geometry.direction, atol=1e-6)


def test_geometry_affine_lps_known_values():
    g = Geometry(shape=(4, 3, 2), spacing=(5.0, 0.5, 0.25), origin=(1.0, 2.0, 3.0))
    expected = np.array([[0.25, 0, 0, 1], [0, 0.5, 0, 2], [0, 0, 5.0, 3], [0, 0, 0, 1]])
    np.testing.assert_array_equal(g.affine_lps(), expected)
    assert g.z_positions() == [3.0, 8.0, 13.0, 18.0]
    again = Geometry.from_affine_lps(expected, g.shape)
    assert again == g


@pytest.mark.parametrize("bad", [
    dict(shape=(0, 2, 2)), dict(shape=(2, 2)), dict(spacing=(1.0, 0.0, 1.0)),
    dict(spacing=(1.0, float("nan"), 1.0)), dict(direction=(1.0, 0.0, 0.0)),
])
def test_geometry_rejects_bad_values(bad):
    kwargs = dict(shape=(2, 2, 2), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) | bad
    with pytest.raises(ValueError, match="geometry"):
        Geometry(**kwargs)


def test_canonicalize_rejects_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        canonicalize(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        canonicalize(np.zeros((2, 2, 2)), np.eye(3))
    singular = np.eye(4)
    singular[2, 2] = 0
    with pytest.raises(ValueError, match="singular"):
        canonicalize(np.zeros((2, 2, 2)), singular)


@settings(max_examples=60, deadline=None)
@given(which=orientation_index, shape=shapes, spacing=spacings, origin=origins, angles=small_angles)
def test_to_dict_from_dict_round_trip(which, shape, spacing, origin, angles):
    affine = _affine(ALL_ORNTS[which], spacing, origin, _rotation(angles))
    array = np.zeros(shape, dtype=np.uint8)
    zyx, geometry, source = canonicalize(array, affine)
    geometry_back = Geometry.from_dict(json.loads(json.dumps(geometry.to_dict())))
    source_back = SourceGrid.from_dict(json.loads(json.dumps(source.to_dict())))
    assert geometry_back == geometry
    assert source_back == source
    np.testing.assert_array_equal(geometry_back.affine_lps(), geometry.affine_lps())
    marked = np.arange(array.size).reshape(zyx.shape[::-1]).transpose(2, 1, 0)  # any canonical array
    np.testing.assert_array_equal(source_back.to_source(marked), source.to_source(marked))


@pytest.mark.skipif(not KITS_SEG.is_file(), reason=f"KiTS19 sample label not present at {KITS_SEG}")
def test_real_kits19_label_volume():
    image = nib.load(str(KITS_SEG))
    assert nib.aff2axcodes(image.affine) == ("I", "P", "L")
    array = np.asanyarray(image.dataobj)
    assert array.shape == (261, 512, 512)
    zyx, geometry, source = canonicalize(array, image.affine)
    assert zyx.shape == (261, 512, 512) == geometry.shape
    assert np.shares_memory(zyx, array)
    # IPL: axis 0 runs inferior (flip it to ascend superior), axes 1 and 2 are already P and L.
    assert np.array_equal(zyx, array[::-1])  # (np.testing's version takes seconds on 68 M voxels)
    assert geometry.spacing == (1.0, 0.939453125, 0.939453125)
    assert geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # Voxel (0, 0, 0) of the canonical grid is file voxel (260, 0, 0): RAS (0, 0, -260) = LPS (0, 0, -260).
    assert geometry.origin == (0.0, 0.0, -260.0)
    assert geometry.z_positions()[-1] == 0.0
    assert source.axcodes == "IPL"
    assert source.shape == (261, 512, 512)
    assert np.array_equal(source.to_source(zyx), array)
    # Labels survive untouched (KiTS19: 0 background, 1 kidney, 2 tumour).
    assert int(array.max()) == 2 and int(zyx.max()) == 2
