"""``--source nifti``: Decathlon, nnU-Net v2 and pattern layouts built from the real files of ../shared/data.

Each layout holds the same real CT (TotalSegmentator's abdomen, a liver/"tumour" map made from its
labels; pyradiomics' lung CT with its real nodule) that is also written in the LiTS layout; the
stores must agree voxel for voxel. Also: no flags needed, one-line errors, hashed ids for names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.cli import main
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.sources.nifti_generic import parse_label_map, safe_case_ids
from ctprep.store import SliceStore
from ctprep.windowing import parse_window
from lkbase.errors import ParameterError

WINDOWS = (parse_window("liver"), parse_window("abdomen"))  # LiTS's defaults, given to every store compared
LIVER_JSON = {"name": "Liver", "description": "real abdomen CT (test)", "reference": "test", "licence": "Apache-2.0",
              "tensorImageSize": "3D", "modality": {"0": "CT"},
              "labels": {"0": "background", "1": "liver", "2": "cancer"}, "numTraining": 1, "numTest": 0,
              "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}], "test": []}


@pytest.fixture(scope="module")
def real_files(tmp_path_factory, ct) -> dict[str, Path]:
    """The real CTs as NIfTI: totalseg (liver 1, made-up tumour 2) and the pyradiomics lung (nodule 1)."""
    import SimpleITK as sitk

    out = tmp_path_factory.mktemp("real_nifti")
    folder = ct.shared_data_path("totalseg_example")
    seg_image = nib.load(folder / "example_seg.nii.gz")
    segmentation = ct.liver_with_made_up_tumour(np.asarray(seg_image.dataobj))
    label = nib.Nifti1Image(segmentation, seg_image.affine)
    label.set_data_dtype(np.uint8)
    nib.save(label, out / "abdomen_seg.nii.gz")
    shutil.copyfile(folder / "example_ct_sm.nii.gz", out / "abdomen_ct.nii.gz")
    lung = ct.shared_data_path("pyradiomics_lung")
    sitk.WriteImage(sitk.ReadImage(str(lung / "lung1_image.nrrd")), str(out / "lung_ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(lung / "lung1_label.nrrd")), sitk.sitkUInt8), str(out / "lung_seg.nii.gz"))
    return {"abdomen_ct": out / "abdomen_ct.nii.gz", "abdomen_seg": out / "abdomen_seg.nii.gz",
            "lung_ct": out / "lung_ct.nii.gz", "lung_seg": out / "lung_seg.nii.gz"}


def _convert(root: Path, source: str = "nifti", **options) -> SliceStore:
    output = root.parent / f"{root.name}.zarr"
    report = convert_dataset(ConvertConfig(source=source, input_dir=str(root), output=str(output), keep_hu=True,
                                           windows=WINDOWS, source_options=options), progress=False)
    assert all(o.status in ("converted", "existing") for o in report.outcomes), report.lines()
    return SliceStore.open(output)


@pytest.fixture(scope="module")
def lits_store(tmp_path_factory, real_files) -> SliceStore:
    """The same files in the LiTS layout; the lung nodule (value 1) becomes LiTS tumour (value 2)."""
    root = tmp_path_factory.mktemp("lits") / "LiTS"
    root.mkdir()
    shutil.copyfile(real_files["abdomen_ct"], root / "volume-0.nii.gz")
    shutil.copyfile(real_files["abdomen_seg"], root / "segmentation-0.nii.gz")
    shutil.copyfile(real_files["lung_ct"], root / "volume-1.nii.gz")
    nodule = nib.load(real_files["lung_seg"])
    nib.save(nib.Nifti1Image((np.asarray(nodule.dataobj) * 2).astype(np.uint8), nodule.affine),
             root / "segmentation-1.nii.gz")
    return _convert(root, source="lits")


def _msd(root: Path, info: dict, cases: dict[str, tuple[Path, Path]]) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for stem, (image, label) in cases.items():
        shutil.copyfile(image, root / "imagesTr" / f"{stem}.nii.gz")
        shutil.copyfile(label, root / "labelsTr" / f"{stem}.nii.gz")
        (root / "imagesTr" / f"._{stem}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def _same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, f"{what}: {a.shape} != {b.shape}"
    assert np.array_equal(a, b), f"{what}: {np.count_nonzero(a != b)} voxels differ"


def _agree(store: SliceStore, case: str, lits: SliceStore, lits_case: str, labels: dict[str, tuple[str, ...]]) -> None:
    """HU, image and each label (LiTS name -> the union of these store labels) voxel for voxel."""
    mine, theirs = store.read_case(case, hu=True), lits.read_case(lits_case, hu=True)
    _same(mine.hu, theirs.hu, "HU")
    _same(mine.image, theirs.image, "image")
    assert mine.record.geometry == theirs.record.geometry
    for lits_name, names in labels.items():
        union = np.any([mine.labels[n] for n in names], axis=0).astype(np.uint8)
        _same(union, theirs.labels[lits_name], f"{'|'.join(names)} vs LiTS {lits_name}")
        assert theirs.labels[lits_name].any()


def test_decathlon_liver_without_flags_equals_lits(tmp_path, real_files, lits_store):
    root = _msd(tmp_path / "Task03_Liver", LIVER_JSON, {"liver_0": (real_files["abdomen_ct"], real_files["abdomen_seg"])})
    store = _convert(root)
    assert store.case_ids() == ["liver_0"]
    assert store.record("liver_0").lesion_label == "cancer"
    _agree(store, "liver_0", lits_store, "volume-0", {"liver": ("liver", "cancer"), "tumour": ("cancer",)})
    manifest = json.loads(root.parent.joinpath("Task03_Liver.manifest.json").read_text())
    assert manifest["dataset"]["title"] == "Liver" and manifest["dataset"]["licence"] == "Apache-2.0"
    assert manifest["cases"]["liver_0"]["inputs"][0]["sha256"]


def test_decathlon_lung_and_label_map_equal_lits(tmp_path, real_files, lits_store):
    info = {**LIVER_JSON, "name": "Lung", "labels": {"0": "background", "1": "cancer"},
            "training": [{"image": "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}]}
    root = _msd(tmp_path / "Task06_Lung", info, {"lung_001": (real_files["lung_ct"], real_files["lung_seg"])})
    store = _convert(root)
    _agree(store, "lung_001", lits_store, "volume-1", {"tumour": ("cancer",)})
    # the same folder with LiTS's own label names: every array equal
    store = _convert(_msd(tmp_path / "Task03_Liver", LIVER_JSON,
                          {"liver_0": (real_files["abdomen_ct"], real_files["abdomen_seg"])}),
                     label_map="liver=1+2,tumour=2")
    _agree(store, "liver_0", lits_store, "volume-0", {"liver": ("liver",), "tumour": ("tumour",)})


def test_nnunet_v2_without_flags_equals_lits(tmp_path, real_files, lits_store):
    root = tmp_path / "Dataset003_Liver"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for stem, (image, label) in {"liver_000": ("abdomen_ct", "abdomen_seg"), "liver_001": ("lung_ct", "lung_seg")}.items():
        shutil.copyfile(real_files[image], root / "imagesTr" / f"{stem}_0000.nii.gz")
        shutil.copyfile(real_files[label], root / "labelsTr" / f"{stem}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    store = _convert(root)
    assert store.case_ids() == ["liver_000", "liver_001"]
    assert store.record("liver_000").lesion_label == "tumor"
    _agree(store, "liver_000", lits_store, "volume-0", {"liver": ("liver", "tumor"), "tumour": ("tumor",)})
    _agree(store, "liver_001", lits_store, "volume-1", {"tumour": ("liver",)})  # the nodule is value 1 here


def test_patterns_hash_names_and_resume(tmp_path, real_files):
    root = tmp_path / "mine"
    (root / "ct").mkdir(parents=True)
    (root / "seg").mkdir()
    shutil.copyfile(real_files["abdomen_ct"], root / "ct" / "Doe_John.nii.gz")
    shutil.copyfile(real_files["abdomen_seg"], root / "seg" / "Doe_John_seg.nii.gz")
    shutil.copyfile(real_files["abdomen_ct"], root / "ct" / "Roe_Jane.nii.gz")
    (root / "seg" / "Roe_Jane_seg.nii.gz").write_bytes(real_files["abdomen_seg"].read_bytes()[:300])  # truncated
    args = ["convert", "--source", "nifti", "--input", str(root), "--output", str(tmp_path / "mine.zarr"),
            "--images", "ct/*.nii.gz", "--labels", "seg/{id}_seg.nii.gz", "--label-map", "liver=1+2,tumour=2",
            "--quiet"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "1 converted" in first.output and "1 skipped" in first.output, first.output
    assert "truncated" in first.output and "Roe" not in first.output, first.output
    store = SliceStore.open(tmp_path / "mine.zarr")
    (case,) = store.case_ids()
    assert case.startswith("case-h") and store.record(case).lesion_label == "tumour"
    for path in [tmp_path / "mine.manifest.json", *(tmp_path / "mine.zarr").rglob("*.json")]:
        assert "Doe" not in path.read_text() and "Roe" not in path.read_text(), path
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 converted, 1 already complete" in again.output, again.output


def test_bad_case_skipped_with_one_line(tmp_path, real_files):
    info = {**LIVER_JSON, "training": [{"image": f"./imagesTr/liver_{n}.nii.gz", "label": f"./labelsTr/liver_{n}.nii.gz"}
                                       for n in (0, 1)]}
    root = _msd(tmp_path / "Task03_Liver", info, {f"liver_{n}": (real_files["abdomen_ct"], real_files["abdomen_seg"])
                                                  for n in (0, 1)})
    bad = root / "labelsTr" / "liver_1.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    report = convert_dataset(ConvertConfig(source="nifti", input_dir=str(root), output=str(tmp_path / "o.zarr")),
                             progress=False)
    status = {o.case_id: (o.status, o.reason) for o in report.outcomes}
    assert status["liver_0"][0] == "converted"
    assert status["liver_1"][0] == "skipped" and "liver_1.nii.gz" in status["liver_1"][1]
    assert "\n" not in status["liver_1"][1]


@pytest.mark.parametrize("change, message", [
    ({"modality": {"0": "MRI"}}, "only single-channel CT"),
    ({"modality": {"0": "CT", "1": "PET"}}, "only single-channel CT"),
    ({"labels": {"0": "background"}}, "names no label"),
])
def test_unusable_dataset_json_one_line(tmp_path, real_files, change, message):
    root = _msd(tmp_path / "Task99", {**LIVER_JSON, **change},
                {"liver_0": (real_files["abdomen_ct"], real_files["abdomen_seg"])})
    result = CliRunner().invoke(main, ["convert", "--source", "nifti", "--input", str(root),
                                       "--output", str(tmp_path / "o.zarr"), "--quiet"])
    assert result.exit_code != 0 and message in result.output and len(result.output.strip().splitlines()) == 1, \
        result.output
    assert not (tmp_path / "o.zarr").exists()


def test_no_layout_asks_for_patterns(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["convert", "--source", "nifti", "--input", str(tmp_path / "empty"),
                                       "--output", str(tmp_path / "o.zarr")])
    assert result.exit_code != 0 and "--images" in result.output


def test_case_ids_kept_only_when_not_names():
    assert safe_case_ids(["liver_0", "liver_12"]) == {"liver_0": "liver_0", "liver_12": "liver_12"}
    assert safe_case_ids(["case_00001"]) == {"case_00001": "case_00001"}
    for stems in (["Smith_1"], ["Smith_1", "Jones_2"], ["anna", "bert"]):
        assert all(v.startswith("case-h") and len(v) == 18 for v in safe_case_ids(stems).values())


def test_label_maps_in_every_form():
    msd = parse_label_map({"0": "background", "1": "liver", "2": "cancer"})
    nnunet = parse_label_map({"background": 0, "liver": 1, "cancer": 2})
    short = parse_label_map("liver=1,cancer=2")
    assert msd == nnunet == short
    regions, values = parse_label_map('{"background": 0, "liver": [1, 2], "tumour": 2}')
    assert [(s.name, s.values) for s in regions] == [("liver", (1, 2)), ("tumour", (2,))] and values[2] == "liver"
    with pytest.raises(ParameterError, match="name=value"):
        parse_label_map("liver=one")
