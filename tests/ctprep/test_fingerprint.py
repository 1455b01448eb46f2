"""ctprep info --fingerprint: values checked against numpy on the phantoms the store was converted from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.commands.fingerprint import fingerprint, lesion_sizes
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.datasets import SplitConfig
from ctprep.store import SliceStore
from lesionkit.cli import ctprep as main

SPLIT = SplitConfig(seed=0, fractions=(0.5, 0.5, 0.0))


def _convert(dataset, out, keep_hu: bool):
    config = ConvertConfig(source="lits", input_dir=str(dataset.root), output=str(out), keep_hu=keep_hu, split=SPLIT)
    assert not convert_dataset(config, progress=False).with_status("skipped")
    return out


def _expected(dataset, store: SliceStore, split: str, values) -> dict:
    """Hand-computed from the phantom arrays: percentiles, lesion voxels, mm3 and diameters of ``split``."""
    cases = [r.case_id for r in store.records() if split in ("all", r.split)]
    overall = np.concatenate([values(c).ravel() for c in cases])
    fg = np.concatenate([values(c)[dataset.phantom(c)[1] == 2] for c in cases])
    voxels = sorted(int((dataset.phantom(c)[1] == 2).sum()) for c in cases)  # one tumour per phantom
    mm3 = [v * 2.5 * 0.8 * 0.8 for v in voxels]
    return {"overall": np.percentile(overall, [0.5, 50, 99.5], method="inverted_cdf").tolist(),
            "foreground": np.percentile(fg, [0.5, 50, 99.5], method="inverted_cdf").tolist(),
            "voxels": voxels, "mm3": mm3, "diameter": [(6 * v / np.pi) ** (1 / 3) for v in mm3]}


def _check(split: dict, want: dict) -> None:
    got = split["intensity_percentiles"]
    assert got["percentiles"] == [0.5, 50.0, 99.5]
    assert got["overall"] == want["overall"] and got["foreground"] == want["foreground"]
    lesions = split["lesions"]
    assert lesions["count"] == len(want["voxels"])
    assert lesions["voxels"]["min"] == want["voxels"][0] and lesions["voxels"]["max"] == want["voxels"][-1]
    assert lesions["volume_mm3"]["median"] == pytest.approx(float(np.median(want["mm3"])))
    assert lesions["equivalent_diameter_mm"]["max"] == pytest.approx(max(want["diameter"]))
    assert split["spacing_mm"]["z"] == {"min": 2.5, "median": 2.5, "max": 2.5}
    assert split["shape"]["y"]["max"] == 64 and split["shape"]["z"]["median"] == 24


def test_hu_fingerprint_per_split_matches_numpy(lits_dataset, tmp_path):
    out = _convert(lits_dataset, tmp_path / "lits.zarr", keep_hu=True)
    store = SliceStore.open(out)
    data = fingerprint(out)
    assert data["hu"] is True and data["units"].startswith("HU")
    splits = {r.split for r in store.records()}
    assert set(data["splits"]) == splits | {"all"} and len(splits) == 2  # the seed puts patients on both sides
    for split in data["splits"]:
        _check(data["splits"][split], _expected(lits_dataset, store, split, lambda c: lits_dataset.phantom(c)[0]))
    assert data["splits"]["all"]["cases"] == 3


def test_window_units_without_stored_hu(lits_dataset, tmp_path):
    out = _convert(lits_dataset, tmp_path / "lits.zarr", keep_hu=False)
    store = SliceStore.open(out)
    data = fingerprint(out)
    assert data["hu"] is False and "window units" in data["units"] and "liver [-45, 105] HU" in data["units"]
    first_window = lambda c: store.read_case(c).image[:, 0]  # noqa: E731
    _check(data["splits"]["all"], _expected(lits_dataset, store, "all", first_window))
    assert 0 <= data["splits"]["all"]["intensity_percentiles"]["overall"][0] <= 255


def test_cli_prints_and_writes_the_manifests(lits_dataset, tmp_path):
    out = _convert(lits_dataset, tmp_path / "lits.zarr", keep_hu=True)
    result = CliRunner().invoke(main, ["info", str(out), "--fingerprint"])
    assert result.exit_code == 0, result.output
    assert "intensities  HU" in result.output and "[all] 3 case(s)" in result.output
    assert "equivalent diameter mm" in result.output
    beside = json.loads(open(manifest_path(out)).read())
    assert beside["fingerprint"] == SliceStore.open(out).manifest()["fingerprint"] == fingerprint(out)
    assert beside["cases"]  # the rest of the manifest kept
    again = CliRunner().invoke(main, ["info", str(out), "--fingerprint", "--json"])
    assert json.loads(again.output)["fingerprint"]["splits"]["all"]["cases"] == 3


def test_lesions_are_not_joined_across_a_gap_in_stored_slices():
    mask = np.zeros((2, 5, 5), dtype=np.uint8)
    mask[:, 2, 2] = 1
    assert lesion_sizes(mask, (3, 4)) == [2]
    assert lesion_sizes(mask, (3, 7)) == [1, 1]  # --slices lesion dropped rows 4..6


def test_no_store_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["info", str(tmp_path / "none.zarr"), "--fingerprint"])
    assert result.exit_code == 1 and "not a lesionkit store" in result.output
