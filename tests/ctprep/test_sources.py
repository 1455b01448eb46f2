"""The contract every source meets, tested once per source on phantom downloads.

One base class holds the contract; each source adds a subclass that says how
to write its phantom download and what its anatomy looks like.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctprep.case import CaseRef, CaseVolume
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.sources import SOURCES, get_source



class SourceContract:
    """Contract tests shared by every source; subclasses set ``source_name`` and ``write``."""

    source_name: str
    organ_label: str  # the non-lesion label of the dataset

    def write(self, ct, root: Path):
        raise NotImplementedError

    @pytest.fixture
    def dataset(self, ct, tmp_path):
        return self.write(ct, tmp_path / "download")

    @pytest.fixture
    def source(self):
        return get_source(self.source_name)

    # ---- discover --------------------------------------------------------------------------
    def test_registered(self, source):
        assert SOURCES[self.source_name] is type(source)
        assert source.manifest.name == self.source_name
        assert source.description

    def test_discover_finds_exactly_the_written_cases(self, dataset, source):
        refs = source.discover(dataset.root)
        assert [r.case_id for r in refs] == list(dataset.case_ids)
        assert all(isinstance(r, CaseRef) and r.source == self.source_name for r in refs)
        # public ids are in the dataset manifest's official id list
        assert set(dataset.case_ids) <= set(source.manifest.case_ids)
        for ref in refs:
            assert ref.path("image").is_file()
            assert ref.path("label").is_file()
            assert Path(ref.root) == dataset.root
            assert not Path(dict(ref.files)["image"]).is_absolute()

    def test_discover_ignores_unrelated_files(self, dataset, source):
        (dataset.root / "notes.txt").write_text("not a case")
        (dataset.root / "extra").mkdir()
        (dataset.root / "extra" / "readme.nii.txt").write_text("no")
        assert [r.case_id for r in source.discover(dataset.root)] == list(dataset.case_ids)

    def test_discover_empty_folder(self, tmp_path, source):
        (tmp_path / "empty").mkdir()
        assert source.discover(tmp_path / "empty") == []

    # ---- load ------------------------------------------------------------------------------
    def test_load_equals_the_canonical_phantom(self, dataset, source):
        for ref in source.discover(dataset.root):
            volume = source.load(ref)
            assert isinstance(volume, CaseVolume)
            hu, seg = dataset.phantom(ref.case_id)
            assert volume.hu.dtype == np.int16
            assert volume.hu.shape == dataset.shape
            np.testing.assert_array_equal(volume.hu, hu, err_msg=f"{ref.case_id}: HU differ from the phantom")
            expected = dataset.labels(ref.case_id)
            assert set(volume.labels) == set(expected) == {s.name for s in source.manifest.labels}
            for name, mask in expected.items():
                assert volume.labels[name].dtype == np.uint8
                np.testing.assert_array_equal(volume.labels[name], mask, err_msg=f"{ref.case_id} {name}")
            assert np.asarray(volume.labels[self.organ_label]).sum() == np.count_nonzero(seg >= 1)
            assert np.asarray(volume.labels["tumour"]).sum() == np.count_nonzero(seg == 2) > 0

    def test_grid_is_what_was_written(self, ct, dataset, source):
        for ref in source.discover(dataset.root):
            geometry = source.load(ref).geometry
            assert geometry.shape == dataset.shape
            np.testing.assert_allclose(geometry.spacing, ct.SPACING, rtol=1e-6)
            np.testing.assert_allclose(geometry.origin, ct.ORIGIN, atol=1e-4)
            np.testing.assert_allclose(geometry.direction_matrix, np.eye(3), atol=1e-6)
            z = geometry.z_positions()
            np.testing.assert_allclose(z, ct.ORIGIN[2] + ct.SPACING[0] * np.arange(dataset.shape[0]), atol=1e-4)

    def test_inputs_are_recorded(self, ct, dataset, source):
        ref = source.discover(dataset.root)[0]
        volume = source.load(ref)
        roles = {f.role: f for f in volume.inputs}
        assert set(roles) == {"image", "label"}
        for role, entry in roles.items():
            path = ref.path(role)
            assert entry.path == str(path.relative_to(dataset.root))
            assert entry.size == path.stat().st_size
            assert entry.sha256 == ct.sha256_of(path)

    def test_source_grid_maps_back_to_the_file(self, dataset, source):
        import nibabel as nib

        for ref in source.discover(dataset.root):
            volume = source.load(ref)
            on_disk = np.asarray(nib.load(ref.path("image")).dataobj)
            back = volume.source_grid.to_source(volume.hu)
            assert back.shape == on_disk.shape == volume.source_grid.shape
            np.testing.assert_array_equal(back, on_disk)

    def test_anatomy(self, dataset, source):
        ref = source.discover(dataset.root)[0]
        volume = source.load(ref)
        nz, ny, nx = volume.hu.shape
        # the spine (bone) is posterior: large canonical y, centred in x
        zz, yy, xx = np.nonzero(volume.hu > 400)
        assert yy.mean() > 0.6 * ny
        assert abs(xx.mean() - (nx - 1) / 2) < 0.1 * nx
        # the body is in front of the table: air at the anterior (y = 0) edge
        assert np.median(volume.hu[:, 0, :]) < -900
        self.check_organ_side(volume)

    def check_organ_side(self, volume: CaseVolume) -> None:
        raise NotImplementedError

    def test_load_missing_label_file(self, dataset, source):
        ref = source.discover(dataset.root)[0]
        ref.path("label").unlink()
        with pytest.raises(MissingInputError) as info:
            source.load(ref)
        assert str(ref.path("label")) in str(info.value)
        assert "not found" in str(info.value)

    def test_load_rejects_unknown_label_values(self, dataset, source):
        import nibabel as nib

        ref = source.discover(dataset.root)[-1]
        path = ref.path("label")
        image = nib.load(path)
        data = np.asarray(image.dataobj).copy()
        data[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
        with pytest.raises(CaseInputError) as info:
            source.load(ref)
        message = str(info.value)
        assert path.name in message and "7 (1 voxels)" in message and "label map" in message


class TestLitsSource(SourceContract):
    source_name = "lits"
    organ_label = "liver"

    def write(self, ct, root: Path):
        return ct.write_lits(root)

    def check_organ_side(self, volume: CaseVolume) -> None:
        # the liver lies on the patient's right: small canonical x (x runs to the patient's left)
        nx = volume.hu.shape[2]
        _, _, xx = np.nonzero(volume.labels["liver"])
        assert xx.mean() < 0.4 * nx
        _, yy, _ = np.nonzero(volume.labels["liver"])
        assert 0.3 * volume.hu.shape[1] < yy.mean() < 0.6 * volume.hu.shape[1]
        # the liver is brighter than fat in the HU
        assert np.median(volume.hu[np.asarray(volume.labels["liver"]) == 1]) > 30

    def test_ids_sort_numerically(self, tmp_path, source):
        from ctprep.phantoms.nifti import write_lits_case

        for number in (10, 2, 1):
            write_lits_case(tmp_path / "d", number, shape=(4, 16, 16))
        assert [r.case_id for r in source.discover(tmp_path / "d")] == ["volume-1", "volume-2", "volume-10"]

    def test_segmentation_without_volume_is_not_a_case(self, dataset, source):
        (dataset.root / "segmentation-99.nii").write_bytes(b"")
        assert [r.case_id for r in source.discover(dataset.root)] == list(dataset.case_ids)

    def test_volume_without_segmentation_is_kept_to_be_reported(self, dataset, source):
        next(dataset.root.rglob("segmentation-2.nii")).unlink()
        refs = source.discover(dataset.root)
        assert [r.case_id for r in refs] == list(dataset.case_ids)
        with pytest.raises(MissingInputError):
            source.load(refs[-1])

    def test_all_orientations_agree(self, dataset, source):
        # the same phantom written in RAS, LPS and ARI-like layouts loads identically
        from ctprep.phantoms.nifti import write_lits_case

        root = dataset.root / "same"
        arrays = []
        for number, axcodes in enumerate([("R", "A", "S"), ("L", "P", "S"), ("A", "R", "I"), ("I", "P", "L")]):
            write_lits_case(root, 50 + number, shape=(8, 20, 24), axcodes=axcodes, seed=3)
        for ref in source.discover(root):
            volume = source.load(ref)
            arrays.append((volume.hu, np.asarray(volume.labels["liver"]), volume.geometry))
        for hu, liver, geometry in arrays[1:]:
            np.testing.assert_array_equal(hu, arrays[0][0])
            np.testing.assert_array_equal(liver, arrays[0][1])
            assert geometry.shape == arrays[0][2].shape == (8, 20, 24)
            np.testing.assert_allclose(geometry.origin, arrays[0][2].origin, atol=1e-4)


class TestKits19Source(SourceContract):
    source_name = "kits19"
    organ_label = "kidney"

    def write(self, ct, root: Path):
        return ct.write_kits(root)

    def check_organ_side(self, volume: CaseVolume) -> None:
        # two kidneys beside the spine: posterior half, on both sides of the midline
        ny, nx = volume.hu.shape[1:]
        _, yy, xx = np.nonzero(volume.labels["kidney"])
        assert yy.mean() > 0.55 * ny
        left, right = np.count_nonzero(xx > nx / 2), np.count_nonzero(xx < nx / 2)
        assert left > 0 and right > 0 and 0.7 < left / right < 1.4
        # the phantom's tumour is in the right kidney (small x)
        _, _, tx = np.nonzero(volume.labels["tumour"])
        assert tx.mean() < nx / 2

    def test_files_are_slice_axis_first(self, dataset, source):
        import nibabel as nib

        ref = source.discover(dataset.root)[0]
        image = nib.load(ref.path("image"))
        assert nib.aff2axcodes(image.affine) == ("I", "P", "L")
        assert image.shape == (dataset.shape[0], dataset.shape[1], dataset.shape[2])
        assert source.load(ref).source_grid.axcodes == "IPL"

    def test_case_folder_without_segmentation(self, dataset, source):
        (dataset.root / "case_00001" / "segmentation.nii.gz").unlink()
        refs = source.discover(dataset.root)
        assert [r.case_id for r in refs] == list(dataset.case_ids)
        with pytest.raises(MissingInputError) as info:
            source.load(refs[1])
        assert "case_00001" in str(info.value) and "segmentation" in str(info.value)

    def test_uncompressed_files_are_found(self, dataset, source):
        import gzip

        folder = dataset.root / "case_00002"
        for stem in ("imaging", "segmentation"):
            gz = folder / f"{stem}.nii.gz"
            (folder / f"{stem}.nii").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
        ref = source.discover(dataset.root)[2]
        assert ref.path("image").name == "imaging.nii"
        np.testing.assert_array_equal(source.load(ref).hu, dataset.phantom("case_00002")[0])

    def test_non_case_folders_are_ignored(self, dataset, source):
        (dataset.root / "case_12").mkdir()
        (dataset.root / "kits.json").write_text("{}")
        assert [r.case_id for r in source.discover(dataset.root)] == list(dataset.case_ids)
