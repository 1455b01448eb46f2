"""Issue 17 C7/C8: names given by people (folders and files named after the patient, the ``--input``
folder itself, RTSTRUCT ROI names, LIDC nodule ids) never reach a store or its manifest; the
manifest's input paths are public (ctprep/public_paths.py) and ``ctprep rebuild`` still works.

Each download is converted with the real command line in a separate process; every file of the
store (zstd chunks decompressed too) and the manifest is searched for every planted word.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctprep.phantoms.nifti import write_lits_case
from ctprep.phantoms.nsclc import write_nsclc_case
from ctprep.public_paths import is_public_path, public_path

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PLANTED = ("Smith", "Doe", "Jane", "Blackwood")  # words of the planted names; none is a layout word


def _lits(root: Path) -> Path:
    folder = root / "Smith_John"  # the --input folder itself
    write_lits_case(folder / "Jane Doe scans", 0, shape=(6, 24, 24))
    write_lits_case(folder / "Training Batch 1", 1, shape=(6, 24, 24))
    return folder


def _nsclc(root: Path) -> Path:
    folder = root / "nsclc"
    write_nsclc_case(folder, 1, shape=(6, 32, 32), rename={"Lung-Left": "Jane Doe left lung"})
    phantom = write_nsclc_case(folder, 2, shape=(6, 32, 32))
    study = phantom.ct_files[0].parent.parent
    study.rename(study.with_name("Blackwood 1950-01-01 CT"))  # a study folder with a name and a birth date
    return folder


def _convert(source: str, folder: Path, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctprep.cli", "convert", "--source", source, "--input",
                           str(folder), "--output", str(store), "--quiet"], capture_output=True, timeout=240)


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store and its manifest as bytes, zstd chunks decoded."""
    from numcodecs import Zstd

    from ctprep.conversion_manifest import manifest_path

    found = {}
    for path in [*sorted(p for p in store.rglob("*") if p.is_file()), Path(manifest_path(store))]:
        data = path.read_bytes()
        found[str(path)] = bytes(Zstd().decode(data)) if data.startswith(ZSTD_MAGIC) else data
    return found


def leaks(store: Path, words=PLANTED) -> list[tuple[str, str]]:
    return [(word, name) for name, data in store_bytes(store).items() for word in words
            if word.lower().encode() in data.lower()]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phi_paths")
    runs = {}
    for source, write in (("lits", _lits), ("nsclc", _nsclc)):
        folder = write(tmp / "in")
        store = tmp / "out" / f"{source}.zarr"
        result = _convert(source, folder, store)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        runs[source] = (folder, store)
    return runs


@pytest.mark.parametrize("source", ["lits", "nsclc"])
def test_no_planted_name_in_the_store_or_manifest(converted, source):
    folder, store = converted[source]
    assert any(w.lower() in str(p).lower() for p in folder.rglob("*") for w in PLANTED)  # they are in the input
    assert not leaks(store)


@pytest.mark.parametrize("source", ["lits", "nsclc"])
def test_inputs_only_in_the_manifest_and_public(converted, source):
    from ctprep.conversion_manifest import manifest_path
    from ctprep.store import SliceStore

    _, store = converted[source]
    opened = SliceStore.open(store)
    manifest = json.loads(Path(manifest_path(store)).read_text())
    for case_id in opened.case_ids():
        assert "inputs" not in opened.record(case_id).to_dict()
        paths = [f["path"] for f in manifest["cases"][case_id]["inputs"]]
        assert paths and all(is_public_path(p) for p in paths), paths
    assert "--input INPUT" in manifest["command"]


def test_rebuild_finds_hashed_paths(converted, tmp_path):
    from ctprep.commands.rebuild import rebuild_store
    from ctprep.conversion_manifest import manifest_path

    folder, store = converted["lits"]
    report = rebuild_store(manifest_path(store), folder, tmp_path / "again.zarr", progress=False)
    assert report.ok and sorted(report.identical) == ["volume-0", "volume-1"]


def test_public_path_rule():
    assert public_path("Training Batch 1/volume-12.nii") == "Training Batch 1/volume-12.nii"
    assert public_path("LIDC-IDRI-0001/01-01-2000-30178/3000566.000000-03192/1-001.dcm").count("x-") == 0
    hidden = public_path("Doe^Jane/Jane Doe CT/1-001.dcm")
    assert "Doe" not in hidden and "Jane" not in hidden and hidden.endswith("/1-001.dcm")
    assert public_path("case_00000/imaging.nii.gz") == "case_00000/imaging.nii.gz"
    assert public_path("Images_png/000001_01_01/103.png") == "Images_png/000001_01_01/103.png"


def test_unmapped_roi_names_are_hashed_in_errors():
    from ctprep.errors import CaseInputError
    from ctprep.formats.rtstruct import roi_hash
    from ctprep.sources import get_source

    with pytest.raises(CaseInputError) as info:
        get_source("nsclc").label_plan(["Jane Doe lesion"], Path("rs.dcm"))  # no GTV: GTV-1 or an alias
    with pytest.raises(CaseInputError) as other:  # --roi GTV-1
        get_source("nsclc", {"rois": ["GTV-1"]}).label_plan(["Jane Doe lesion", "gtv_2"], Path("rs.dcm"))
    for message in (str(info.value), str(other.value)):
        assert "Jane" not in message and roi_hash("Jane Doe lesion") in message, message
    assert "gtv_2" in str(other.value)  # a name of the GTV rule is shown
