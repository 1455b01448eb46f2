"""ctprep.store: round trips, the chunk-file fast path, completion markers, the slice index, errors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctprep.case import CaseRecord, LabelSpec
from ctprep.errors import (
    CaseNotFoundError,
    StoreError,
    StoreFormatError,
    StoreParameterError,
)
from ctprep.geometry import Geometry, SourceGrid
from ctprep.store import FORMAT_VERSION, SliceStore
from ctprep.store.chunks import _ChunkFiles
from ctprep.windowing import PRESETS

PARAMETERS = {"windows": ["abdomen", "kidney"], "spacing": None, "size": None, "slices": "all"}
LABELS = ("kidney", "tumour")


def make_record(case_id: str, nz: int = 5, ny: int = 6, nx: int = 7, *, split: str = "train",
                channels: int = 2, labels=LABELS, lesion_pixels=None, has_hu: bool = False,
                lesion_label: str | None = "tumour") -> CaseRecord:
    geometry = Geometry(shape=(nz, ny, nx), spacing=(2.5, 0.8, 0.75), origin=(-10.0, 5.0, -200.0))
    affine = np.diag([-0.75, -0.8, 2.5, 1.0])
    source_grid = SourceGrid(shape=(nx, ny, nz), affine_ras=tuple(affine.ravel()), axcodes="RAS",
                             axes=((0, -1), (1, -1), (2, 1)))
    windows = (PRESETS["abdomen"], PRESETS["kidney"], PRESETS["bone"], PRESETS["lung"])[:channels]
    return CaseRecord(
        case_id=case_id, source="kits19", patient_id=f"patient-{case_id}", split=split,
        geometry=geometry, canonical_geometry=geometry, source_grid=source_grid,
        slice_indices=tuple(range(nz)), z_positions=tuple(geometry.z_positions()),
        windows=windows, labels=tuple(LabelSpec(name=n, values=(i + 1,)) for i, n in enumerate(labels)),
        lesion_label=lesion_label,
        lesion_pixels=tuple(lesion_pixels) if lesion_pixels is not None else (0,) * nz,
        has_hu=has_hu, parameters=PARAMETERS,
    )


def make_case(case_id: str, nz: int = 5, ny: int = 6, nx: int = 7, *, seed: int = 0, split: str = "train",
              has_hu: bool = False, empty_slices=(1, 3)):
    """A record with random arrays; label slices in ``empty_slices`` are all zero."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(nz, 2, ny, nx), dtype=np.uint8)
    labels = {name: (rng.random((nz, ny, nx)) < 0.3).astype(np.uint8) for name in LABELS}
    for label in labels.values():
        label[[z for z in empty_slices if z < nz]] = 0
    lesion = tuple(int(np.count_nonzero(labels["tumour"][z])) for z in range(nz))
    hu = rng.integers(-1024, 3000, size=(nz, ny, nx)).astype(np.int16) if has_hu else None
    record = make_record(case_id, nz, ny, nx, split=split, lesion_pixels=lesion, has_hu=has_hu)
    return record, image, labels, hu


@pytest.fixture
def store(tmp_path) -> SliceStore:
    return SliceStore.create(tmp_path / "store.zarr", parameters=PARAMETERS, created_by="test")


def _chunk_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"]


def _set_store_attr(path: Path, key: str, value) -> None:
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["lesionkit"][key] = value
    meta_path.write_text(json.dumps(meta))


class _Exploding:
    """An array-like that fails when its values are read: a write interrupted midway."""

    def __init__(self, shape):
        self.shape = shape
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(shape)
        self.size = int(np.prod(shape))
        self.nbytes = self.size

    def __array__(self, *args, **kwargs):
        raise RuntimeError("disk full")

    def __getitem__(self, item):
        raise RuntimeError("disk full")

    def any(self):
        raise RuntimeError("disk full")


