"""Shared fixtures for the ctprep tests: small phantom downloads in the real raw layouts.

Phantoms are generated on the canonical (z, y, x) grid (ctprep.phantoms.nifti) and
written in several NIfTI orientations, so every loaded case must land back
on exactly the phantom's arrays whatever the orientation on disk.
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ctprep.datasets import load_dataset_manifest
from ctprep.phantoms.nifti import make_phantom, write_kits19_case, write_lits_case

SHAPE = (24, 64, 64)
SPACING = (2.5, 0.8, 0.8)
# ctprep.phantoms.nifti.canonical_geometry's default origin (LPS mm of canonical voxel 0, 0, 0).
ORIGIN = (-100.0, -120.0, -300.0)

# LiTS phantoms: case number -> (sub folder, axcodes of the file's voxel axes, gzip).
# RAS (nibabel's default), LPS (DICOM's), and an "ARI"-like permuted + flipped layout.
LITS_CASES = {
    0: ("Training Batch 1", ("R", "A", "S"), False),
    1: ("Training Batch 1", ("L", "P", "S"), True),
    2: ("Training Batch 2", ("A", "R", "I"), False),
}
KITS_CASES = (0, 1, 2)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    """A phantom download written in tmp: where, which source, and the expected canonical arrays."""

    source: str
    root: Path
    case_ids: tuple[str, ...]
    organ: str
    numbers: dict  # case id -> phantom seed/number
    shape: tuple[int, int, int] = SHAPE
    spacing: tuple[float, float, float] = SPACING

    def phantom(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The canonical (hu int16, segmentation uint8) the files of ``case_id`` were written from."""
        return make_phantom(self.shape, self.spacing, organ=self.organ, seed=self.numbers[case_id])

    def labels(self, case_id: str) -> dict[str, np.ndarray]:
        """The phantom segmentation mapped through the dataset manifest's label specs."""
        return expected_labels(self.source, self.phantom(case_id)[1])


def expected_labels(source: str, segmentation: np.ndarray) -> dict[str, np.ndarray]:
    manifest = load_dataset_manifest(source)
    return {spec.name: np.isin(segmentation, spec.values).astype(np.uint8) for spec in manifest.labels}


def write_lits(root: Path, cases: dict = LITS_CASES, shape=SHAPE, spacing=SPACING) -> Dataset:
    for number, (folder, axcodes, gz) in cases.items():
        write_lits_case(root / folder, number, shape=shape, spacing=spacing, axcodes=axcodes, gz=gz)
    ids = tuple(f"volume-{n}" for n in sorted(cases))
    return Dataset(source="lits", root=root, case_ids=ids, organ="liver",
                   numbers={f"volume-{n}": n for n in cases}, shape=shape, spacing=spacing)


def write_kits(root: Path, numbers=KITS_CASES, shape=SHAPE, spacing=SPACING) -> Dataset:
    for number in numbers:
        write_kits19_case(root, number, shape=shape, spacing=spacing)
    ids = tuple(f"case_{n:05d}" for n in sorted(numbers))
    return Dataset(source="kits19", root=root, case_ids=ids, organ="kidney",
                   numbers={f"case_{n:05d}": n for n in numbers}, shape=shape, spacing=spacing)


@pytest.fixture
def lits_dataset(tmp_path) -> Dataset:
    """Three LiTS volumes over two batch folders, in RAS, LPS (.nii.gz) and ARI-like orientations."""
    return write_lits(tmp_path / "lits")


@pytest.fixture
def kits_dataset(tmp_path) -> Dataset:
    """Three KiTS19 cases in KiTS19's own slice-axis-first ("IPL") layout."""
    return write_kits(tmp_path / "kits19")


@pytest.fixture(scope="module")
def lits_dataset_module(tmp_path_factory) -> Dataset:
    return write_lits(tmp_path_factory.mktemp("lits_module") / "lits")


@pytest.fixture(scope="module")
def kits_dataset_module(tmp_path_factory) -> Dataset:
    return write_kits(tmp_path_factory.mktemp("kits_module") / "kits19")


def shared_data_path(*parts: str) -> Path:
    """A path below ../shared/data (beside the repository), skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent "
                    "(../shared/data exists only on the project's machines)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared_data_path()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_file_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes), to compare a store part byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def liver_with_made_up_tumour(classes: np.ndarray) -> np.ndarray:
    """The TotalSegmentator example's liver (class 5) as label 1 with a made-up "tumour" as label 2: the
    liver voxels in the lower half of the file's slices, right part of the liver (uint8, the file's axes)."""
    liver = classes == 5
    segmentation = liver.astype(np.uint8)
    i, _, k = np.nonzero(liver)
    tumour = liver.copy()
    tumour[: int(np.median(i))] = False
    tumour[:, :, int(np.median(k)):] = False
    segmentation[tumour] = 2
    return segmentation


@pytest.fixture(scope="session")
def ct() -> types.SimpleNamespace:
    """This module's constants and helpers, for the test modules (which cannot import a conftest)."""
    return types.SimpleNamespace(
        SHAPE=SHAPE, SPACING=SPACING, ORIGIN=ORIGIN, LITS_CASES=LITS_CASES, KITS_CASES=KITS_CASES,
        Dataset=Dataset, write_lits=write_lits, write_kits=write_kits, expected_labels=expected_labels,
        shared_data_path=shared_data_path, sha256_of=sha256_of, store_file_bytes=store_file_bytes,
        liver_with_made_up_tumour=liver_with_made_up_tumour,
    )
