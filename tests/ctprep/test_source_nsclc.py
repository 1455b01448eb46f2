"""NSCLC-Radiomics source: phantom downloads in the TCIA layout (CT series + an RTSTRUCT written
with rt-utils from known masks), the real Visible Human and rt-utils phantom files, and
end-to-end conversions with every kind of bad case beside good ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from ctprep.case import CaseVolume
from ctprep.commands.check import check_download
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.datasets import SplitConfig, assign_split
from ctprep.phantoms.dicom import write_ct_series
from ctprep.formats.rtstruct import roi_hash
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.phantoms.nsclc import NsclcPhantom, write_nsclc_case, write_rtstruct
from ctprep.sources import SOURCES, get_source
from ctprep.sources.nsclc import NsclcSource, parse_roi_option
from ctprep.store import SliceStore
from test_sources import SourceContract


@dataclass(frozen=True)
class PhantomDownload:
    """A written phantom download and what each case was written from (canonical arrays)."""

    root: Path
    cases: dict[str, NsclcPhantom]
    shape: tuple[int, int, int]

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.cases))

    def tumour(self, case_id: str) -> np.ndarray:
        rois = self.cases[case_id].rois
        return np.logical_or.reduce([m for k, m in rois.items() if k.startswith("GTV")]).astype(np.uint8)

    def phantom(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(HU, segmentation) as the contract expects: 2 = tumour (the only label with gtvs=merge)."""
        return self.cases[case_id].hu, self.tumour(case_id) * 2

    def labels(self, case_id: str) -> dict[str, np.ndarray]:
        return {"tumour": self.tumour(case_id)}


def write_download(ct, root: Path, **cases) -> PhantomDownload:
    """Phantom patients ``number -> write_nsclc_case keyword arguments`` on the contract's grid."""
    written = {}
    for number, kwargs in cases.items():
        number = int(number.removeprefix("n"))
        case = write_nsclc_case(root, number, shape=ct.SHAPE, spacing=ct.SPACING, origin=ct.ORIGIN, **kwargs)
        written[case.patient] = case
    return PhantomDownload(root=root, cases=written, shape=ct.SHAPE)


