"""Tampered store metadata (issue 17, A6): refused with one line naming store, case and field.

Each variant edits one case's ``zarr.json`` (its record or an array's metadata) the way a
damaged disk or a careless hand would; readers (read_case, read_slices, the CLI's preview)
refuse it with one StoreFormatError line, and ``ctprep verify`` reports it instead of "OK".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctprep.cli import main as ctprep_cli
from ctprep.commands.verify import verify_store
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.errors import StoreFormatError
from ctprep.phantoms.nifti import write_lits_case
from ctprep.store import SliceStore


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meta")
    for number in range(2):
        write_lits_case(root / "lits", number, shape=(8, 32, 32))
    output = root / "clean.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(root / "lits"), output=str(output)), progress=False)
    return output


def _edit(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _record(change):
    return "zarr.json", lambda meta: change(meta["attributes"]["lesionkit_case"])


def _not_an_object(marker):
    marker["record"] = ["not", "an", "object"]


def _huge_geometry(marker):
    marker["record"]["geometry"]["shape"] = [1e9, 32, 32]


def _few_positions(marker):
    marker["record"]["z_positions"] = marker["record"]["z_positions"][:2]


def _set(key, value):
    def change(meta):
        meta[key] = value
    return change


def _separator(meta):
    meta["chunk_key_encoding"]["configuration"]["separator"] = "/"


TAMPERED = {
    "record-not-object": (*_record(_not_an_object), r"record field record is not an object"),
    "geometry-shape-1e9": (*_record(_huge_geometry), r"record field geometry\.shape must be 3 whole numbers"),
    "record-lengths": (*_record(_few_positions), r"record is malformed \(.*z_positions.*one entry per stored slice"),
    "array-shape-100000^2": ("image/zarr.json", _set("shape", [8, 1, 100000, 100000]), r"array image shape must be"),
    "image-dtype-float64": ("image/zarr.json", _set("data_type", "float64"), r"array image dtype must be uint8"),
    "label-dtype-float64": ("labels/tumour/zarr.json", _set("data_type", "float64"),
                            r"array labels/tumour dtype must be uint8 or float32"),
    "chunk-shape": ("labels/liver/zarr.json", _set("chunk_grid", {"name": "regular", "configuration":
                                                                   {"chunk_shape": [8, 32, 32]}}),
                    r"array labels/liver chunk shape must be \(1, 32, 32\)"),
    "chunk-key-separator": ("image/zarr.json", _separator, r"array image chunk key encoding must be"),
}


@pytest.mark.parametrize("variant", sorted(TAMPERED))
def test_tampered_metadata_is_refused_in_one_line(variant, clean_store, tmp_path):
    store_path = tmp_path / "store.zarr"
    shutil.copytree(clean_store, store_path)
    rel, change, message = TAMPERED[variant]
    _edit(store_path / "cases" / "volume-1" / rel, change)
    pattern = rf"{store_path}: case volume-1: {message}"
    with pytest.raises(StoreFormatError, match=pattern):
        store = SliceStore.open(store_path)
        store.read_case("volume-1", hu=False)
        store.read_slices([("volume-1", 0)], labels=["liver", "tumour"])
    report = verify_store(store_path)
    assert not report.ok and any(c == "volume-1" and __import__("re").search(message, p) for c, p in report.problems)
    assert SliceStore.open(store_path).read_case("volume-0").image.shape[0] == 8  # the other case reads
    result = CliRunner().invoke(ctprep_cli, ["preview", str(store_path), "--case", "volume-1", "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "volume-1" in lines[0], result.output
