"""ctprep rebuild: a store made again from its manifest and the raw download has the recorded checksums."""

from __future__ import annotations

import json

import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.errors import ManifestError
from ctprep.commands.rebuild import rebuild_store


@pytest.fixture
def original(lits_dataset, tmp_path):
    output = tmp_path / "original.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset.root), output=str(output),
                                  slices="lesion+1", keep_hu=True), progress=False)
    return lits_dataset, output


def test_rebuild_reproduces_every_case_byte_for_byte(original, tmp_path):
    dataset, store = original
    report = rebuild_store(manifest_path(store), dataset.root, tmp_path / "again.zarr", progress=False)
    manifest = json.loads(manifest_path(store).read_text())
    converted = sorted(c for c, e in manifest["cases"].items() if e["status"] == "converted")
    assert report.ok and list(report.identical) == converted and converted
    again = json.loads(manifest_path(tmp_path / "again.zarr").read_text())
    assert again["parameters"] == manifest["parameters"]  # slices=lesion+1, keep_hu carried over


def test_a_changed_input_is_refused_before_converting(original, tmp_path):
    dataset, store = original
    manifest = json.loads(manifest_path(store).read_text())
    case_id, entry = next((c, e) for c, e in sorted(manifest["cases"].items()) if e["status"] == "converted")
    victim = dataset.root / entry["inputs"][0]["path"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"cannot rebuild {case_id}: .*differs from the file the store was built"):
        rebuild_store(manifest_path(store), dataset.root, tmp_path / "again.zarr", progress=False)
    assert not (tmp_path / "again.zarr").exists()


def test_a_different_result_is_reported(original, tmp_path):
    dataset, store = original
    manifest = json.loads(manifest_path(store).read_text())
    case_id = next(c for c, e in sorted(manifest["cases"].items()) if e["status"] == "converted")
    manifest["cases"][case_id]["checksum"] = "0" * 64
    edited = tmp_path / "edited.manifest.json"
    edited.write_text(json.dumps(manifest))
    report = rebuild_store(edited, dataset.root, tmp_path / "again.zarr", progress=False)
    assert report.different == ((case_id, "chunk checksums differ from the manifest's"),)
    assert not report.ok


def test_not_a_manifest(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ManifestError, match="expected 'lesionkit-conversion-manifest'"):
        rebuild_store(path, tmp_path, tmp_path / "y.zarr", progress=False)
