"""ctprep audit holds every string of a store and its manifest to what the format allows in that field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctprep.cli import main
from ctprep.commands.audit import audit_store
from ctprep.conversion_manifest import manifest_path
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.phantoms.deeplesion import write_deeplesion_phantom
from ctprep.phantoms.lidc import write_lidc_case
from ctprep.phantoms.nifti import write_lits_case
from ctprep.phantoms.nsclc import write_nsclc_case

WRITERS = {"lits": lambda root: write_lits_case(root, 0, shape=(6, 32, 32)),
           "nsclc": lambda root: write_nsclc_case(root, 1, shape=(6, 32, 32)),
           "lidc": lambda root: write_lidc_case(root, 1, shape=(8, 32, 32)),
           "deeplesion": lambda root: write_deeplesion_phantom(root, size=64)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fields")
    out = {}
    for source, write in WRITERS.items():
        write(root / f"in_{source}")
        out[source] = root / f"{source}.zarr"
        convert_dataset(ConvertConfig(source=source, input_dir=str(root / f"in_{source}"), output=str(out[source])),
                        progress=False)
    return out


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_converted_phantom_stores_audit_clean(stores, source):
    report = audit_store(stores[source])
    assert report.clean, report.lines()


def _record_file(store: Path) -> Path:
    return next(p for p in sorted((store / "cases").glob("*/zarr.json")))


def _edit(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _record(document) -> dict:
    return document["attributes"]["lesionkit_case"]["record"]


def _set_path(path: str):
    def change(manifest):
        manifest["cases"][next(iter(manifest["cases"]))]["inputs"][0]["path"] = path
    return change


# (source, file to edit: "record" or "manifest", change, field named in the finding, rule)
PLANTS = [
    ("lits", "record", lambda d: _record(d)["annotations"].update(comment="Jane Doe"),
     "record.annotations.comment", "field-text"),
    ("lits", "record", lambda d: _record(d).update(case_id="SMITH-JOHN"), "record.case_id", "field-case-id"),
    ("lits", "record", lambda d: _record(d).update(patient_id="Maria Rossi"), "record.patient_id", "field-case-id"),
    ("lits", "manifest", _set_path("/home/jdoe/scans/volume-0.nii"), "inputs[0].path", "field-input-path"),
    ("nsclc", "manifest", _set_path("LUNG1-001/MuellerHans/1-1.dcm"), "inputs[0].path", "field-input-path"),
    ("nsclc", "manifest", _set_path("../volume-0.nii"), "inputs[0].path", "field-input-path"),
    ("nsclc", "record", lambda d: _record(d)["annotations"]["rtstruct"]["rois"].append("Jane Doe left lung"),
     "annotations.rtstruct.rois[", "field-roi-name"),
    ("lidc", "record",
     lambda d: _record(d)["annotations"]["nodules"][0]["characteristics"]["1"].update(malignancy="benign, per Dr X"),
     "characteristics.1.malignancy", "field-lidc-characteristic"),
    ("lidc", "record", lambda d: _record(d)["annotations"]["nodules"][0]["reader_nodule_ids"].update({"1": "Mary Smith"}),
     "reader_nodule_ids.1", "field-lidc-id"),
    ("deeplesion", "record", lambda d: _record(d)["annotations"]["lesions"][0].update(type_name="seen by Anna"),
     "lesions[0].type_name", "field-text"),
    ("deeplesion", "record", lambda d: _record(d)["annotations"].update({"Jane Doe": 1}),
     "annotations.Jane Doe", "field-text"),
]


@pytest.mark.parametrize("source, where, change, field, rule", PLANTS)
def test_planted_identifiers_are_flagged_naming_the_field(stores, tmp_path, source, where, change, field, rule):
    store = tmp_path / f"{source}.zarr"
    shutil.copytree(stores[source], store)
    shutil.copy(manifest_path(stores[source]), manifest_path(store))
    target = _record_file(store) if where == "record" else manifest_path(store)
    _edit(target, change)
    report = audit_store(store)
    assert [(f.path, f.rule) for f in report.findings] == [(str(target), rule)], report.lines()
    assert field in report.findings[0].where
    result = CliRunner().invoke(main, ["audit", str(store)])
    assert result.exit_code == 1 and "1 finding(s)" in result.output and rule in result.output
