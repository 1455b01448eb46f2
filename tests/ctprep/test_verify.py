"""ctprep verify: recorded chunk checksums catch corruption, by case and slice; clean stores pass."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.cli import main
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.errors import StoreFormatError
from ctprep.store import SliceStore, array_checksums, chunk_checksum
from ctprep.commands.verify import compare_checksums, verify_store


@pytest.fixture(scope="module")
def pristine(lits_dataset_module, tmp_path_factory):
    output = tmp_path_factory.mktemp("verify") / "lits.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset_module.root), output=str(output),
                                  keep_hu=True), progress=False)
    return output


@pytest.fixture
def store_path(pristine, tmp_path):
    copy = tmp_path / "lits.zarr"
    shutil.copytree(pristine, copy)
    shutil.copy(manifest_path(pristine), manifest_path(copy))
    return copy


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_checksums_are_recorded_as_written_and_match_the_files(pristine):
    store = SliceStore.open(pristine)
    for case_id in store.case_ids():
        recorded = store.recorded_checksums(case_id)
        assert set(recorded) == {"image", "hu", *(f"labels/{n}" for n in store.label_names(case_id))}
        assert recorded == store.current_checksums(case_id)
        some_chunk = next(iter(recorded["image"]))
        raw = (pristine / "cases" / case_id / "image" / some_chunk).read_bytes()
        assert recorded["image"][some_chunk] == chunk_checksum(raw)
    manifest = json.loads(manifest_path(pristine).read_text())
    assert all(len(e["checksum"]) == 64 for e in manifest["cases"].values() if e["status"] == "converted")


def test_a_clean_store_verifies(pristine):
    report = verify_store(pristine)
    assert report.ok, report.lines()
    assert report.cases_checked == len(SliceStore.open(pristine).case_ids())
    assert report.chunks_checked == sum(len(v) for c in SliceStore.open(pristine).case_ids()
                                        for v in SliceStore.open(pristine).current_checksums(c).values())


def test_a_corrupted_chunk_is_reported_with_its_case_array_and_slice(store_path):
    case_id = SliceStore.open(store_path).case_ids()[0]
    chunk = store_path / "cases" / case_id / "hu" / "c.2.0.0"
    _flip_a_byte(chunk)
    report = verify_store(store_path)
    assert report.problems == ((case_id, "hu: checksum mismatch at slice 2"),)
    assert report.corrupt_cases() == [case_id]
    result = CliRunner().invoke(main, ["verify", str(store_path), "--quiet"])
    assert result.exit_code == 1 and f"{case_id}: hu: checksum mismatch at slice 2" in result.output


def test_missing_and_extra_chunks_and_edited_records_are_reported(store_path):
    store = SliceStore.open(store_path)
    first, second = store.case_ids()[:2]
    image = store_path / "cases" / first / "image"
    victim = sorted(p for p in image.iterdir() if p.name != "zarr.json")[0]
    victim.unlink()
    shutil.copy(store_path / "cases" / first / "labels" / "liver" / "zarr.json",
                store_path / "cases" / first / "labels" / "liver" / "c.99.0.0")
    # A chunk changed and its recorded checksum edited to match: caught by the manifest's digest.
    meta_path = store_path / "cases" / second / "zarr.json"
    meta = json.loads(meta_path.read_text())
    sums = meta["attributes"]["lesionkit_case"]["checksums"]["image"]
    key = next(iter(sums))
    _flip_a_byte(store_path / "cases" / second / "image" / key)
    sums[key] = chunk_checksum((store_path / "cases" / second / "image" / key).read_bytes())
    meta_path.write_text(json.dumps(meta))
    problems = verify_store(store_path).problems
    of_first = [p for c, p in problems if c == first]
    assert of_first == [f"image: chunk file missing at slice {victim.name.split('.')[1]}",
                        "labels/liver: unexpected chunk file at slice 99"]
    # The edited record now agrees with the corrupted chunk, but not with the manifest.
    assert [p for c, p in problems if c == second] == [
        "checksums differ from those the manifest recorded at conversion"]


def test_labels_written_later_are_checked_but_not_blamed_on_the_manifest(store_path):
    store = SliceStore.open(store_path, mode="a")
    case_id = store.case_ids()[0]
    record = store.record(case_id)
    soft = np.full((record.num_slices, *record.geometry.shape[1:]), 0.5, dtype=np.float32)
    store.write_label(case_id, "soft_tumour", soft)
    assert verify_store(store_path).ok
    chunk = next(p for p in (store_path / "cases" / case_id / "labels" / "soft_tumour").iterdir()
                 if p.name != "zarr.json")
    _flip_a_byte(chunk)
    assert [p for _, p in verify_store(store_path).problems] == [
        f"labels/soft_tumour: checksum mismatch at slice {chunk.name.split('.')[1]}"]


def test_a_stale_index_and_a_bad_label_value_are_reported(store_path):
    store = SliceStore.open(store_path, mode="a")
    case_id = store.case_ids()[0]
    tumour = store.read_case(case_id, labels=["tumour"]).labels["tumour"].copy()
    tumour[0, 0, 0] = 7
    store.write_label(case_id, "tumour", tumour)  # a rewritten label is recorded, but 7 is off the map
    problems = [p for c, p in verify_store(store_path).problems if c == case_id]
    assert problems == ["labels/tumour: values [0, 1, 7] outside the label map's {0, 1}",
                        "checksums differ from those the manifest recorded at conversion"]
    store.delete_case(store.case_ids()[-1])  # drops the consolidated index
    problems = dict(verify_store(store_path).problems)
    assert problems["store"].startswith("no consolidated slice index")


def test_other_format_versions_get_a_clear_message(store_path):
    meta_path = store_path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["lesionkit"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="format version 99.*upgrade lesionkit"):
        verify_store(store_path)
    result = CliRunner().invoke(main, ["verify", str(store_path)])
    assert result.exit_code == 1 and "upgrade lesionkit" in result.output


def test_compare_checksums_reports_each_kind_of_difference():
    recorded = {"image": {"c.0.0.0.0": "a", "c.1.0.0.0": "b"}, "labels/x": {"c.0.0.0": "c"}}
    current = {"image": {"c.0.0.0.0": "a", "c.1.0.0.0": "B", "c.2.0.0.0": "d"}, "labels/y": {}}
    assert compare_checksums(recorded, current) == [
        "image: checksum mismatch at slice 1", "image: unexpected chunk file at slice 2",
        "labels/x: array missing", "labels/y: array not recorded when the case was written"]


def test_array_checksums_hash_every_chunk_file(tmp_path):
    (tmp_path / "zarr.json").write_text("{}")
    (tmp_path / "c.0.0.0").write_bytes(b"abc")
    (tmp_path / "c.5.0.0").write_bytes(b"")
    assert array_checksums(tmp_path) == {"c.0.0.0": chunk_checksum(b"abc"), "c.5.0.0": chunk_checksum(b"")}
    assert chunk_checksum(b"abc") == "ba7816bf8f01cfea"  # sha256("abc"), first 16 hex digits