# ---- round trips ---------------------------------------------------------------------------
def test_write_read_case_round_trip(store):
    record, image, labels, hu = make_case("case_a", has_hu=True)
    written = store.write_case(record, image, labels, hu=hu)
    assert written > 0 and written == store.case_bytes("case_a")
    reopened = SliceStore.open(store.path)
    assert reopened.case_ids() == ["case_a"]
    assert "case_a" in reopened and "case_b" not in reopened
    assert reopened.record("case_a") == record
    data = reopened.read_case("case_a", hu=True)
    assert data.record == record
    np.testing.assert_array_equal(data.image, image)
    assert data.image.dtype == np.uint8
    assert sorted(data.labels) == sorted(LABELS)
    for name in LABELS:
        np.testing.assert_array_equal(data.labels[name], labels[name])
    np.testing.assert_array_equal(data.hu, hu)
    assert data.hu.dtype == np.int16
    assert reopened.read_case("case_a").hu is None
    assert list(reopened.read_case("case_a", labels=["tumour"]).labels) == ["tumour"]
    assert reopened.uncompressed_bytes() == image.nbytes + hu.nbytes + sum(a.nbytes for a in labels.values())


def test_read_slices_round_trip_across_cases(store):
    cases = {cid: make_case(cid, seed=i) for i, cid in enumerate(["a", "b"])}
    for record, image, labels, _ in cases.values():
        store.write_case(record, image, labels)
    keys = [("b", 4), ("a", 0), ("a", 3), ("b", 1), ("a", 0)]
    batch = SliceStore.open(store.path).read_slices(keys, labels=["tumour", "kidney"])
    assert batch.keys == tuple(keys)
    assert batch.image.shape == (5, 2, 6, 7) and batch.image.dtype == np.uint8
    for i, (cid, z) in enumerate(keys):
        _, image, labels, _ = cases[cid]
        np.testing.assert_array_equal(batch.image[i], image[z])
        for name in LABELS:
            np.testing.assert_array_equal(batch.labels[name][i], labels[name][z])
    assert store.read_slices([("a", 2)]).labels == {}


def test_fast_path_equals_zarr_path(store):
    record, image, labels, _ = make_case("case_a", nz=6, empty_slices=(0, 2, 5))
    store.write_case(record, image, labels)
    keys = [("case_a", z) for z in range(6)]
    fast = store.read_slices(keys, labels=list(LABELS))
    assert isinstance(store._reader("case_a", "image"), _ChunkFiles)
    assert isinstance(store._reader("case_a", "labels/tumour"), _ChunkFiles)
    for z in range(6):  # plain zarr, one slice at a time
        np.testing.assert_array_equal(fast.image[z], store._array("case_a", "image")[z])
        for name in LABELS:
            np.testing.assert_array_equal(fast.labels[name][z], store._array("case_a", f"labels/{name}")[z])
    # Force read_slices itself through zarr arrays and compare the whole batch.
    slow_store = SliceStore.open(store.path)
    for name in ("image", *(f"labels/{n}" for n in LABELS)):
        slow_store._chunk_files[("case_a", name)] = slow_store._array("case_a", name)
    slow = slow_store.read_slices(keys, labels=list(LABELS))
    np.testing.assert_array_equal(slow.image, fast.image)
    for name in LABELS:
        np.testing.assert_array_equal(slow.labels[name], fast.labels[name])
    np.testing.assert_array_equal(fast.image, image)


def test_missing_label_chunks_read_as_zeros(store):
    record, image, labels, _ = make_case("case_a", nz=5, empty_slices=(1, 3))
    image[2] = 0  # an all-zero image slice is not stored either
    store.write_case(record, image, labels)
    folder = store.path / "cases" / "case_a"
    # One chunk file per non-empty slice: the empty ones really are missing.
    assert len(_chunk_files(folder / "labels" / "tumour")) == 3
    assert len(_chunk_files(folder / "image")) == 4
    # Poison the batch buffers' memory: the missing slices must be filled, not left as found.
    reader = SliceStore.open(store.path)
    for _ in range(3):
        batch = reader.read_slices([("case_a", z) for z in range(5)], labels=list(LABELS))
        for name in LABELS:
            np.testing.assert_array_equal(batch.labels[name], labels[name])
            assert not batch.labels[name][[1, 3]].any()
        np.testing.assert_array_equal(batch.image, image)
        assert not batch.image[2].any()
    out = np.full((6, 7), 99, dtype=np.uint8)
    reader._reader("case_a", "labels/kidney").read_into(3, out)
    assert not out.any()
    np.testing.assert_array_equal(reader.read_case("case_a").labels["tumour"], labels["tumour"])