def dice(a, b) -> float:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def listing_digest(root: Path, files) -> str:
    """sha256 of the ``sha256sum`` listing of ``files``, named relative to the series' own folder
    and sorted (docs/sources.md); ``root`` is unused: the digest does not depend on where the series lies."""
    folder = Path(os.path.commonpath([str(f.parent) for f in files]))
    lines = sorted((f.relative_to(folder).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files)
    return hashlib.sha256("".join(f"{h}  {rel}\n" for rel, h in lines).encode()).hexdigest()


# ---- the contract every source meets --------------------------------------------------------------
class TestNsclcContract(SourceContract):
    """The shared contract with ``--gtvs merge`` (the manifest's single label, tumour); the
    NIfTI-specific checks are replaced by their DICOM counterparts."""

    source_name = "nsclc"
    organ_label = "tumour"

    def write(self, ct, root: Path):
        return write_download(ct, root, n1={"tumours": 2, "lungs": False}, n2={"lungs": False})

    @pytest.fixture(scope="class")
    def template(self, ct, tmp_path_factory):
        return self.write(ct, tmp_path_factory.mktemp("nsclc_contract") / "download")

    @pytest.fixture
    def dataset(self, template, tmp_path):
        """A fresh copy of the class's download per test (tests may delete files)."""
        root = tmp_path / "download"
        shutil.copytree(template.root, root)
        cases = {k: NsclcPhantom(patient=c.patient, hu=c.hu, rois=c.rois,
                                 ct_files=tuple(root / f.relative_to(template.root) for f in c.ct_files),
                                 rtstruct=root / c.rtstruct.relative_to(template.root))
                 for k, c in template.cases.items()}
        return PhantomDownload(root=root, cases=cases, shape=template.shape)

    @pytest.fixture
    def source(self):
        return get_source("nsclc", {"gtvs": "merge"})

    def check_organ_side(self, volume: CaseVolume) -> None:
        # GTV-1, the larger, lies in the right lung: small canonical x (x runs to the patient's left)
        _, _, xx = np.nonzero(volume.labels["tumour"])
        assert np.median(xx) < 0.4 * volume.hu.shape[2]
        assert np.median(volume.hu[np.asarray(volume.labels["tumour"]) == 1]) > -100  # solid, not lung

    def test_discover_finds_exactly_the_written_cases(self, dataset, source):
        refs = source.discover(dataset.root)
        assert [r.case_id for r in refs] == list(dataset.case_ids) == ["LUNG1-001", "LUNG1-002"]
        for ref in refs:
            case = dataset.cases[ref.case_id]
            assert ref.patient_id == ref.case_id and Path(ref.root) == dataset.root
            assert sorted(ref.paths("ct")) == sorted(case.ct_files)
            assert ref.paths("rtstruct") == [case.rtstruct]
            assert all(not Path(rel).is_absolute() for _, rel in ref.files)

    def test_inputs_are_recorded(self, ct, dataset, source):
        ref = source.discover(dataset.root)[0]
        volume = source.load(ref)
        roles = {f.role: f for f in volume.inputs}
        assert set(roles) == {"ct", "rtstruct"}
        files = dataset.cases[ref.case_id].ct_files
        assert roles["ct"].path == files[0].parent.relative_to(dataset.root).as_posix()
        assert roles["ct"].size == sum(f.stat().st_size for f in files)
        assert roles["ct"].sha256 == listing_digest(dataset.root, files)
        rtstruct = dataset.cases[ref.case_id].rtstruct
        assert roles["rtstruct"].path == rtstruct.relative_to(dataset.root).as_posix()
        assert roles["rtstruct"].sha256 == ct.sha256_of(rtstruct)

    def test_source_grid_maps_back_to_the_file(self, dataset, source):
        for ref in source.discover(dataset.root):
            volume = source.load(ref)
            slices = sorted((pydicom.dcmread(f) for f in ref.paths("ct")),
                            key=lambda ds: float(ds.ImagePositionPatient[2]))
            native = np.stack([ds.pixel_array.astype(np.int16) - 1024 for ds in slices])  # (slice, row, col)
            back = volume.source_grid.to_source(volume.hu)
            np.testing.assert_array_equal(back, native.transpose(2, 1, 0))  # DICOM source axes: col, row, slice

    def test_load_missing_label_file(self, dataset, source):
        ref = source.discover(dataset.root)[0]
        ref.paths("rtstruct")[0].unlink()
        with pytest.raises(MissingInputError) as info:
            source.load(ref)
        assert str(ref.paths("rtstruct")[0]) in str(info.value) and "not found" in str(info.value)
        # discovered again, the patient is still a case, whose load says what is missing
        (again,) = [r for r in source.discover(dataset.root) if r.case_id == ref.case_id]
        with pytest.raises(MissingInputError, match="no RTSTRUCT refers to this CT series"):
            source.load(again)

    def test_load_rejects_unknown_label_values(self, dataset, source):
        # the DICOM counterpart: an ROI asked for that the RTSTRUCT does not hold
        ref = source.discover(dataset.root)[-1]
        with pytest.raises(CaseInputError) as info:
            get_source("nsclc", {"rois": ["Heart=heart"]}).load(ref)
        message = str(info.value)
        assert ref.paths("rtstruct")[0].name in message and "no ROI named 'Heart'" in message
        assert message.endswith("available ROIs: ['GTV-1']")  # the ROIs there are listed


# ---- options and the label plan ------------------------------------------------------------------
def test_registered_and_options_validated():
    assert SOURCES["nsclc"] is NsclcSource
    source = get_source("nsclc")
    assert (source.gtvs, source.rois, source.default_roi) == ("both", [], "GTV-1")
    assert source.default_aliases == ("GTV", "GTV-pre-op")
    assert parse_roi_option("Lung-Left=lungs") == ("Lung-Left", "lungs")
    assert parse_roi_option(" GTV-2 ") == ("GTV-2", None)
    for bad, reason in (("=lungs", "expected ROI"), ("Lung=", "expected ROI"), ("Lung=a/b", "must be letters"),
                        ("Lung=gtv_3", "reserved"), ("Lung=roi_x", "reserved")):
        with pytest.raises(ValueError, match=reason):
            get_source("nsclc", {"rois": [bad]})
    with pytest.raises(ValueError, match="gtvs must be one of"):
        get_source("nsclc", {"gtvs": "all"})
    with pytest.raises(ValueError, match="does not take the option"):
        get_source("nsclc", {"context": 2})


@pytest.mark.parametrize("options, available, expected", [
    ({}, ["Lung-Left", "GTV-2", "GTV-1", "Heart"],
     {"tumour": ["GTV-1", "GTV-2"], "gtv_1": ["GTV-1"], "gtv_2": ["GTV-2"]}),
    ({"gtvs": "merge"}, ["gtv_1", "gtv 2"], {"tumour": ["gtv_1", "gtv 2"]}),
    ({"gtvs": "separate"}, ["GTV-1", "GTV-03"], {"gtv_1": ["GTV-1"], "gtv_3": ["GTV-03"]}),
    ({}, ["GTV", "Lung"], {"tumour": ["GTV"], "gtv_1": ["GTV"]}),  # an alias is GTV number 1
    ({}, ["gtv-pre-op"], {"tumour": ["gtv-pre-op"], "gtv_1": ["gtv-pre-op"]}),
    ({"rois": ["lung-left=lungs", "Lung_Right=lungs", "heart=heart"]}, ["GTV-1", "Lung-Left", "Lung-Right", "Heart"],
     {"tumour": ["GTV-1"], "gtv_1": ["GTV-1"], "lungs": ["Lung-Left", "Lung-Right"], "heart": ["Heart"]}),
    ({"rois": ["Mass", "GTV-2"], "gtvs": "both"}, ["GTV-1", "GTV-2", "mass"],
     {"tumour": ["mass", "GTV-2"], "roi_mass": ["mass"], "gtv_2": ["GTV-2"]}),
    ({"rois": ["GTV-2=tumour"], "gtvs": "merge"}, ["GTV-1", "GTV-2"], {"tumour": ["GTV-2"]}),
])
def test_label_plan(options, available, expected):
    assert get_source("nsclc", options).label_plan(available, Path("rs.dcm")) == expected


def test_label_plan_errors_name_the_file_and_the_rois():
    source = get_source("nsclc")
    with pytest.raises(CaseInputError) as info:
        source.label_plan(["Tumor", "Lung-Left"], Path("x/rs.dcm"))
    assert str(info.value) == ("x/rs.dcm: no ROI named 'GTV-1' (or 'GTV', 'GTV-pre-op'); "
                               f"available ROIs: ['{roi_hash('Tumor')}', '{roi_hash('Lung-Left')}']")
    with pytest.raises(CaseInputError, match="ambiguous"):
        get_source("nsclc", {"rois": ["lung=lungs"]}).label_plan(["GTV-1", "Lung ", "LUNG_"], Path("rs.dcm"))


# ---- loading: label modes on a phantom with two GTVs and lungs ------------------------------------
@pytest.fixture(scope="module")
def two_gtvs(ct, tmp_path_factory) -> PhantomDownload:
    return write_download(ct, tmp_path_factory.mktemp("nsclc_two") / "NSCLC-Radiomics", n1={"tumours": 2})


@pytest.mark.parametrize("gtvs, names", [("merge", {"tumour"}), ("separate", {"gtv_1", "gtv_2"}),
                                         ("both", {"tumour", "gtv_1", "gtv_2"})])
def test_gtv_modes_equal_the_written_masks(two_gtvs, gtvs, names):
    source = get_source("nsclc", {"gtvs": gtvs, "rois": ["Lung-Left=lungs", "LUNG-RIGHT=lungs"]})
    (ref,) = source.discover(two_gtvs.root)
    volume = source.load(ref)
    rois = two_gtvs.cases["LUNG1-001"].rois
    assert set(volume.labels) == names | {"lungs"} == {s.name for s in volume.label_specs}
    expected = {"tumour": rois["GTV-1"] | rois["GTV-2"], "gtv_1": rois["GTV-1"], "gtv_2": rois["GTV-2"],
                "lungs": rois["Lung-Left"] | rois["Lung-Right"]}
    for name in volume.labels:
        np.testing.assert_array_equal(np.asarray(volume.labels[name]), expected[name].astype(np.uint8), err_msg=name)
    assert 50 < np.count_nonzero(rois["GTV-2"]) < np.count_nonzero(rois["GTV-1"])
    np.testing.assert_array_equal(volume.hu, two_gtvs.cases["LUNG1-001"].hu)
    assert volume.annotations["rtstruct"]["labels"]["lungs"] == ["Lung-Left", "Lung-Right"]
    assert volume.annotations["rtstruct"]["rois"] == ["Lung-Right", "Lung-Left", "GTV-1", "GTV-2"]  # all mapped
    assert volume.annotations["ct"]["files"] == volume.annotations["ct"]["slices"] == 24


# ---- end to end: good and bad cases in one download -----------------------------------------------
@pytest.fixture(scope="module")
def mixed_download(ct, tmp_path_factory) -> PhantomDownload:
    root = tmp_path_factory.mktemp("nsclc_mixed") / "NSCLC-Radiomics"
    download = write_download(
        ct, root,
        n1={"tumours": 2},
        n2={},
        n3={"rtstruct": False},                                   # a series without RTSTRUCT
        n4={"rename": {"GTV-1": "GTV-1 old"}, "empty": ["GTV-1"]},  # GTV-1 without contours
        n6={},                                                    # a truncated slice beside the series
        n128={"rename": {"GTV-1": "Tumor"}},                      # no GTV at all (the manifest's quirk case)
    )
    # LUNG1-001's CT folder also holds a 2-slice scout of another series (mixed series in one folder)
    scout = np.full((2, 64, 64), -1000, np.int16)
    write_ct_series(download.cases["LUNG1-001"].ct_files[0].parent, scout, (5.0, 1.0, 1.0), seed=9)
    truncated = download.cases["LUNG1-006"].ct_files[0].parent / "zz-truncated.dcm"
    truncated.write_bytes(download.cases["LUNG1-006"].ct_files[3].read_bytes()[:300])
    (root / "LUNG1-002" / "README.txt").write_text("not DICOM, not a problem")
    return download


@pytest.fixture(scope="module")
def mixed_converted(mixed_download, tmp_path_factory):
    out = tmp_path_factory.mktemp("nsclc_store") / "nsclc.zarr"
    config = ConvertConfig(source="nsclc", input_dir=str(mixed_download.root), output=str(out), keep_hu=True)
    return config, convert_dataset(config, progress=False)


def test_convert_skips_bad_cases_with_reasons_and_converts_the_others(mixed_download, mixed_converted):
    config, report = mixed_converted
    status = {o.case_id: o.status for o in report.outcomes}
    assert status == {"LUNG1-001": "converted", "LUNG1-002": "converted", "LUNG1-003": "skipped",
                      "LUNG1-004": "skipped", "LUNG1-006": "skipped", "LUNG1-128": "skipped"}
    reasons = {o.case_id: o.reason for o in report.with_status("skipped")}
    cases = mixed_download.cases
    assert reasons["LUNG1-003"] == (f"{cases['LUNG1-003'].ct_files[0].parent}: no RTSTRUCT refers to this CT "
                                    "series (24 files), so the case has no segmentation")
    assert reasons["LUNG1-004"] == f"{cases['LUNG1-004'].rtstruct}: ROI 'GTV-1' has no contours"
    assert reasons["LUNG1-006"].startswith(f"{cases['LUNG1-006'].ct_files[0].parent / 'zz-truncated.dcm'}: "
                                           "unreadable DICOM file beside the case's series (")
    assert reasons["LUNG1-128"] == (f"{cases['LUNG1-128'].rtstruct}: no ROI named 'GTV-1' (or 'GTV', 'GTV-pre-op'); "
                                    f"available ROIs: {[roi_hash(n) for n in ('Lung-Right', 'Lung-Left', 'Tumor')]}")
    manifest = SliceStore.open(config.output).manifest()
    assert manifest["summary"]["skipped"] == ["LUNG1-003", "LUNG1-004", "LUNG1-006", "LUNG1-128"]
    assert manifest_path(config.output).is_file()


def test_converted_cases_hold_the_written_labels_geometry_and_split(ct, mixed_download, mixed_converted):
    config, _ = mixed_converted
    store = SliceStore.open(config.output)
    assert store.case_ids() == ["LUNG1-001", "LUNG1-002"]
    for case_id in store.case_ids():
        written = mixed_download.cases[case_id]
        data = store.read_case(case_id, hu=True)
        record = data.record
        gtvs = sorted(k for k in written.rois if k.startswith("GTV"))
        assert set(data.labels) == {"tumour"} | {f"gtv_{k[-1]}" for k in gtvs}
        np.testing.assert_array_equal(data.labels["tumour"], mixed_download.tumour(case_id))
        for roi in gtvs:
            np.testing.assert_array_equal(data.labels[f"gtv_{roi[-1]}"], written.rois[roi])
        np.testing.assert_array_equal(data.hu, written.hu)  # the scout in LUNG1-001's folder is not mixed in
        assert record.geometry.shape == ct.SHAPE
        np.testing.assert_allclose(record.geometry.spacing, ct.SPACING)
        np.testing.assert_allclose(record.geometry.origin, ct.ORIGIN, atol=1e-4)
        assert record.lesion_label == "tumour"
        assert list(record.lesion_pixels) == mixed_download.tumour(case_id).sum(axis=(1, 2)).tolist()
        assert record.split == assign_split(case_id, SplitConfig())
        assert record.annotations["rtstruct"]["labels"]["tumour"] == gtvs
        assert record.annotations["ct"]["technical"]["ConvolutionKernel"] == "B30f"
        (ct_input,) = [f for f in store.manifest()["cases"][case_id]["inputs"] if f["role"] == "ct"]
        assert ct_input["sha256"] == listing_digest(mixed_download.root, written.ct_files)
    manifest = SliceStore.open(config.output).manifest()
    assert manifest["split"]["patients"]["LUNG1-001"] == store.record("LUNG1-001").split
    assert [f["role"] for f in manifest["cases"]["LUNG1-001"]["inputs"]] == ["ct", "rtstruct"]


def test_resume_keeps_converted_cases_and_picks_up_a_fixed_one(mixed_download, mixed_converted, tmp_path):
    config, _ = mixed_converted
    out = tmp_path / "resumed.zarr"
    shutil.copytree(config.output, out)
    config = ConvertConfig(**{**config.__dict__, "output": str(out)})
    again = convert_dataset(config, progress=False)
    assert {o.case_id: o.status for o in again.outcomes if o.status != "skipped"} == {
        "LUNG1-001": "existing", "LUNG1-002": "existing"}
    fixed = mixed_download.cases["LUNG1-003"]
    rs = write_rtstruct(fixed.ct_files, {"GTV-1": fixed.rois["GTV-1"]},
                        tmp_path / "unused.dcm")  # written outside, then moved into the patient's folder
    target = fixed.ct_files[0].parent.parent / "rtstruct-fixed" / "1.dcm"
    target.parent.mkdir()
    shutil.move(rs, target)
    try:
        third = convert_dataset(config, progress=False)
    finally:
        shutil.rmtree(target.parent)
    assert {o.case_id: o.status for o in third.outcomes}["LUNG1-003"] == "converted"
    store = SliceStore.open(out)
    assert store.case_ids() == ["LUNG1-001", "LUNG1-002", "LUNG1-003"]
    np.testing.assert_array_equal(store.read_case("LUNG1-003").labels["gtv_1"], fixed.rois["GTV-1"])
    assert store.manifest()["summary"]["skipped"] == ["LUNG1-004", "LUNG1-006", "LUNG1-128"]


def test_check_reports_cases_that_cannot_convert(mixed_download):
    report = check_download("nsclc", mixed_download.root)
    assert report.found == ("LUNG1-001", "LUNG1-002", "LUNG1-003", "LUNG1-004", "LUNG1-006", "LUNG1-128")
    assert len(report.missing) == 422 - 6 and report.unexpected == ()
    problems = dict(report.unreadable)
    assert set(problems) == {"LUNG1-003", "LUNG1-006"}  # headers alone cannot see empty or missing ROIs
    assert problems["LUNG1-003"].endswith("no RTSTRUCT refers to this CT series")
    assert "zz-truncated.dcm: unreadable DICOM file" in problems["LUNG1-006"]
    from ctprep.cli import main

    result = CliRunner().invoke(main, ["check", "--source", "nsclc", "--input", str(mixed_download.root)])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "nsclc: 6 cases found, 416 missing, 0 unexpected, 2 unreadable"


# ---- real files -----------------------------------------------------------------------------------
def test_rtstruct_referring_to_absent_slices_is_skipped(ct, tmp_path):
    """rt-utils' invalid_reference_rt.dcm (contours on 3 slices, 2 in the series) beside a good case."""
    phantom = ct.shared_data_path("rtstruct_rtutils_phantom")
    series = tmp_path / "in" / "LUNG1-007" / "study" / "series"
    series.mkdir(parents=True)
    for name in ("ct_1.dcm", "ct_2.dcm"):
        shutil.copyfile(phantom / name, series / name)
    bad = tmp_path / "in" / "LUNG1-007" / "study" / "rtstruct" / "invalid_reference_rt.dcm"
    bad.parent.mkdir()
    shutil.copyfile(phantom / "invalid_reference_rt.dcm", bad)
    good = write_nsclc_case(tmp_path / "in", 9, shape=ct.SHAPE, rename={"GTV-1": "ROI-1"}, lungs=False)
    config = ConvertConfig(source="nsclc", input_dir=str(tmp_path / "in"), output=str(tmp_path / "s.zarr"),
                           source_options={"rois": ["roi-1"], "gtvs": "merge"})
    report = convert_dataset(config, progress=False)
    outcome = {o.case_id: o for o in report.outcomes}
    assert outcome["LUNG1-009"].status == "converted"
    assert outcome["LUNG1-007"].reason == (f"{bad}: ROI 'ROI-1': 1 of the 3 CT slices its contours refer to are not "
                                           "in the series (2 slices), e.g. SOPInstanceUID "
                                           "2.16.840.1.114362.1.11940992.23790159890.563423471.995.90")
    stored = SliceStore.open(tmp_path / "s.zarr").read_case("LUNG1-009").labels["tumour"]
    # Slices where the written mask has 1-2 pixels get a 1- or 2-point contour from rt-utils,
    # which encloses no area and is dropped (ctprep.formats.rtstruct); every other slice is exact.
    written = good.rois["ROI-1"]
    tiny = written.sum(axis=(1, 2)) < 3
    np.testing.assert_array_equal(stored[~tiny], written[~tiny])
    assert stored[tiny].sum() == 0 and written[tiny].sum() <= 2


def test_visible_human_through_the_source(ct, tmp_path):
    """The real Visible Human RTSTRUCT (files not in z order) against the reference tool's
    Mask.nii.gz (1 = SpinalCord, 2 = BODY) and Image.nii.gz, converted by ``convert_dataset``."""
    import nibabel as nib

    from ctprep.geometry import canonicalize

    folder = ct.shared_data_path("rtstruct_visible_human")
    out = tmp_path / "vh.zarr"
    config = ConvertConfig(source="nsclc", input_dir=str(folder), output=str(out), keep_hu=True,
                           source_options={"rois": ["body", "SpinalCord=spinal_cord"], "gtvs": "merge"})
    report = convert_dataset(config, progress=False)
    # neither the folder (the input itself) nor the PatientID has the LUNG1-NNN format: a hashed id
    [(case_id, status)] = [(o.case_id, o.status) for o in report.outcomes]
    assert re.fullmatch(r"unnamed-[0-9a-f]{12}", case_id) and status == "converted", case_id
    data = SliceStore.open(out).read_case(case_id, hu=True)
    image, mask = (nib.load(folder / name) for name in ("Image.nii.gz", "Mask.nii.gz"))
    reference_hu, geometry, _ = canonicalize(np.asarray(image.dataobj), image.affine)
    reference, _, _ = canonicalize(np.asarray(mask.dataobj), mask.affine)
    assert data.hu.shape == reference.shape == (4, 512, 512)
    np.testing.assert_array_equal(data.hu, reference_hu)
    np.testing.assert_allclose(data.record.geometry.origin, geometry.origin, atol=1e-4)
    body, cord = dice(data.labels["tumour"], reference >= 1), dice(data.labels["spinal_cord"], reference == 1)
    print(f"Visible Human through the nsclc source: BODY Dice {body:.4f}, SpinalCord Dice {cord:.4f}")
    assert body >= 0.99 and cord >= 0.93, (body, cord)
    assert data.record.annotations["rtstruct"]["labels"] == {"tumour": ["BODY"], "spinal_cord": ["SpinalCord"]}
