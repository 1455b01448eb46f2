"""No PHI leaves the source files: distinctive values planted into every attribute of the DICOM Basic
Application Level Confidentiality Profile (PS3.15 Annex E, Table E.1-1; tests/ctprep/phi_profile.py)
of generated NSCLC (CT + RTSTRUCT) and LIDC (CT + XML) downloads, converted with the real command
line (``check``, ``convert --keep-hu``, ``info``, ``preview``) in a separate process, must not appear
in any byte of the stores (chunks decompressed too), the manifests, the previews or the process's
stdout and stderr (where the log goes).

PatientID is planted like the rest: the case id comes from the TCIA folder name (LUNG1-001,
LIDC-IDRI-0001), never from the header unless the header's value has the public id format. The
UIDs of the series are themselves planted values (root ``2.25.98765432101234``), so the store must
hold no UID of the input either (the LIDC XML names the same UIDs; they must not reach the store).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import phi_profile as phi
from ctprep.phantoms.dicom import write_ct_series
from ctprep.phantoms.lidc import make_nodule_phantom, outline_rois, write_lidc_xml
from ctprep.phantoms.nsclc import make_chest_phantom, write_rtstruct

SHAPE, SPACING, ORIGIN = (12, 48, 48), (2.5, 0.8, 0.8), (-20.0, -20.0, -100.0)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _planted_series(folder: Path, hu: np.ndarray, series: int, shared: dict) -> tuple[list[Path], dict]:
    uids = [phi.uid(series * 100 + k) for k in range(hu.shape[0])]
    files = write_ct_series(folder, hu, SPACING, origin=ORIGIN, patient_id="unused", series_uid=phi.uid(series),
                            sop_uids=uids, seed=series)
    needles: dict[str, bytes] = {}
    for f in files:
        ds = pydicom.dcmread(f)
        needles = phi.plant(ds, shared_uids=shared)
        ds.save_as(f)
    needles["SeriesInstanceUID"] = phi.UID_ROOT.encode()  # and the SOP instance UIDs under it
    return files, needles


def write_nsclc(root: Path) -> dict[str, bytes]:
    hu, rois = make_chest_phantom(SHAPE, seed=3)
    shared = {"StudyInstanceUID": phi.uid(2), "FrameOfReferenceUID": phi.uid(3)}
    study = root / "LUNG1-001" / "3f2a"
    files, needles = _planted_series(study / "9c1d", hu, 1, shared)
    rs = write_rtstruct(files, {"GTV-1": rois["GTV-1"], "Lung-Left": rois["Lung-Left"]}, study / "77ab" / "0e.dcm")
    ds = pydicom.dcmread(rs)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = phi.uid(4)
    ds.SeriesInstanceUID = phi.uid(5)
    needles.update(phi.plant(ds, shared_uids=shared))
    needles.update(phi.plant_rt_free_text(ds))
    ds.save_as(rs)
    _planted_series(root / "LUNG1-002" / "aa01" / "bb02", hu, 6, shared)  # no RTSTRUCT: skipped, reported
    return needles


def write_lidc(root: Path) -> dict[str, bytes]:
    hu, masks = make_nodule_phantom(SHAPE, readers=2, seed=4, spacing=SPACING)
    shared = {"StudyInstanceUID": phi.uid(12), "FrameOfReferenceUID": phi.uid(13)}
    folder = root / "LIDC-IDRI-0001" / "5d6e" / "7f80"
    files, needles = _planted_series(folder, hu, 11, shared)
    uids = [phi.uid(1100 + k) for k in range(SHAPE[0])]
    z_mm = [ORIGIN[2] + SPACING[0] * k for k in range(SHAPE[0])]
    sessions = [{"nodules": [{"id": f"Nodule {n}", "characteristics": {"malignancy": 3},
                              "rois": outline_rois(m, uids, z_mm)}],
                 "small_nodules": [{"id": "s1", "z": z_mm[1], "sop_uid": uids[1], "x": 30, "y": 20}],
                 "non_nodules": [{"id": "n1", "z": z_mm[9], "sop_uid": uids[9], "x": 12, "y": 30}]}
                for n, m in enumerate(masks)]
    write_lidc_xml(folder / "158.xml", phi.uid(11), phi.uid(12), sessions)
    _planted_series(root / "LIDC-IDRI-0002" / "1a" / "2b", hu, 16, shared)  # no XML: skipped, reported
    return needles


RUN = """
import sys
from ctprep.cli import main
for args in {commands!r}:
    print("$ ctprep " + " ".join(args), file=sys.stderr, flush=True)
    try:
        main(args)
    except SystemExit as exc:
        print(f"exit {{exc.code}}", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def phi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phi")
    needles = {"nsclc": write_nsclc(tmp / "in" / "nsclc"), "lidc": write_lidc(tmp / "in" / "lidc")}
    out = tmp / "out"
    commands = []
    for source, case in (("nsclc", "LUNG1-001"), ("lidc", "LIDC-IDRI-0001")):
        store = str(out / f"{source}.zarr")
        commands += [["check", "--source", source, "--input", str(tmp / "in" / source)],
                     ["convert", "--source", source, "--input", str(tmp / "in" / source), "--output", store,
                      "--keep-hu"],
                     ["info", store], ["info", store, "--json"],
                     ["preview", store, "--case", case, "--out", str(out / f"{source}.png")]]
    result = subprocess.run([sys.executable, "-c", RUN.format(commands=commands)], capture_output=True,
                            timeout=240, cwd=tmp)
    return tmp, needles, out, result


def haystacks(out: Path, result) -> dict[str, bytes]:
    """Every output as bytes: each file (zstd chunks also decompressed), stdout and stderr."""
    from numcodecs import Zstd

    found = {"<stdout>": result.stdout, "<stderr>": result.stderr}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found[str(path)] = data
        if data.startswith(ZSTD_MAGIC):
            found[f"{path} (zstd-decoded)"] = bytes(Zstd().decode(data))
    return found


def test_conversions_ran(phi_run):
    _, _, out, result = phi_run
    log = result.stderr.decode()
    assert result.returncode == 0, log
    assert "skipped LUNG1-002" in log and "skipped LIDC-IDRI-0002" in log
    from ctprep.store import SliceStore

    assert SliceStore.open(out / "nsclc.zarr").case_ids() == ["LUNG1-001"]
    assert SliceStore.open(out / "lidc.zarr").case_ids() == ["LIDC-IDRI-0001"]
    assert (out / "nsclc.png").is_file() and (out / "lidc.png").is_file()
    assert (out / "nsclc.manifest.json").is_file() and (out / "lidc.manifest.json").is_file()


def test_every_profile_attribute_was_planted(phi_run):
    tmp, needles, _, _ = phi_run
    planted = set(needles["nsclc"]) & set(needles["lidc"])
    expected = set(phi.profile_keywords()) - {"PatientAge", "PregnancyStatus", "SOPInstanceUID"}
    assert expected <= planted, sorted(expected - planted)
    assert len(expected) >= 240
    inputs = b"".join(p.read_bytes() for p in (tmp / "in").rglob("*") if p.is_file())
    missing = [k for group in needles.values() for k, v in group.items() if v not in inputs]
    assert not missing, missing  # every needle really is in the input files


def test_no_planted_value_in_any_output(phi_run):
    _, needles, out, result = phi_run
    everything = haystacks(out, result)
    assert sum(name.endswith("(zstd-decoded)") for name in everything) > 20  # chunks were searched too
    leaks = []
    for source, planted in needles.items():
        for keyword, needle in planted.items():
            for form in phi.encodings(needle):
                leaks += [(source, keyword, form, name) for name, data in everything.items()
                          if form in data or form in data.lower()]
    assert not leaks, leaks[:20]


def test_allowed_values_do_reach_the_outputs(phi_run):
    """The search can find what is there: the public case ids and the allowlisted technical values."""
    _, _, out, result = phi_run
    store_bytes = b"".join(data for name, data in haystacks(out, result).items() if "nsclc.zarr" in name)
    assert b"LUNG1-001" in store_bytes and b"B30f" in store_bytes and b"dicom_phantom" in store_bytes
    assert b"LIDC-IDRI-0001" in (out / "lidc.manifest.json").read_bytes()
