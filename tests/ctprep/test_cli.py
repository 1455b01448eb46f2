"""The ctprep command line (click's CliRunner), plus the --help of ctlabel and ctseg."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from lesionkit.cli import ctprep as main  # the program users run: ctprep's commands + demo
from ctprep.conversion_manifest import manifest_path
from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctprep.commands.preview import CAPTION_HEIGHT, MIN_TILE
from ctprep.store import SliceStore


def run(*args, expect: int | None = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if expect is not None:
        assert result.exit_code == expect, (f"exit {result.exit_code}\nstdout:\n{result.stdout}\n"
                                            f"stderr:\n{result.stderr}")
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ctprep: error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def store(lits_dataset_module, tmp_path_factory):
    """The phantom LiTS download converted through the CLI."""
    output = tmp_path_factory.mktemp("cli") / "lits.zarr"
    result = run("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", output, "--quiet")
    return lits_dataset_module, output, result


# ---- convert -------------------------------------------------------------------------------

def test_convert_summary(store):
    dataset, output, result = store
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(str(output))}: 3 converted, 0 already complete, 0 skipped; 72 slices in "
                        r"\d+\.\d s \(\d+ slices/s\), \d+\.\d MB written", lines[0]), lines[0]
    assert lines[1] == f"manifest: {manifest_path(output)}"
    assert len(lines) == 2
    assert manifest_path(output).is_file()
    assert SliceStore.open(output).case_ids() == list(dataset.case_ids)


def test_convert_options(lits_dataset_module, tmp_path):
    output = tmp_path / "o.zarr"
    result = run("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", output,
                 "--window", "lung", "--window", "soft=40,400", "--spacing", "5,0,0", "--size", "32",
                 "--slices", "lesion+1", "--keep-hu", "--cases", "volume-2, volume-0", "--workers", "1",
                 "--split-seed", "3", "--split", "0,0,1", "--quiet")
    assert "2 converted" in result.stdout
    store = SliceStore.open(output)
    assert store.case_ids() == ["volume-0", "volume-2"]
    params = store.parameters
    assert [w["name"] for w in params["windows"]] == ["lung", "soft"]
    assert params["spacing"] == [5.0, 0.0, 0.0] and params["size"] == [32, 32]
    assert params["slices"] == "lesion+1" and params["keep_hu"] is True
    assert params["split"] == {"seed": 3, "fractions": [0.0, 0.0, 1.0]}
    record = store.record("volume-0")
    assert record.geometry.shape == (12, 32, 32)
    assert record.split == "test"
    assert record.has_hu
    # one number: isotropic spacing
    run("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", tmp_path / "iso.zarr",
        "--spacing", "3.2", "--cases", "volume-1", "--quiet")
    assert SliceStore.open(tmp_path / "iso.zarr").record("volume-1").geometry.shape == (19, 16, 16)


@pytest.mark.parametrize("args, message", [
    (["--spacing", "a,b"], "expected comma-separated numbers"),
    (["--spacing", "1,2"], "expected 1 or 3 numbers"),
    (["--size", "1,2,3"], "expected 1 or 2 numbers"),
    (["--workers", "0"], "0 is not in the range x>=1"),
])
def test_convert_usage_errors(lits_dataset_module, tmp_path, args, message):
    result = run("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output",
                 tmp_path / "x.zarr", *args, expect=2)
    assert message in result.stderr
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--slices", "tumour"], ["--slices 'tumour'"]),
    (["--window", "nonsense"], ["window 'nonsense'", "preset"]),
    (["--split", "0.5,0.5,0.5"], ["split fractions"]),
    (["--source", "msd"], ["unknown source 'msd'"]),
    (["--cases", "volume-9"], ["--cases not found in the input: volume-9"]),
])
def test_convert_bad_values_are_one_line_errors(lits_dataset_module, tmp_path, args, fragments):
    base = {"--source": "lits", "--input": lits_dataset_module.root, "--output": tmp_path / "x.zarr"}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    result = run("convert", "--quiet", *[v for kv in base.items() for v in kv], expect=None)
    assert_one_line_error(result, *fragments)


def test_convert_errors_name_the_path(store, tmp_path):
    dataset, output, _ = store
    missing = tmp_path / "no_such_download"
    assert_one_line_error(run("convert", "--source", "lits", "--input", missing, "--output", tmp_path / "a.zarr",
                              expect=None), str(missing), "input folder not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("convert", "--source", "lits", "--input", empty, "--output", tmp_path / "a.zarr",
                              expect=None), str(empty), "no lits cases found")
    other = run("convert", "--source", "lits", "--input", dataset.root, "--output", output, "--window", "bone",
                "--quiet", expect=None)
    assert_one_line_error(other, str(output), "other parameters", "windows", "--overwrite")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep")
    refused = run("convert", "--source", "lits", "--input", dataset.root, "--output", precious, "--overwrite",
                  "--quiet", expect=None)
    assert_one_line_error(refused, str(precious), "not a lesionkit store")
    assert (precious / "data.txt").read_text() == "keep"


# ---- info ----------------------------------------------------------------------------------

def test_info_numbers_are_right(store):
    _, output, _ = store
    s = SliceStore.open(output)
    records, index = s.records(), s.index()
    splits = {k: sum(r.split == k for r in records) for k in ("train", "val", "test")}
    lines = run("info", output).stdout.splitlines()
    fields = {line[:13].strip(): line[13:] for line in lines}
    assert fields["store"] == str(output)
    assert fields["format"] == "lesionkit-ct-slice-store v1 (written by lesionkit 0.1.0)"
    assert fields["source"] == "lits"
    assert fields["cases"] == f"3 complete (train {splits['train']}, val {splits['val']}, test {splits['test']})"
    lesion = int(index.has_lesion.sum())
    assert 0 < lesion < 72
    assert fields["slices"] == f"72 ({lesion} with lesion)"
    assert fields["windows"] == "liver [-45, 105] HU, abdomen [-150, 250] HU"
    assert fields["labels"] == "liver, tumour"
    size = re.fullmatch(r"(\d+\.\d) MB \(uncompressed (\d+\.\d) MB, ratio (\d+\.\d)x\)", fields["on disk"])
    assert size, fields["on disk"]
    assert float(size[1]) == pytest.approx(s.bytes_on_disk() / 1e6, abs=0.051)
    # 3 cases x 24 slices x 64 x 64 x (2 windows + 2 labels)
    assert float(size[2]) == pytest.approx(3 * 24 * 64 * 64 * 4 / 1e6, abs=0.051)
    assert "skipped" not in fields


def test_info_json(store):
    _, output, _ = store
    s = SliceStore.open(output)
    data = json.loads(run("info", output, "--json").stdout)
    assert data["path"] == str(output)
    assert data["source"] == "lits" and data["format_version"] == 1
    assert data["cases"] == 3 and data["incomplete_cases"] == 0
    assert data["slices"] == len(s.index()) == 72
    assert data["lesion_slices"] == int(s.index().has_lesion.sum())
    assert sum(data["splits"].values()) == 3
    assert data["labels"] == ["liver", "tumour"]
    assert data["windows"] == ["liver [-45, 105] HU", "abdomen [-150, 250] HU"]
    assert data["uncompressed_bytes"] == 3 * 24 * 64 * 64 * 4
    assert data["bytes_on_disk"] == s.bytes_on_disk()
    assert data["compression_ratio"] == pytest.approx(data["uncompressed_bytes"] / data["bytes_on_disk"])
    assert data["skipped"] == []


def test_info_reports_skipped_and_incomplete(tmp_path):
    folder = tmp_path / "lits"
    write_lits_case(folder, 0, shape=(8, 24, 24))
    write_lits_case(folder, 1, shape=(8, 24, 24))
    (folder / "segmentation-1.nii").write_bytes(b"")
    output = tmp_path / "s.zarr"
    run("convert", "--source", "lits", "--input", folder, "--output", output, "--quiet")
    # an interrupted write of another case
    SliceStore.open(output, mode="a")._cases_group().create_group("volume-7").attrs.update(
        {"lesionkit_case": {"complete": False}})
    data = json.loads(run("info", output, "--json").stdout)
    assert data["cases"] == 1 and data["incomplete_cases"] == 1 and data["skipped"] == ["volume-1"]
    text = run("info", output).stdout
    assert ", 1 incomplete" in text
    assert "skipped      volume-1 (reasons in the manifest)" in text


def test_info_errors(tmp_path, store):
    folder = tmp_path / "not_a_store"
    folder.mkdir()
    assert_one_line_error(run("info", folder, expect=None), str(folder), "not a lesionkit store")
    _, output, _ = store
    newer = tmp_path / "newer.zarr"
    shutil.copytree(output, newer)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["lesionkit"]["format_version"] = 99
    (newer / "zarr.json").write_text(json.dumps(meta))
    assert_one_line_error(run("info", newer, expect=None), str(newer), "version 99", "upgrade lesionkit")
    # a path that does not exist (STORE may be a URL, so the store checks it, not click)
    missing = run("info", tmp_path / "nowhere.zarr", expect=None)
    assert_one_line_error(missing, str(tmp_path / "nowhere.zarr"), "not a lesionkit store (nothing there)")


# ---- preview -------------------------------------------------------------------------------

def test_preview_writes_the_slices(store, tmp_path):
    _, output, _ = store
    out = tmp_path / "p" / "preview.png"
    result = run("preview", output, "--case", "volume-0", "--z", 3, "--z", 14, "--out", out)
    assert result.stdout.strip() == f"wrote {out}"
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert image is not None and image.dtype == np.uint8
    scale = MIN_TILE // 64
    assert image.shape == (2 * CAPTION_HEIGHT + 64 * scale, 2 * 64 * scale, 3)
    # away from contours (coloured pixels) each tile shows the stored slice, enlarged
    data = SliceStore.open(output).read_case("volume-0")
    for tile_index, z in enumerate((3, 14)):
        tile = image[2 * CAPTION_HEIGHT:, tile_index * 64 * scale:(tile_index + 1) * 64 * scale]
        grey = (tile[..., 0] == tile[..., 1]) & (tile[..., 1] == tile[..., 2])
        expected = np.kron(data.image[z, 0], np.ones((scale, scale), dtype=np.uint8))
        assert grey.mean() > 0.9
        np.testing.assert_array_equal(tile[..., 0][grey], expected[grey])
    # the tumour slice shows the tumour contour (red, label 2) and the liver contour (green, label 1)
    tile = image[2 * CAPTION_HEIGHT:, 64 * scale:]
    assert np.any(np.all(tile == (0, 0, 255), axis=-1))
    assert np.any(np.all(tile == (0, 255, 0), axis=-1))


def test_preview_default_slice_and_errors(store, tmp_path):
    _, output, _ = store
    out = tmp_path / "d.png"
    run("preview", output, "--case", "volume-1", "--out", out, "--channel", 1)
    image = cv2.imread(str(out))
    assert image.shape == (2 * CAPTION_HEIGHT + MIN_TILE, MIN_TILE, 3)
    assert_one_line_error(run("preview", output, "--case", "volume-9", "--out", out, expect=None),
                          str(output), "volume-9")
    assert_one_line_error(run("preview", output, "--case", "volume-1", "--channel", 5, "--out", out,
                              expect=None), "channel 5 out of range")
    assert_one_line_error(run("preview", output, "--case", "volume-1", "--z", 99, "--out", out,
                              expect=None), str(output), "volume-1", "24 stored slices", "z=99")


def test_preview_float_labels_every_label_in_the_legend(store, tmp_path):
    """A store with float labels (pred_*, soft_*) and 9 labels: outlined at 0.5, 9 distinct legend entries."""
    import shutil

    from ctprep.commands.preview import label_colour, legend, render_preview

    _, output, _ = store
    copy = tmp_path / "many.zarr"
    shutil.copytree(output, copy)
    writable = SliceStore.open(copy, mode="a")
    data = writable.read_case("volume-0")
    tumour = data.labels["tumour"].astype(np.float32)
    writable.write_label("volume-0", "pred_run", np.roll(tumour * 0.8, 4, axis=1).astype(np.float32))
    writable.write_label("volume-0", "soft_tumour", (tumour * 0.3).astype(np.float32))  # never >= 0.5
    for k in range(5):
        writable.write_label("volume-0", f"extra_{k}", np.roll(data.labels["liver"], 3 * (k + 1), axis=2))
    out = tmp_path / "many.png"
    z = int(np.argmax(data.labels["tumour"].reshape(data.labels["tumour"].shape[0], -1).sum(1)))
    assert run("preview", copy, "--case", "volume-0", "--z", z, "--out", out).stdout.strip() == f"wrote {out}"
    names = SliceStore.open(copy).label_names("volume-0")
    assert len(names) == 9
    floats = [n in ("pred_run", "soft_tumour") for n in names]
    entries = legend(names, floats, MIN_TILE)
    assert len(entries) == 9 and len({e.colour for e in entries}) == 9 and entries[-1].line >= 1  # wrapped
    assert sum("(>= 0.5)" in e.name for e in entries) == 2
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)
    header = (1 + entries[-1].line + 1) * CAPTION_HEIGHT
    assert image.shape[0] == header + MIN_TILE
    tile = image[header:]
    pred = label_colour(names.index("pred_run"))
    soft = label_colour(names.index("soft_tumour"))
    assert np.any(np.all(tile == pred, axis=-1))  # 0.8 x tumour crosses 0.5: outlined
    assert not np.any(np.all(tile == soft, axis=-1))  # 0.3 never does
    # --label chooses what is drawn: one label, one legend line
    only = tmp_path / "only.png"
    run("preview", copy, "--case", "volume-0", "--z", z, "--label", "pred_run", "--out", only)
    assert cv2.imread(str(only)).shape[0] == 2 * CAPTION_HEIGHT + MIN_TILE
    assert_one_line_error(run("preview", copy, "--case", "volume-0", "--label", "nope", "--out", only,
                              expect=None), "no label 'nope'")


# ---- check ---------------------------------------------------------------------------------

def test_check_reports_missing_unexpected_unreadable(tmp_path):
    folder = tmp_path / "lits"
    for number in (0, 1, 3, 200):
        write_lits_case(folder, number, shape=(4, 16, 16))
    (folder / "volume-3.nii").write_bytes(b"")
    result = run("check", "--source", "lits", "--input", folder, expect=1)
    lines = result.stdout.splitlines()
    assert lines[0] == "lits: 4 cases found, 128 missing, 1 unexpected, 1 unreadable"
    assert lines[1].startswith("  missing     volume-2, volume-4, volume-5, ")
    assert lines[1].endswith(" ... (128 in all)")
    assert lines[2] == "  unexpected  volume-200"
    assert lines[3].startswith(f"  unreadable  volume-3: {folder / 'volume-3.nii'}: ")
    assert len(lines) == 4


def test_check_complete_download(tmp_path):
    root = tmp_path / "kits19"
    template = write_kits19_case(tmp_path / "template", 0, shape=(2, 8, 8))
    for number in range(210):
        shutil.copytree(template, root / f"case_{number:05d}")
    assert run("check", "--source", "kits19", "--input", root).stdout.splitlines() == [
        "kits19: 210 cases found, 0 missing, 0 unexpected, 0 unreadable"]
    (root / "case_00007" / "segmentation.nii.gz").unlink()
    result = run("check", "--source", "kits19", "--input", root, expect=1)
    assert result.stdout.splitlines() == [
        "kits19: 210 cases found, 0 missing, 0 unexpected, 1 unreadable",
        f"  unreadable  case_00007: {root / 'case_00007' / 'segmentation.nii.gz'}: file not found"]


# ---- help ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["convert"], ["info"], ["preview"], ["check"], ["demo"]])
def test_ctprep_help(command):
    result = run(*command, "--help")
    assert result.stdout.startswith("Usage: ")
    if command == ["convert"]:
        for option in ("--source", "--input", "--output", "--window", "--spacing", "--size", "--slices",
                       "--keep-hu", "--cases", "--workers", "--overwrite", "--strict"):
            assert option in result.stdout
    if not command:
        for name in ("convert", "info", "preview", "check", "demo"):
            assert re.search(rf"^  {name}\s", result.stdout, re.MULTILINE), name


@pytest.mark.parametrize("module, words", [("ctlabel.cli", "trimap"), ("ctseg.cli", "segmentor")])
def test_other_tools_help(module, words):
    import importlib

    cli = importlib.import_module(module).main
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ") and words in result.stdout
    assert CliRunner().invoke(cli, ["-h"]).stdout == result.stdout


def test_version():
    result = run("--version")
    assert result.stdout.strip().endswith("version 0.1.0")
