"""Store damage an outside test found (issue 17, group A): one case id twice in a download,
two conversions of the same cases into one store at once, a complete-looking case that
lacks arrays or chunk files.

* Duplicate ids are refused per id, every file named, before anything is written, by
  ``convert`` and ``check``, for every source (done once where discover's refs are collected).
* Two ``ctprep convert`` processes over the same input into one store take turns per case
  (the case lock): both exit 0, ``verify`` is clean, every case is whole.
* Resuming checks what it skips: a complete case missing an array or a chunk file is redone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctprep.commands.check import check_download
from ctprep.commands.verify import verify_store
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctprep.store import SliceStore
from killing import subprocess_env

SHAPE = (8, 32, 32)


@pytest.fixture(scope="module")
def tiny_lits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "lits"
    for number in range(3):
        write_lits_case(root, number, shape=SHAPE)
    return root


def _convert(root: Path, output: Path, source: str = "lits", workers: int = 1):
    return convert_dataset(ConvertConfig(source=source, input_dir=str(root), output=str(output), workers=workers),
                           progress=False)


# ---- one id twice ----------------------------------------------------------------------------------------
def _lits_with_leading_zero(root: Path) -> tuple[Path, Path]:
    write_lits_case(root, 0, shape=SHAPE)
    image, _ = write_lits_case(root / "other", 7, shape=SHAPE)
    first = image.with_name("volume-07.nii")
    image.rename(first)
    image.with_name("segmentation-7.nii").rename(image.with_name("segmentation-07.nii"))
    second, _ = write_lits_case(root, 7, shape=SHAPE)
    return first, second


def _kits_in_two_folders(root: Path) -> tuple[Path, Path]:
    write_kits19_case(root, 1, shape=SHAPE)
    first = write_kits19_case(root / "a", 0, shape=SHAPE) / "imaging.nii.gz"
    second = write_kits19_case(root / "b", 0, shape=SHAPE) / "imaging.nii.gz"
    return first, second


@pytest.mark.parametrize("source, make, case_id", [("lits", _lits_with_leading_zero, "volume-7"),
                                                   ("kits19", _kits_in_two_folders, "case_00000")])
@pytest.mark.parametrize("workers", [1, 2])
def test_one_case_id_twice_is_refused_naming_both_files(source, make, case_id, workers, tmp_path):
    root = tmp_path / source
    first, second = make(root)
    report = _convert(root, tmp_path / "out.zarr", source, workers)
    skipped = {o.case_id: o.reason for o in report.with_status("skipped")}
    assert set(skipped) == {case_id}
    assert str(first) in skipped[case_id] and str(second) in skipped[case_id], skipped
    store = SliceStore.open(tmp_path / "out.zarr")
    assert case_id not in store.case_ids() + store.incomplete_case_ids()  # nothing written for it
    assert len(store.case_ids()) == 1 and verify_store(tmp_path / "out.zarr").ok
    checked = check_download(source, root)
    assert not checked.ok and [c for c, _ in checked.duplicates] == [case_id]
    assert any(str(first) in line and str(second) in line for line in checked.lines())
    assert case_id not in checked.missing


# ---- two writers, one store --------------------------------------------------------------------------------
def _convert_command(root: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ctprep.cli", "convert", "--source", "lits", "--input", str(root),
            "--output", str(output), "--quiet", *extra]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_conversions_of_the_same_cases_into_one_store(tiny_lits, tmp_path):
    env = subprocess_env()
    for attempt in range(10):
        output = tmp_path / f"store{attempt}.zarr"
        runs = [subprocess.Popen(_convert_command(tiny_lits, output, *extra), env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for extra in ([], ["--workers", "2"])]
        for run in runs:
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0, f"attempt {attempt}: {out}{err}"
            assert "skipped" not in err, f"attempt {attempt}: a store problem reported as a skip: {err}"
        verified = verify_store(output)
        assert verified.ok, (attempt, verified.lines())
        store = SliceStore.open(output)
        assert store.case_ids() == ["volume-0", "volume-1", "volume-2"], attempt
        assert all(store.case_problem(c) is None for c in store.case_ids()), attempt
        again = _convert(tiny_lits, output)
        assert len(again.with_status("existing")) == 3, attempt


# ---- resume checks what it skips ------------------------------------------------------------------------------
def _drop_array(case: Path) -> None:
    shutil.rmtree(case / "labels" / "tumour")


def _drop_chunk(case: Path) -> None:
    next((case / "image").glob("c.*")).unlink()


@pytest.mark.parametrize("damage", [_drop_array, _drop_chunk])
def test_resume_redoes_a_complete_case_that_lacks_arrays_or_chunks(damage, tiny_lits, tmp_path):
    output = tmp_path / "out.zarr"
    _convert(tiny_lits, output)
    damage(output / "cases" / "volume-1")
    assert "volume-1" in (SliceStore.open(output).case_problem("volume-1") or "")
    report = _convert(tiny_lits, output)
    assert [o.case_id for o in report.with_status("converted")] == ["volume-1"]
    assert len(report.with_status("existing")) == 2
    assert SliceStore.open(output).case_problem("volume-1") is None and verify_store(output).ok


def test_a_case_is_never_marked_complete_when_its_chunks_are_gone(tiny_lits, tmp_path, monkeypatch):
    """Another writer removing the case's files while this one writes: refused, never marked complete."""
    output = tmp_path / "out.zarr"
    real = SliceStore._write_slab

    def write_then_lose(array, *args, **kwargs):
        sums = real(array, *args, **kwargs)
        if array.basename == "image":
            for chunk in (output / array.path).glob("c.*"):
                chunk.unlink()
        return sums

    monkeypatch.setattr(SliceStore, "_write_slab", staticmethod(write_then_lose))
    with pytest.raises(Exception, match=r"case volume-0: array image lacks \d+ of its \d+ chunk files"):
        _convert(tiny_lits, output)
    assert "volume-0" not in SliceStore.open(output).case_ids()
