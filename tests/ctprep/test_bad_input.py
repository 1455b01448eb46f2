"""Bad inputs: each is one clear line naming the file, the case is skipped, the others convert."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.cli import main
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.errors import CaseInputError
from ctprep.phantoms.nifti import canonical_geometry, make_phantom, to_nifti, write_kits19_case, write_lits_case
from ctprep.store import SliceStore

SMALL = (12, 32, 32)
SPACING = (2.5, 0.8, 0.8)
BAD = 5  # the LiTS case number every corruption below damages


def _truncate(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if isinstance(keep, int) else data[: int(len(data) * keep)])


def _resave(path: Path, edit) -> None:
    image = nib.load(path)
    data, affine = edit(np.asarray(image.dataobj).copy(), image.affine.copy())
    out = nib.Nifti1Image(data, affine)
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    nib.save(out, path)


def truncated_gz(folder: Path) -> tuple[str, str]:
    image, _ = write_lits_case(folder, BAD, shape=SMALL, gz=True)
    _truncate(image, 0.5)
    return image.name, "truncated or corrupt gzip stream"


def truncated_nii(folder: Path) -> tuple[str, str]:
    image, _ = write_lits_case(folder, BAD, shape=SMALL)
    _truncate(image, -1000)
    return image.name, "truncated: header promises"


def random_bytes_gz(folder: Path) -> tuple[str, str]:
    image, _ = write_lits_case(folder, BAD, shape=SMALL, gz=True)
    image.write_bytes(np.random.default_rng(1).bytes(20000))
    return image.name, "not a NIfTI-1/2 file"


def random_gzip_payload(folder: Path) -> tuple[str, str]:
    # a valid gzip stream whose content is not NIfTI
    image, _ = write_lits_case(folder, BAD, shape=SMALL, gz=True)
    image.write_bytes(gzip.compress(np.random.default_rng(2).bytes(20000)))
    return image.name, "not a NIfTI-1/2 file"


def empty_file(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)
    label.write_bytes(b"")
    return label.name, "file is empty"


def shape_mismatch(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)
    _resave(label, lambda data, affine: (data[:, :, :-2], affine))
    return label.name, "segmentation shape (32, 32, 10) differs from image shape (32, 32, 12)"


def affine_mismatch(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)

    def shift(data, affine):
        affine[0, 3] += 1.5  # 1.5 mm, far beyond the tolerance
        return data, affine

    _resave(label, shift)
    return label.name, "segmentation affine differs from the image's by up to 1.5 mm"


def affine_within_tolerance(folder: Path) -> tuple[str, None]:
    # float32 rounding-sized differences are not a mismatch: the case converts
    _, label = write_lits_case(folder, BAD, shape=SMALL)

    def nudge(data, affine):
        affine[:3, 3] += 1e-4
        return data, affine

    _resave(label, nudge)
    return label.name, None


def label_outside_map(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)

    def seven(data, affine):
        data[data == 2] = 7
        return data, affine

    _resave(label, seven)
    return label.name, "label values outside the label map [0, 1, 2]: 7 ("


def negative_label(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)
    _resave(label, lambda data, affine: (data.astype(np.int16) - 1, affine))
    return label.name, "segmentation values range [-1, 1], expected 0..255 labels"


def fractional_label(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)
    _resave(label, lambda data, affine: (data.astype(np.float32) * 0.5, affine))
    return label.name, "segmentation holds non-integer values"


def _float_image(folder: Path, value: float) -> Path:
    hu, seg = make_phantom(SMALL, SPACING, seed=BAD)
    geometry = canonical_geometry(SMALL, SPACING)
    data = hu.astype(np.float32)
    data[3, 10, 10] = value
    data[4, 11, 12] = value
    image = folder / f"volume-{BAD}.nii"
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(to_nifti(data, geometry, ("R", "A", "S")), image)
    nib.save(to_nifti(seg, geometry, ("R", "A", "S")), folder / f"segmentation-{BAD}.nii")
    return image


def nan_voxels(folder: Path) -> tuple[str, str]:
    return _float_image(folder, np.nan).name, "2 voxels are NaN or infinite"


def inf_voxels(folder: Path) -> tuple[str, str]:
    return _float_image(folder, np.inf).name, "2 voxels are NaN or infinite"


def hu_out_of_range(folder: Path) -> tuple[str, str]:
    return _float_image(folder, 1e6).name, "does not fit int16"


def missing_label(folder: Path) -> tuple[str, str]:
    _, label = write_lits_case(folder, BAD, shape=SMALL)
    label.unlink()
    return label.name, "file not found"


def four_d(folder: Path) -> tuple[str, str]:
    image, _ = write_lits_case(folder, BAD, shape=SMALL)
    _resave(image, lambda data, affine: (np.stack([data, data], axis=-1), affine))
    return image.name, "expected a 3-D volume"


CORRUPTIONS = [truncated_gz, truncated_nii, random_bytes_gz, random_gzip_payload, empty_file, shape_mismatch,
               affine_mismatch, label_outside_map, negative_label, fractional_label, nan_voxels, inf_voxels,
               hu_out_of_range, missing_label, four_d]


def _good_lits(folder: Path) -> None:
    write_lits_case(folder, 0, shape=SMALL)
    write_lits_case(folder, 1, shape=SMALL, axcodes=("L", "P", "S"), gz=True)


def _convert(folder: Path, output: Path, **kwargs):
    config = ConvertConfig(source=kwargs.pop("source", "lits"), input_dir=str(folder), output=str(output), **kwargs)
    return convert_dataset(config, progress=False)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_bad_case_is_skipped_and_reported(tmp_path, corrupt, caplog):
    folder = tmp_path / "lits"
    _good_lits(folder)
    filename, reason = corrupt(folder)
    output = tmp_path / "out.zarr"
    with caplog.at_level("ERROR", logger="ctprep"):
        report = _convert(folder, output)
    by_id = {o.case_id: o for o in report.outcomes}
    assert list(by_id) == ["volume-0", "volume-1", f"volume-{BAD}"]
    assert by_id["volume-0"].status == by_id["volume-1"].status == "converted"
    bad = by_id[f"volume-{BAD}"]
    assert bad.status == "skipped"
    assert "\n" not in bad.reason
    assert filename in bad.reason, bad.reason
    assert str(folder / filename) in bad.reason  # the full path, so the file can be found
    assert reason in bad.reason, bad.reason
    # the summary lists it, with its reason
    lines = report.lines()
    assert lines[0].startswith(f"{output}: 2 converted, 0 already complete, 1 skipped")
    assert f"  skipped volume-{BAD}: {bad.reason}" in lines
    # and so does the manifest
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["summary"] == {"converted": 2, "skipped": [f"volume-{BAD}"]}
    assert manifest["cases"][f"volume-{BAD}"]["status"] == "skipped"
    # the manifest's copy names the file under INPUT (the input folder's own name may be a patient's)
    assert manifest["cases"][f"volume-{BAD}"]["reason"] == bad.reason.replace(str(folder), "INPUT")
    assert any(f"volume-{BAD}" in r.getMessage() and filename in r.getMessage() for r in caplog.records)
    # the good cases are there and right
    store = SliceStore.open(output)
    assert store.case_ids() == ["volume-0", "volume-1"]
    assert store.incomplete_case_ids() == []
    np.testing.assert_array_equal(store.read_case("volume-1").labels["tumour"],
                                  (make_phantom(SMALL, SPACING, seed=1)[1] == 2).astype(np.uint8))


def test_small_affine_difference_is_tolerated(tmp_path):
    folder = tmp_path / "lits"
    _good_lits(folder)
    affine_within_tolerance(folder)
    report = _convert(folder, tmp_path / "out.zarr")
    assert [o.status for o in report.outcomes] == ["converted"] * 3


def test_kits_case_folder_without_segmentation(tmp_path):
    root = tmp_path / "kits19"
    for number in (0, 1, 2):
        write_kits19_case(root, number, shape=SMALL)
    (root / "case_00001" / "segmentation.nii.gz").unlink()
    output = tmp_path / "k.zarr"
    report = _convert(root, output, source="kits19")
    assert [(o.case_id, o.status) for o in report.outcomes] == [
        ("case_00000", "converted"), ("case_00001", "skipped"), ("case_00002", "converted")]
    reason = report.outcomes[1].reason
    assert reason == f"{root / 'case_00001' / 'segmentation.nii.gz'}: file not found"
    assert SliceStore.open(output).case_ids() == ["case_00000", "case_00002"]
    assert json.loads(manifest_path(output).read_text())["summary"]["skipped"] == ["case_00001"]


def test_empty_input_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseInputError) as info:
        _convert(tmp_path / "empty", tmp_path / "out.zarr")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'empty'}: no lits cases found")
    assert "volume-N.nii" in message  # says what it looked for
    assert not (tmp_path / "out.zarr").exists()


def test_missing_input_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="input folder not found"):
        _convert(tmp_path / "nowhere", tmp_path / "out.zarr")


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match=r"unknown source .msd. \(valid: deeplesion, .*lits, .*nsclc\)$"):
        _convert(tmp_path, tmp_path / "out.zarr", source="msd")


# ---- exit codes ----------------------------------------------------------------------------

def _cli(*args):
    return CliRunner().invoke(main, ["convert", "--quiet", *map(str, args)])


def test_exit_code_zero_when_something_converted(tmp_path):
    folder = tmp_path / "lits"
    _good_lits(folder)
    empty_file(folder)
    result = _cli("--source", "lits", "--input", folder, "--output", tmp_path / "a.zarr")
    assert result.exit_code == 0, result.output
    assert "2 converted, 0 already complete, 1 skipped" in result.stdout
    assert f"  skipped volume-{BAD}: {folder / f'segmentation-{BAD}.nii'}: file is empty" in result.stdout
    strict = _cli("--source", "lits", "--input", folder, "--output", tmp_path / "b.zarr", "--strict")
    assert strict.exit_code == 1
    assert "1 skipped" in strict.stdout
    # the good cases were still converted under --strict
    assert SliceStore.open(tmp_path / "b.zarr").case_ids() == ["volume-0", "volume-1"]


def test_exit_code_nonzero_when_nothing_converted(tmp_path):
    folder = tmp_path / "lits"
    truncated_gz(folder)
    result = _cli("--source", "lits", "--input", folder, "--output", tmp_path / "a.zarr")
    assert result.exit_code == 1
    assert "0 converted, 0 already complete, 1 skipped" in result.stdout


def test_exit_code_of_a_clean_strict_run(tmp_path):
    folder = tmp_path / "lits"
    _good_lits(folder)
    result = _cli("--source", "lits", "--input", folder, "--output", tmp_path / "a.zarr", "--strict")
    assert result.exit_code == 0, result.output
    # resuming a complete store converts nothing but is not a failure
    again = _cli("--source", "lits", "--input", folder, "--output", tmp_path / "a.zarr", "--strict")
    assert again.exit_code == 0, again.output
    assert "0 converted, 2 already complete, 0 skipped" in again.stdout


def test_empty_folder_via_cli(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _cli("--source", "kits19", "--input", tmp_path / "empty", "--output", tmp_path / "a.zarr")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"ctprep: error: {tmp_path / 'empty'}: no kits19 cases found")


# ---- complete cases are never damaged -----------------------------------------------------

def test_bad_case_never_damages_complete_cases(tmp_path, ct):
    folder = tmp_path / "lits"
    _good_lits(folder)
    output = tmp_path / "out.zarr"
    first = _convert(folder, output)
    assert [o.status for o in first.outcomes] == ["converted", "converted"]
    before = {c: ct.store_file_bytes(output / "cases" / c) for c in ("volume-0", "volume-1")}
    # add a bad case, and damage the input of a complete case: neither touches what is stored
    truncated_nii(folder)
    (folder / "volume-0.nii").write_bytes(b"garbage")
    second = _convert(folder, output)
    assert [(o.case_id, o.status) for o in second.outcomes] == [
        ("volume-0", "existing"), ("volume-1", "existing"), (f"volume-{BAD}", "skipped")]
    after = {c: ct.store_file_bytes(output / "cases" / c) for c in ("volume-0", "volume-1")}
    assert after == before
    store = SliceStore.open(output)
    assert store.case_ids() == ["volume-0", "volume-1"]
    assert not (output / "cases" / f"volume-{BAD}").exists()
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["summary"] == {"converted": 2, "skipped": [f"volume-{BAD}"]}
    assert manifest["cases"]["volume-0"]["status"] == "converted"
    assert manifest["cases"]["volume-0"]["inputs"]  # the earlier run's inputs are kept
    # once the file is repaired the bad case converts and the others still are untouched
    write_lits_case(folder, BAD, shape=SMALL)
    third = _convert(folder, output)
    assert [o.status for o in third.outcomes] == ["existing", "existing", "converted"]
    assert {c: ct.store_file_bytes(output / "cases" / c) for c in ("volume-0", "volume-1")} == before
    assert json.loads(manifest_path(output).read_text())["summary"] == {"converted": 3, "skipped": []}