def test_rewrite_replaces_data_and_caches(store):
    record, image, labels, _ = make_case("case_a", seed=1)
    store.write_case(record, image, labels)
    store.read_slices([("case_a", 0)], labels=["tumour"])  # fill the reader caches
    record2, image2, labels2, _ = make_case("case_a", nz=3, seed=2, split="val", empty_slices=())
    labels2["tumour"][:] = 0  # every tumour slice now empty: old chunk files must not survive
    store.write_case(record2, image2, labels2)
    assert store.record("case_a") == record2
    batch = store.read_slices([("case_a", z) for z in range(3)], labels=["tumour"])
    np.testing.assert_array_equal(batch.image, image2)
    assert not batch.labels["tumour"].any()
    with pytest.raises(IndexError):
        store.read_slices([("case_a", 3)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
    data=st.data(),
)
def test_any_uint8_arrays_round_trip_byte_exactly(shape, data):
    nz, channels, ny, nx = shape
    image = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))
    labels = {name: data.draw(hnp.arrays(np.uint8, (nz, ny, nx), elements=st.integers(0, 255)))
              for name in LABELS}
    record = make_record("c", nz, ny, nx, channels=channels)
    with tempfile.TemporaryDirectory() as tmp:
        store = SliceStore.create(Path(tmp) / "s.zarr", parameters=PARAMETERS, created_by="test")
        store.write_case(record, image, labels)
        reader = SliceStore.open(store.path)
        case = reader.read_case("c")
        assert case.image.tobytes() == image.tobytes() and case.image.shape == image.shape
        for name in LABELS:
            assert case.labels[name].tobytes() == labels[name].tobytes()
        keys = [("c", z) for z in reversed(range(nz))]
        batch = reader.read_slices(keys, labels=list(LABELS))
        assert batch.image.tobytes() == image[::-1].tobytes()
        for name in LABELS:
            assert batch.labels[name].tobytes() == labels[name][::-1].tobytes()


# ---- completion marker ---------------------------------------------------------------------
def test_interrupted_write_is_invisible_and_redone(store):
    record, image, labels, _ = make_case("case_a")
    store.write_case(*make_case("case_b")[:3])
    broken = dict(labels, tumour=_Exploding(labels["tumour"].shape))
    with pytest.raises(RuntimeError, match="disk full"):
        store.write_case(record, image, broken)
    assert (store.path / "cases" / "case_a" / "image").is_dir()  # the image was written
    for reader in (store, SliceStore.open(store.path)):
        assert reader.case_ids() == ["case_b"]
        assert reader.incomplete_case_ids() == ["case_a"]
        assert "case_a" not in reader
        with pytest.raises(CaseNotFoundError, match="incomplete"):
            reader.record("case_a")
        with pytest.raises(CaseNotFoundError):
            reader.read_slices([("case_a", 0)])
        assert [k[0] for k in reader.index().keys()] == ["case_b"] * 5
    store.write_case(record, image, labels)  # the next run redoes it
    assert store.case_ids() == ["case_a", "case_b"]
    assert store.incomplete_case_ids() == []
    np.testing.assert_array_equal(SliceStore.open(store.path).read_case("case_a").labels["tumour"],
                                  labels["tumour"])


def test_hand_made_group_without_marker_is_incomplete(store):
    root = zarr.open_group(str(store.path), mode="r+")
    root["cases"].create_group("half")
    root["cases"].create_group("flagged").attrs.update({"lesionkit_case": {"complete": False}})
    assert store.case_ids() == []
    assert store.incomplete_case_ids() == ["flagged", "half"]
    assert len(store.index()) == 0


