"""Issue 17 C7: no patient identifier becomes a case id. A TCIA patient folder and PatientID
holding a name (neither of the dataset's id format) give ``unnamed-<sha256 of the folder>``."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom

from ctprep.phantoms.nsclc import write_nsclc_case
from ctprep.sources import get_source

NAME = "Doe^Jane"


def _named_patient(root: Path) -> None:
    """LUNG1-001 written, then its folder and every file's PatientID/PatientName set to a name."""
    phantom = write_nsclc_case(root, 1, shape=(6, 32, 32), lungs=False)
    for f in [*phantom.ct_files, phantom.rtstruct]:
        ds = pydicom.dcmread(f)
        ds.PatientID = ds.PatientName = NAME
        ds.save_as(f, enforce_file_format=True)
    (root / phantom.patient).rename(root / NAME)


def test_a_named_patient_folder_never_becomes_the_case_id(tmp_path, caplog):
    root = tmp_path / "nsclc"
    _named_patient(root)
    refs = get_source("nsclc").discover(root)
    assert len(refs) == 1
    assert re.fullmatch(r"unnamed-[0-9a-f]{12}", refs[0].case_id), refs[0].case_id
    assert "Doe" not in refs[0].case_id and "Doe" not in refs[0].patient_id
    assert refs[0].case_id in caplog.text and "id format" in caplog.text


def test_the_hashed_id_is_stable(tmp_path):
    ids = []
    for name in ("a", "b"):
        _named_patient(tmp_path / name)
        ids.append(get_source("nsclc").discover(tmp_path / name)[0].case_id)
    assert ids[0] == ids[1]
