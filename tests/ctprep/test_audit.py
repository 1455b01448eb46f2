"""ctprep audit: finds PHI-looking values in a store's JSON and text files, and nothing in clean ones."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ctprep.commands.audit import PHI_ATTRIBUTES, audit_store, scan_json, scan_text
from ctprep.cli import main
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path


@pytest.fixture(scope="module")
def clean_store(lits_dataset_module, tmp_path_factory):
    output = tmp_path_factory.mktemp("audit") / "lits.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset_module.root), output=str(output)),
                    progress=False)
    return output


def _case_attributes_file(store):
    return next(p for p in sorted((store / "cases").glob("*/zarr.json")))


def test_a_converted_store_is_clean(clean_store):
    report = audit_store(clean_store)
    assert report.clean, report.lines()
    assert report.files_scanned >= 3  # store metadata, case metadata, the manifest beside it


def test_the_manifest_beside_the_store_is_scanned(clean_store, tmp_path):
    import shutil

    store = tmp_path / "lits.zarr"
    shutil.copytree(clean_store, store)
    manifest = json.loads(manifest_path(clean_store).read_text())
    manifest["cases"]["volume-0"]["referring"] = "SMITH^ANNA"
    manifest_path(store).write_text(json.dumps(manifest))
    report = audit_store(store)
    assert [(f.path, f.rule) for f in report.findings] == [(str(manifest_path(store)), "person-name")]


@pytest.mark.parametrize("planted, rule", [
    ({"PatientName": "x"}, "phi-keyword"),
    ({"note": "from (0010,0030) of the header"}, "phi-keyword"),
    ({"reader": "DOE^JOHN"}, "person-name"),
    ({"patient_birth_date": "19610203"}, "birth-date"),
    ({"contact": "jane.doe@hospital.example.org"}, "contact"),
    ({"contact": "call 555-867-5309"}, "contact"),
])
def test_planted_values_are_found_and_the_cli_fails(clean_store, tmp_path, planted, rule):
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(clean_store, store)
    meta_path = _case_attributes_file(store)
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["extra"] = planted
    meta_path.write_text(json.dumps(meta))
    report = audit_store(store)
    assert [f.rule for f in report.findings] == [rule]
    assert report.findings[0].path == str(meta_path)
    result = CliRunner().invoke(main, ["audit", str(store)])
    assert result.exit_code == 1
    assert rule in result.output and "1 finding(s)" in result.output
    # The report masks what it found instead of repeating it.
    value = next(iter(planted.values()))
    if len(value) > 3 and rule != "phi-keyword":
        assert value not in result.output


def test_logs_are_scanned_line_by_line(clean_store, tmp_path):
    log = tmp_path / "convert.log"
    log.write_text("ctprep: converted volume-0\nctprep: header said InstitutionName=General\n")
    report = audit_store(clean_store, [log])
    assert [(f.where, f.rule) for f in report.findings] == [("line 2", "phi-keyword")]


def test_lesionkit_vocabulary_is_not_flagged():
    # Our own field names and values must not look like PHI.
    document = {"patient_id": "LUNG1-001", "case_id": "volume-0", "spacing": [1.0, 0.7, 0.7],
                "created": "2026-11-23T12:00:00", "windows": [{"name": "lung", "level": -600, "width": 1500}],
                "sha256": "00100010" * 8, "description": "axes: x -> L, y -> P, z -> S; 512^2 pixels"}
    assert list(scan_json(document)) == []


def test_every_profile_keyword_is_recognised_in_text():
    for keyword, tag in PHI_ATTRIBUTES.items():
        assert ("phi-keyword", keyword) in set(scan_text(f"found {keyword} here"))
        assert any(rule == "phi-keyword" for rule, _ in scan_text(f"tag ({tag[:4]},{tag[4:]})"))