def test_delete_case(store):
    for cid in ("a", "b"):
        store.write_case(*make_case(cid)[:3])
    store.read_slices([("a", 0)], labels=["tumour"])
    store.delete_case("a")
    store.delete_case("never-written")  # no error
    assert store.case_ids() == ["b"]
    assert not (store.path / "cases" / "a").exists()
    assert "a" not in store
    with pytest.raises(CaseNotFoundError):
        store.read_slices([("a", 0)])
    assert SliceStore.open(store.path).case_ids() == ["b"]


def test_write_label_adds_and_replaces(store):
    record, image, labels, _ = make_case("case_a", empty_slices=())
    store.write_case(record, image, labels)
    store.read_slices([("case_a", 0)], labels=["kidney"])
    trimap = np.zeros((5, 6, 7), dtype=np.uint8)
    trimap[2, 1:4, 2:5] = 128
    trimap[4] = 255
    store.write_label("case_a", "trimap", trimap)
    assert store.label_names("case_a") == ["kidney", "trimap", "tumour"]
    reader = SliceStore.open(store.path)
    np.testing.assert_array_equal(reader.read_case("case_a").labels["trimap"], trimap)
    batch = store.read_slices([("case_a", z) for z in range(5)], labels=["trimap"])
    np.testing.assert_array_equal(batch.labels["trimap"], trimap)
    # Replacing a label: slices that became empty must read as zeros (no stale chunk files).
    new_kidney = np.zeros_like(labels["kidney"])
    new_kidney[0, 0, 0] = 1
    store.write_label("case_a", "kidney", new_kidney)
    batch = store.read_slices([("case_a", z) for z in range(5)], labels=["kidney"])
    np.testing.assert_array_equal(batch.labels["kidney"], new_kidney)
    np.testing.assert_array_equal(SliceStore.open(store.path).read_case("case_a").labels["kidney"], new_kidney)
    with pytest.raises(ValueError, match="shape"):
        store.write_label("case_a", "bad", np.zeros((5, 6, 6), dtype=np.uint8))
    with pytest.raises(CaseNotFoundError):
        store.write_label("missing", "x", trimap)


