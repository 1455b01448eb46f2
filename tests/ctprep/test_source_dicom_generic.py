"""``ctprep convert --source dicom``: any folder of CT series with optional RTSTRUCT or SEG.

Phantoms: a CT+RTSTRUCT patient (ctprep.phantoms.nsclc), a CT+SEG patient (the SEG written by
ctprep.formats.dicom_outputs.write_seg), a CT-only patient, and a patient folder holding two
series. Expected masks come from the phantom's own arrays.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.formats.dicom import read_ct_series
from ctprep.formats.dicom_outputs import write_seg
from ctprep.phantoms.dicom import write_ct_series
from ctprep.phantoms.nsclc import make_chest_phantom, write_nsclc_case
from ctprep.store import SliceStore

SHAPE = (8, 40, 40)


def write_folder(root: Path) -> dict:
    """The four kinds of patient; returns the expected tumour masks (canonical) by patient folder."""
    rt = write_nsclc_case(root, 1, shape=SHAPE, lungs=False)  # folder LUNG1-001, PatientID LUNG1-001
    hu, rois = make_chest_phantom(SHAPE, seed=7)
    files = write_ct_series(root / "Doe^Jane" / "ct", hu, patient_id="Doe^Jane", seed=7)
    ct = read_ct_series(files)
    native = rois["GTV-1"][:, :, :]  # canonical (z, y, x) == the phantom series' native stack (head first)
    write_seg(ct.files, {"Neoplasm": native}, root / "Doe^Jane" / "seg" / "seg.dcm")
    only, _ = make_chest_phantom(SHAPE, seed=9)
    write_ct_series(root / "Smith^John" / "ct", only, patient_id="Smith^John", seed=9)
    two_a, _ = make_chest_phantom(SHAPE, seed=11)
    write_ct_series(root / "Roe^Max" / "a", two_a, patient_id="Roe^Max", seed=11)
    write_ct_series(root / "Roe^Max" / "b", two_a, patient_id="Roe^Max", seed=12, origin=(0.0, 0.0, 0.0))
    return {"rt": rt.rois["GTV-1"], "seg": rois["GTV-1"]}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_dicom")
    truth = write_folder(root)
    out = root.parent / "own.zarr"
    report = convert_dataset(ConvertConfig(source="dicom", input_dir=str(root), output=str(out)), progress=False)
    return root, out, report, truth


def test_cases_ids_and_labels(converted):
    root, out, report, truth = converted
    status = {o.case_id: o.status for o in report.outcomes}
    assert len(status) == 5 and set(status.values()) == {"converted"}, report.lines()
    # the nifti source's rule, applied to the patient keys as a whole: LUNG1-001 beside names -> all hashed
    assert all(re.fullmatch(r"case-h[0-9a-f]{12}(_2)?", c) for c in status), status
    assert sum(c.endswith("_2") for c in status) == 1  # the patient with two series
    store = SliceStore.open(out)
    kinds = {c: next((k for k in ("rtstruct", "seg") if k in store.record(c).annotations), "ct") for c in status}
    assert sorted(kinds.values()) == ["ct", "ct", "ct", "rtstruct", "seg"]
    for case_id, kind in kinds.items():
        assert store.label_names(case_id) == ([] if kind == "ct" else ["tumour"])
    rt_case = next(c for c, k in kinds.items() if k == "rtstruct")
    seg_case = next(c for c, k in kinds.items() if k == "seg")
    assert abs(int(store.read_label(rt_case, "tumour").sum()) - int(truth["rt"].sum())) <= 0.05 * truth["rt"].sum()
    np.testing.assert_array_equal(store.read_label(seg_case, "tumour").astype(bool), truth["seg"])
    entries = store.manifest()["cases"]  # inputs live only in the manifest, their paths public
    assert all("/" not in f["path"] or f["path"].startswith(c) for c in status for f in entries[c]["inputs"])


def test_no_names_in_store_or_manifest(converted):
    root, out, _, _ = converted
    text = Path(manifest_path(out)).read_text()
    for name in ("Doe", "Jane", "Smith", "Roe"):
        assert name not in text
    for path in Path(out).rglob("*.json"):
        assert not any(n in path.read_text() for n in ("Doe", "Smith", "Roe")), path
    manifest = json.loads(text)
    assert set(manifest["cases"]) and all(c["split"] in ("train", "val", "test") for c in manifest["cases"].values())


def test_ct_only_cases_need_slices_all(converted, tmp_path):
    root, _, _, _ = converted
    report = convert_dataset(ConvertConfig(source="dicom", input_dir=str(root), output=str(tmp_path / "l.zarr"),
                                           slices="lesion"), progress=False)
    skipped = report.with_status("skipped")
    assert len(skipped) == 3 and len(report.with_status("converted")) == 2
    assert all("lesion label" in o.reason and "\n" not in o.reason for o in skipped)


def test_roi_mapping_and_resume(converted, tmp_path):
    root, _, _, truth = converted
    out = tmp_path / "m.zarr"
    rt_case = next(c for c in SliceStore.open(converted[1]).case_ids()
                   if "rtstruct" in SliceStore.open(converted[1]).record(c).annotations)
    config = ConvertConfig(source="dicom", input_dir=str(root), output=str(out), cases=(rt_case,),
                           source_options={"rois": ["gtv 1=mass"]})
    first = convert_dataset(config, progress=False)
    assert [o.status for o in first.outcomes] == ["converted"]
    assert SliceStore.open(out).label_names(rt_case) == ["mass"]
    again = convert_dataset(config, progress=False)
    assert [o.status for o in again.outcomes] == ["existing"]
    bad = convert_dataset(ConvertConfig(source="dicom", input_dir=str(root), output=str(tmp_path / "b.zarr"),
                                        cases=(rt_case,), source_options={"rois": ["Liver=liver"]}),
                          progress=False)
    (skip,) = bad.with_status("skipped")
    assert "no ROI or segment named 'Liver'" in skip.reason and "\n" not in skip.reason