def test_write_label_float_with_attributes_and_staging_is_invisible(store):
    record, image, labels, _ = make_case("case_a", empty_slices=())
    store.write_case(record, image, labels)
    alpha = np.linspace(0, 1, 5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    store.write_label("case_a", "soft_tumour", alpha, attributes={"method": "closed-form"})
    batch = store.read_slices([("case_a", 3), ("case_a", 1)], labels=["soft_tumour", "tumour"])
    assert batch.labels["soft_tumour"].dtype == np.float32 and batch.labels["tumour"].dtype == np.uint8
    np.testing.assert_array_equal(batch.labels["soft_tumour"], alpha[[3, 1]])
    assert store.label_attributes("case_a", "soft_tumour") == {"method": "closed-form"}
    # A write killed before its rename leaves a staged array that nobody lists or reads.
    store._write_array(store._case_group("case_a")["labels"], "_staging.x.123", alpha, ("z", "y", "x"))
    assert SliceStore.open(store.path).label_names("case_a") == ["kidney", "soft_tumour", "tumour"]
    with pytest.raises(ValueError, match="uint8 or float32"):
        store.write_label("case_a", "bad", alpha.astype(np.float64))
    with pytest.raises(ValueError, match="label name"):
        store.write_label("case_a", "_hidden", alpha)


def test_write_case_validates_its_input(store):
    record, image, labels, hu = make_case("case_a", has_hu=True)
    with pytest.raises(ValueError, match="image must be uint8"):
        store.write_case(record, image.astype(np.int16), labels, hu=hu)
    with pytest.raises(ValueError, match="image must be uint8"):
        store.write_case(record, image[:, :1], labels, hu=hu)
    with pytest.raises(ValueError, match="labels"):
        store.write_case(record, image, {"kidney": labels["kidney"]}, hu=hu)
    with pytest.raises(ValueError, match="has_hu"):
        store.write_case(record, image, labels)
    with pytest.raises(ValueError, match="cannot name a store group"):
        store.write_case(make_record("a/b"), image, labels)
    assert store.case_ids() == [] and store.incomplete_case_ids() == []


@pytest.mark.parametrize("what", ["label shape", "label dtype", "hu shape", "hu dtype", "image in-plane"])
def test_write_case_rejects_arrays_off_the_record_grid(store, what):
    record, image, labels, hu = make_case("case_a", has_hu=True)
    if what == "label shape":
        labels["tumour"] = labels["tumour"][:, :, :-1]
    elif what == "label dtype":
        labels["tumour"] = labels["tumour"].astype(np.float32)
    elif what == "hu shape":
        hu = hu[:-1]
    elif what == "hu dtype":
        hu = hu.astype(np.int32)
    else:
        image = image[:, :, :, :-1]
    with pytest.raises(ValueError, match=r"case_a"):
        store.write_case(record, image, labels, hu=hu)
    assert store.case_ids() == [] and store.incomplete_case_ids() == []


# ---- slice index ---------------------------------------------------------------------------
def _index_store(store):
    a = make_record("a", nz=4, split="train", lesion_pixels=(0, 3, 0, 5))
    b = make_record("b", nz=2, split="val", lesion_pixels=(1, 0))
    c = make_record("c", nz=3, split="test")
    for record in (a, b, c):
        nz, _, ny, nx = record.num_slices, None, *record.geometry.shape[1:]
        store.write_case(record, np.zeros((nz, 2, ny, nx), np.uint8),
                         {n: np.zeros((nz, ny, nx), np.uint8) for n in LABELS})
    return a, b, c


def test_index_filters(store):
    a, b, c = _index_store(store)
    for index in (store.index(), store.rebuild_index(), store.index()):
        assert index.keys() == [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1),
                                ("c", 0), ("c", 1), ("c", 2)]
        assert index.rows["lesion_pixels"].tolist() == [0, 3, 0, 5, 1, 0, 0, 0, 0]
        np.testing.assert_allclose(index.rows["z_mm"], [*a.z_positions, *b.z_positions, *c.z_positions],
                                   rtol=1e-6)
    assert store.index(split="train").keys() == [("a", z) for z in range(4)]
    assert store.index(split="val").keys() == [("b", 0), ("b", 1)]
    assert store.index(lesion_only=True).keys() == [("a", 1), ("a", 3), ("b", 0)]
    assert store.index(split="train", lesion_only=True).keys() == [("a", 1), ("a", 3)]
    assert store.index(split="test", lesion_only=True).keys() == []
    assert list(store.index(split="val")) == [("b", 0), ("b", 1)]
    assert store.index().filter(cases=["c"]).keys() == [("c", 0), ("c", 1), ("c", 2)]
    with pytest.raises(ValueError, match="split"):
        store.index(split="training")


def test_stored_index_matches_records_and_is_used(store):
    _index_store(store)
    rebuilt = store.rebuild_index()
    stored = SliceStore.open(store.path).stored_index()
    assert stored is not None
    assert stored.rows.dtype == rebuilt.rows.dtype
    np.testing.assert_array_equal(stored.rows, rebuilt.rows)
    assert store._root["index"].attrs["num_slices"] == 9
    # Fresh stored index: index() serves it; tamper with a stored column to see that it does.
    store._root["index"]["lesion_pixels"][...] = np.arange(9)
    assert SliceStore.open(store.path).index().rows["lesion_pixels"].tolist() == list(range(9))


def test_stale_stored_index_falls_back_to_records(store):
    _index_store(store)
    store.rebuild_index()
    store.write_case(make_record("d", nz=2, split="train", lesion_pixels=(0, 7)),
                     np.zeros((2, 2, 6, 7), np.uint8), {n: np.zeros((2, 6, 7), np.uint8) for n in LABELS})
    index = SliceStore.open(store.path).index()
    assert ("d", 1) in index.keys() and len(index) == 11
    assert store.index(lesion_only=True).keys() == [("a", 1), ("a", 3), ("b", 0), ("d", 1)]
    store.delete_case("a")
    assert [k for k in SliceStore.open(store.path).index().keys() if k[0] == "a"] == []
    assert len(store.index()) == 7
    store.rebuild_index()
    assert len(store.index()) == 7


def test_rewritten_case_is_not_served_from_an_old_index(store):
    _index_store(store)
    store.rebuild_index()
    store.write_case(make_record("a", nz=2, split="val", lesion_pixels=(4, 0)),
                     np.zeros((2, 2, 6, 7), np.uint8), {n: np.zeros((2, 6, 7), np.uint8) for n in LABELS})
    for reader in (store, SliceStore.open(store.path)):
        assert [k for k in reader.index(split="train").keys()] == []
        assert reader.index(split="val").keys() == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
        assert reader.index(lesion_only=True).keys() == [("a", 0), ("b", 0)]


def test_empty_store_index(store):
    assert len(store.index()) == 0
    assert len(store.rebuild_index()) == 0
    assert len(SliceStore.open(store.path).index()) == 0


# ---- opening and creating ------------------------------------------------------------------
def test_open_non_store_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreFormatError, match="not a lesionkit store"):
        SliceStore.open(empty)
    with pytest.raises(StoreFormatError, match="not a lesionkit store"):
        SliceStore.open(tmp_path / "missing")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs.update({"other": 1})
    with pytest.raises(StoreFormatError, match="not a lesionkit store"):
        SliceStore.open(tmp_path / "plain.zarr")
    garbage = tmp_path / "garbage.zarr"
    garbage.mkdir()
    (garbage / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreFormatError, match="garbage.zarr"):
        SliceStore.open(garbage)
    assert not SliceStore.is_store(empty) and not SliceStore.is_store(garbage)


@pytest.mark.parametrize("version, advice", [
    (FORMAT_VERSION + 1, "upgrade lesionkit"),
    (0, "reconvert"),
    (None, "reconvert"),
    ("2", None),
])
def test_open_other_format_version(store, version, advice):
    _set_store_attr(store.path, "format_version", version)
    with pytest.raises(StoreFormatError) as info:
        SliceStore.open(store.path)
    text = str(info.value)
    assert f"version {version}" in text or f"version {version!r}" in text
    assert f"reads version {FORMAT_VERSION}" in text
    if advice:
        assert advice in text
    assert str(store.path) in text


def test_open_checks_format_name(store):
    _set_store_attr(store.path, "format", "something-else")
    with pytest.raises(StoreFormatError, match="not a lesionkit store"):
        SliceStore.open(store.path)


def test_create_refuses_existing_paths(tmp_path):
    path = tmp_path / "s.zarr"
    store = SliceStore.create(path, parameters=PARAMETERS, created_by="test")
    store.write_case(*make_case("a")[:3])
    with pytest.raises(StoreError, match="already exists"):
        SliceStore.create(path, parameters=PARAMETERS, created_by="test")
    assert SliceStore.open(path).case_ids() == ["a"]
    # overwrite replaces a store ...
    fresh = SliceStore.create(path, parameters={"x": 1}, created_by="again", overwrite=True)
    assert fresh.case_ids() == [] and SliceStore.open(path).parameters == {"x": 1}
    assert SliceStore.open(path).info["created_by"] == "again"
    # ... and an empty folder, but never a folder holding something else.
    (tmp_path / "empty").mkdir()
    SliceStore.create(tmp_path / "empty", parameters={}, created_by="t", overwrite=True)
    assert SliceStore.is_store(tmp_path / "empty")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(StoreError, match="not a lesionkit store; refusing to delete"):
        SliceStore.create(precious, parameters={}, created_by="t", overwrite=True)
    assert (precious / "thesis.txt").read_text() == "do not delete"
    with pytest.raises(StoreError, match="already exists"):
        SliceStore.create(precious, parameters={}, created_by="t")


def test_store_info(store):
    info = SliceStore.open(store.path).info
    assert info["format"] == "lesionkit-ct-slice-store"
    assert info["format_version"] == FORMAT_VERSION
    assert info["created_by"] == "test"
    assert store.parameters == PARAMETERS
    store.set_manifest({"cases": ("a", "b")})
    assert SliceStore.open(store.path).manifest() == {"cases": ["a", "b"]}
    assert SliceStore.open(store.path).parameters == PARAMETERS


def test_check_parameters(store):
    store.check_parameters(dict(PARAMETERS))
    store.check_parameters({**PARAMETERS, "windows": ("abdomen", "kidney")})  # tuples equal lists
    with pytest.raises(StoreParameterError, match=r"windows: has abdomen, kidney, asked lung\)"):
        store.check_parameters({**PARAMETERS, "windows": ["lung"]})
    with pytest.raises(StoreParameterError) as info:
        store.check_parameters({**PARAMETERS, "size": [256, 256], "extra": True})
    text = str(info.value)
    assert "size" in text and "extra" in text and "windows" not in text and "slices" not in text
    with pytest.raises(StoreParameterError, match="spacing"):
        store.check_parameters({k: v for k, v in PARAMETERS.items() if k != "spacing"} | {"spacing": [1, 1, 1]})
    assert isinstance(StoreParameterError("x"), ValueError)


# ---- reading errors ------------------------------------------------------------------------
def test_read_slices_errors(store):
    store.write_case(*make_case("small", ny=6, nx=7)[:3])
    store.write_case(*make_case("wide", ny=6, nx=8)[:3])
    with pytest.raises(ValueError, match="different shapes"):
        store.read_slices([("small", 0), ("wide", 0)])
    with pytest.raises(IndexError, match="z=5"):
        store.read_slices([("small", 5)])
    with pytest.raises(IndexError, match="z=-1"):
        store.read_slices([("small", -1)])
    with pytest.raises(ValueError, match="at least one"):
        store.read_slices([])
    with pytest.raises(CaseNotFoundError, match="no array"):
        store.read_slices([("small", 0)], labels=["liver"])
    assert store.read_slices([("wide", 4)]).image.shape == (1, 2, 6, 8)


def test_case_not_found_error_types(store):
    with pytest.raises(FileNotFoundError):
        store.record("nope")
    with pytest.raises(KeyError):
        store.read_case("nope")
    with pytest.raises(CaseNotFoundError) as info:
        store.read_slices([("nope", 0)])
    assert isinstance(info.value, FileNotFoundError)
    assert "'nope'" in str(info.value) and not str(info.value).startswith('"')


def test_own_chunk_writer_writes_exactly_what_zarr_writes(tmp_path):
    from zarr.codecs import BytesCodec, ZstdCodec

    from ctprep.store.layout import _CHUNK_KEYS, ZSTD_LEVEL

    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(6, 2, 16, 20), dtype=np.uint8)
    data[2] = 0  # an empty slice: neither writer stores it
    trees = []
    for name, write in (("zarr", lambda a, d: a.__setitem__(Ellipsis, d)), ("store", None)):
        group = zarr.open_group(str(tmp_path / name), mode="w")
        if write is None:
            SliceStore._write_array(group, "image", data, ("z", "channel", "y", "x"))
        else:
            array = group.create_array("image", shape=data.shape, dtype=data.dtype, chunks=(1, 2, 16, 20),
                                       serializer=BytesCodec(), compressors=ZstdCodec(level=ZSTD_LEVEL),
                                       fill_value=0, dimension_names=("z", "channel", "y", "x"),
                                       chunk_key_encoding=_CHUNK_KEYS)
            write(array, data)
        root = tmp_path / name
        trees.append({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})
    assert trees[0] == trees[1]
    assert "image/c.2.0.0.0" not in trees[1] and "image/c.1.0.0.0" in trees[1]
