"""LIDC-IDRI source: the real XMLs (../shared/data/lidc_xml: 069.xml = LIDC-IDRI-0001, 071.xml =
LIDC-IDRI-0002) on synthetic 512x512 CT series whose slices carry the XMLs' own SOP UIDs and z
positions (with the real slice LIDC-IDRI-0001_000001.dcm in its place), phantom downloads in the
TCIA layout (ctprep.phantoms.lidc) for the contract and the download's quirks, end to end.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from ctprep.public_paths import public_path

from ctprep.case import CaseVolume
from ctprep.commands.check import check_download
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.datasets import SplitConfig, assign_split
from ctprep.phantoms.dicom import FEET_FIRST_SUPINE, HEAD_FIRST_PRONE, write_ct_series
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.geometry import Geometry
from ctprep.formats.lidc_xml import parse_lidc_xml
from ctprep.phantoms.lidc import LidcPhantom, write_lidc_case, write_lidc_xml
from ctprep.sources import SOURCES, get_source
from ctprep.sources.lidc import LidcSource, adapt_positions, xml_header
from ctprep.store import SliceStore
from test_sources import SourceContract

LABELS = ["nodule_reader_1", "nodule_reader_2", "nodule_reader_3", "nodule_reader_4", "nodule_any",
          "nodule_consensus_50", "nodule_consensus_75", "nodule_all"]
# Per-reader pixel counts of the real XMLs, pinned in test_lidc.py (fill minus outline minus holes).
REAL_COUNTS = {"LIDC-IDRI-0001": [5905, 4613, 4955, 5497], "LIDC-IDRI-0002": [0, 0, 10351, 12595]}
REAL_ORIGIN_XY = (-166.0, -171.699997)  # LIDC-IDRI-0001's ImagePositionPatient x, y; 0.703125 mm pixels


def row_at(z_positions, z_mm: float) -> int:
    """The stored row at ``z_mm`` (positions are computed, so compare with a tolerance)."""
    (row,) = np.flatnonzero(np.isclose(z_positions, z_mm, atol=1e-4))
    return int(row)


def expected_labels(readers: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The labels of one nodule outlined by every reader, computed the obvious way."""
    votes = np.sum([m.astype(np.uint8) for m in readers], axis=0)
    n = len(readers)
    out = {f"nodule_reader_{k + 1}": (readers[k] if k < n else np.zeros_like(readers[0])).astype(np.uint8)
           for k in range(4)}
    out.update(nodule_any=votes >= 1, nodule_consensus_50=votes >= max(1, -(-n // 2)),
               nodule_consensus_75=votes >= max(1, -(-3 * n // 4)), nodule_all=votes == n)
    return {k: v.astype(np.uint8) for k, v in out.items()}


@dataclass(frozen=True)
class PhantomDownload:
    root: Path
    cases: dict[str, LidcPhantom]
    shape: tuple[int, int, int]

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.cases))

    def phantom(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self.cases[case_id].hu, np.logical_or.reduce(self.cases[case_id].readers).astype(np.uint8)

    def labels(self, case_id: str) -> dict[str, np.ndarray]:
        return expected_labels(list(self.cases[case_id].readers))


# ---- the contract every source meets --------------------------------------------------------------
class TestLidcContract(SourceContract):
    source_name = "lidc"
    organ_label = "nodule_any"

    def write(self, ct, root: Path):
        cases = {}
        for number in (1, 2):
            case = write_lidc_case(root, number, shape=ct.SHAPE, spacing=ct.SPACING, origin=ct.ORIGIN)
            cases[case.patient] = case
        return PhantomDownload(root=root, cases=cases, shape=ct.SHAPE)

    @pytest.fixture(scope="class")
    def template(self, ct, tmp_path_factory):
        return self.write(ct, tmp_path_factory.mktemp("lidc_contract") / "download")

    @pytest.fixture
    def dataset(self, template, tmp_path):
        root = tmp_path / "download"
        shutil.copytree(template.root, root)
        moved = {k: LidcPhantom(patient=c.patient, hu=c.hu, readers=c.readers, marks=c.marks,
                                xml=root / c.xml.relative_to(template.root),
                                ct_files=tuple(root / f.relative_to(template.root) for f in c.ct_files))
                 for k, c in template.cases.items()}
        return PhantomDownload(root=root, cases=moved, shape=template.shape)

    def check_organ_side(self, volume: CaseVolume) -> None:
        _, _, xx = np.nonzero(volume.labels["nodule_any"])
        assert xx.mean() < 0.4 * volume.hu.shape[2]  # the nodule is in the right lung

    def test_discover_finds_exactly_the_written_cases(self, dataset, source):
        refs = source.discover(dataset.root)
        assert [r.case_id for r in refs] == list(dataset.case_ids) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
        for ref in refs:
            assert sorted(ref.paths("ct")) == sorted(dataset.cases[ref.case_id].ct_files)
            assert ref.paths("xml") == [dataset.cases[ref.case_id].xml]
            assert ref.patient_id == ref.case_id and not any(Path(rel).is_absolute() for _, rel in ref.files)

    def test_load_equals_the_canonical_phantom(self, dataset, source):
        for ref in source.discover(dataset.root):
            volume = source.load(ref)
            np.testing.assert_array_equal(volume.hu, dataset.phantom(ref.case_id)[0])
            assert list(volume.labels) == LABELS and [s.name for s in volume.label_specs] == LABELS
            for name, mask in dataset.labels(ref.case_id).items():
                np.testing.assert_array_equal(np.asarray(volume.labels[name]), mask, err_msg=f"{ref.case_id} {name}")
            counts = [int(np.asarray(volume.labels[n]).sum()) for n in LABELS[4:]]
            assert counts[0] > counts[1] > counts[2] > counts[3] > 0  # readers disagree on the border

    def test_inputs_are_recorded(self, ct, dataset, source):
        ref = source.discover(dataset.root)[0]
        roles = {f.role: f for f in source.load(ref).inputs}
        files = dataset.cases[ref.case_id].ct_files
        assert set(roles) == {"ct", "xml"}
        assert roles["ct"].path == files[0].parent.relative_to(dataset.root).as_posix()
        assert roles["ct"].size == sum(f.stat().st_size for f in files)
        assert roles["xml"].sha256 == ct.sha256_of(dataset.cases[ref.case_id].xml)

    def test_source_grid_maps_back_to_the_file(self, dataset, source):
        ref = source.discover(dataset.root)[0]
        volume = source.load(ref)
        slices = sorted((pydicom.dcmread(f) for f in ref.paths("ct")), key=lambda ds: float(ds.ImagePositionPatient[2]))
        native = np.stack([ds.pixel_array.astype(np.int16) - 1024 for ds in slices])
        np.testing.assert_array_equal(volume.source_grid.to_source(volume.hu), native.transpose(2, 1, 0))

    def test_load_missing_label_file(self, dataset, source):
        ref = source.discover(dataset.root)[0]
        ref.path("xml").unlink()
        with pytest.raises(MissingInputError, match="not found"):
            source.load(ref)
        (again,) = [r for r in source.discover(dataset.root) if r.case_id == ref.case_id]
        with pytest.raises(MissingInputError, match="no LIDC XML names this CT series"):
            source.load(again)

    def test_load_rejects_unknown_label_values(self, dataset, source):
        # the XML counterpart: an outline on a slice the series does not have
        ref = source.discover(dataset.root)[0]
        xml = ref.path("xml")
        roi = parse_lidc_xml(xml).sessions[0].nodules[0].rois[0]
        text = xml.read_text().replace(roi.sop_uid, "1.2.3.4")  # found by z then, for the other readers
        xml.write_text(text.replace(f"<imageZposition>{roi.z_mm:.6f} ", "<imageZposition>-999.0 ", 1))
        with pytest.raises(CaseInputError) as info:
            source.load(ref)
        assert str(xml) in str(info.value) and "is on no slice of the series" in str(info.value)

    @pytest.mark.parametrize("orientation", [FEET_FIRST_SUPINE, HEAD_FIRST_PRONE, ("+y", "-x")])
    def test_other_orientations_give_the_same_case(self, ct, tmp_path, source, orientation):
        case = write_lidc_case(tmp_path, 3, shape=(12, 48, 48), orientation=orientation, seed=5)
        volume = source.load(source.discover(tmp_path)[0])
        np.testing.assert_array_equal(volume.hu, case.hu)
        for name, mask in expected_labels(list(case.readers)).items():
            np.testing.assert_array_equal(np.asarray(volume.labels[name]), mask, err_msg=name)
        (small,) = volume.annotations["small_nodules"]
        (non,) = volume.annotations["non_nodules"]
        assert (small["z"], small["y"], small["x"]) == case.marks["small_nodule"] == (2, 20, 35)
        assert (non["z"], non["y"], non["x"]) == case.marks["non_nodule"] == (9, 30, 12)
        centroid = np.mean([np.argwhere(m).mean(axis=0) for m in case.readers], axis=0)
        np.testing.assert_allclose(volume.annotations["nodules"][0]["centroid_zyx"], centroid, atol=2e-3)


# ---- the real XMLs ----------------------------------------------------------------------------------
def xml_slices(path: Path) -> dict[float, str]:
    """z -> SOP UID of every roi and point the XML mentions."""
    ann = parse_lidc_xml(path)
    pairs = {}
    for session in ann.sessions:
        for nodule in session.nodules:
            pairs.update({r.z_mm: r.sop_uid for r in nodule.rois})
        pairs.update({p.z_mm: p.sop_uid for p in session.small_nodules + session.non_nodules})
    return pairs


def write_real_case(root: Path, xml: Path, step: float, z_range: tuple[float, float],
                    real_slice: Path | None = None) -> Path:
    """A synthetic 512x512 series for ``xml`` over ``z_range`` at ``step`` mm, with the XML's SOP UIDs
    where it names a slice (and the real file at its position), in ``root/<patient>/<study>/<series>/``."""
    ann = parse_lidc_xml(xml)
    named = xml_slices(xml)
    zs = np.round(np.arange(z_range[0], z_range[1] + step / 2, step), 4)
    real = pydicom.dcmread(real_slice, stop_before_pixels=True) if real_slice else None
    if real is not None:
        named[float(real.ImagePositionPatient[2])] = str(real.SOPInstanceUID)
    uids = [named.get(float(z)) or pydicom.uid.generate_uid() for z in zs]
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 240) ** 2 <= 1
    hu = np.where(body, -800, -1024).astype(np.int16)[None].repeat(len(zs), axis=0)
    folder = root / xml.stem / "study" / "series"
    files = write_ct_series(folder, hu, (step, 0.703125, 0.703125),
                            origin=(*REAL_ORIGIN_XY, float(zs[0])), series_uid=ann.series_uid, sop_uids=uids)
    if real is not None:
        k = int(np.flatnonzero(np.isclose(zs, float(real.ImagePositionPatient[2])))[0])
        files[k].unlink()
        shutil.copyfile(real_slice, folder / "f3a9c2.dcm")
    shutil.copyfile(xml, folder / xml.name)
    patient = root / ("LIDC-IDRI-0001" if xml.stem == "069" else "LIDC-IDRI-0002")
    (root / xml.stem).rename(patient)
    return patient


@pytest.fixture(scope="module")
def real_store(ct, tmp_path_factory):
    xml_dir = ct.shared_data_path("lidc_xml")
    root = tmp_path_factory.mktemp("lidc_real") / "LIDC-IDRI"
    write_real_case(root, xml_dir / "069.xml", 2.5, (-242.5, -105.0), xml_dir / "LIDC-IDRI-0001_000001.dcm")
    write_real_case(root, xml_dir / "071.xml", 1.25, (-125.75, -79.75))  # the outlined slices, not all points
    out = tmp_path_factory.mktemp("lidc_real_store") / "lidc.zarr"
    config = ConvertConfig(source="lidc", input_dir=str(root), output=str(out), keep_hu=True)
    report = convert_dataset(config, progress=False)
    assert [(o.case_id, o.status) for o in report.outcomes] == [("LIDC-IDRI-0001", "converted"),
                                                                ("LIDC-IDRI-0002", "converted")], report.lines()
    return xml_dir, root, SliceStore.open(out)


def test_real_xmls_per_reader_counts_and_nested_consensus(real_store):
    _, _, store = real_store
    for case_id, counts in REAL_COUNTS.items():
        data = store.read_case(case_id)
        assert list(data.labels) == LABELS or set(data.labels) == set(LABELS)
        assert [int(data.labels[f"nodule_reader_{k}"].sum()) for k in (1, 2, 3, 4)] == counts
        any_, c50, c75, all_ = (data.labels[n].astype(bool) for n in LABELS[4:])
        assert (c50 <= any_).all() and (c75 <= c50).all() and (all_ <= c75).all()
        assert any_.sum() > all_.sum() > 0
        assert data.record.lesion_label == "nodule_consensus_50"
        assert list(data.record.lesion_pixels) == c50.sum(axis=(1, 2)).tolist()
        assert data.record.split == assign_split(case_id, SplitConfig())


def test_real_0001_nodule_group_characteristics_and_points(real_store):
    xml_dir, _, store = real_store
    record = store.record("LIDC-IDRI-0001")
    (nodule,) = record.annotations["nodules"]
    assert nodule["readers"] == [1, 2, 3, 4] and nodule["n_readers"] == 4
    assert nodule["reader_nodule_ids"] == {"1": "Nodule 001", "2": "IL057_127364", "3": "MI014_12127", "4": "0"}
    assert nodule["voxels"] == {"1": 5905, "2": 4613, "3": 4955, "4": 5497}
    assert nodule["characteristics"]["1"] == {"subtlety": 5, "internalStructure": 1, "calcification": 6,
                                              "sphericity": 3, "margin": 3, "lobulation": 3, "spiculation": 4,
                                              "texture": 5, "malignancy": 5}
    labels = store.read_case("LIDC-IDRI-0001").labels
    centroids = [np.argwhere(labels[f"nodule_reader_{k}"]).mean(axis=0) for k in (1, 2, 3, 4)]
    np.testing.assert_allclose(nodule["centroid_zyx"], np.mean(centroids, axis=0), atol=2e-3)
    z_mm = record.z_positions
    lo, hi = nodule["z_range"]
    assert (round(z_mm[lo], 4), round(z_mm[hi], 4)) == (-125.0, -105.0)  # the outlined slices
    # points: z = stored row of the XML's imageZposition, x = column, y = row as in the XML
    ann = parse_lidc_xml(xml_dir / "069.xml")
    for kind in ("small_nodules", "non_nodules"):
        expected = [(s.reader_index + 1, p.nodule_id, p.z_mm, p.y, p.x) for s in ann.sessions
                    for p in getattr(s, kind)]
        got = [(p["reader"], p["id"], round(z_mm[p["z"]], 4), p["y"], p["x"]) for p in record.annotations[kind]]
        assert got == expected
    assert len(record.annotations["small_nodules"]) == 9 and len(record.annotations["non_nodules"]) == 13


def test_real_slice_is_matched_and_its_hu_stored(real_store):
    xml_dir, root, store = real_store
    real = pydicom.dcmread(xml_dir / "LIDC-IDRI-0001_000001.dcm")
    assert real.SeriesInstanceUID == xml_header(xml_dir / "069.xml")[1]
    data = store.read_case("LIDC-IDRI-0001", hu=True)
    z = row_at(data.record.z_positions, -207.5)
    np.testing.assert_array_equal(data.hu[z], real.pixel_array.astype(np.int16) - 1024)
    assert data.record.annotations["ct"]["slices"] == 56 and data.record.annotations["ct"]["notes"] == []


def test_real_0002_holes_and_points_off_the_series(real_store):
    xml_dir, _, store = real_store
    data = store.read_case("LIDC-IDRI-0002")
    ann = parse_lidc_xml(xml_dir / "071.xml")
    z_mm = data.record.z_positions
    holes = [(r, reader) for reader, n in ann.nodules for r in n.exclusion_rois]
    assert len(holes) == 2
    for roi, reader in holes:  # every pixel inside an inclusion=FALSE outline is cut out
        inside = np.zeros((512, 512), np.uint8)
        cv2.fillPoly(inside, [np.asarray(roi.points, np.int32).reshape(-1, 1, 2)], 1)
        plane = data.labels[f"nodule_reader_{reader + 1}"][row_at(z_mm, roi.z_mm)]
        assert inside.sum() > 0 and plane[inside == 1].sum() == 0
    points = data.record.annotations["small_nodules"] + data.record.annotations["non_nodules"]
    on = [p for p in points if p["z"] is not None]
    assert on and len(on) < len(points)
    assert all(-125.75 <= p["z_mm"] <= -79.75 and p["z"] == row_at(z_mm, p["z_mm"]) for p in on)
    assert all(not -125.75 <= p["z_mm"] <= -79.75 for p in points if p["z"] is None)


# ---- the download's quirks ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """Patients with two scans, a resubmitted XML, a CXR XML, a CT without XML, an XML without CT
    and a malformed XML."""
    root = tmp_path_factory.mktemp("lidc_quirks") / "LIDC-IDRI"
    small = {"shape": (10, 48, 48)}
    two = [write_lidc_case(root, 3, **small, seed=30), write_lidc_case(root, 3, **small, suffix="b", seed=31)]
    newer = write_lidc_case(root, 4, **small, date_service="2009-01-02")
    older = write_lidc_xml(newer.xml.with_name("0aa-first.xml"), xml_header(newer.xml)[1], "1.2.3",
                           [{"nodules": []}], date_service="2008-01-01")
    (newer.xml.parent / "cxr.xml").write_text('<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov">'
                                              "<ResponseHeader><SeriesInstanceUid>1.2</SeriesInstanceUid>"
                                              "</ResponseHeader></IdriReadMessage>")
    no_xml = write_lidc_case(root, 5, **small)
    no_xml.xml.unlink()
    no_ct = write_lidc_case(root, 6, **small)
    for f in no_ct.ct_files:
        f.unlink()
    broken = write_lidc_case(root, 7, **small)
    broken.xml.write_text(broken.xml.read_text()[:2000])
    return root, {"two": two, "newer": newer, "older": older, "no_xml": no_xml, "no_ct": no_ct, "broken": broken}


def test_discover_quirks(quirky):
    root, cases = quirky
    refs = {r.case_id: r for r in get_source("lidc").discover(root)}
    assert list(refs) == ["LIDC-IDRI-0003", "LIDC-IDRI-0003_2", "LIDC-IDRI-0004", "LIDC-IDRI-0005",
                          "LIDC-IDRI-0006", "LIDC-IDRI-0007"]
    # two scans: ordered by SeriesInstanceUID, one patient
    scans = sorted(cases["two"], key=lambda c: xml_header(c.xml)[1])
    assert [refs[c].paths("xml") for c in ("LIDC-IDRI-0003", "LIDC-IDRI-0003_2")] == [[s.xml] for s in scans]
    assert refs["LIDC-IDRI-0003_2"].patient_id == "LIDC-IDRI-0003"
    # resubmitted: the later DateService is used, the other kept as superseded; the CXR XML ignored
    assert refs["LIDC-IDRI-0004"].paths("xml") == [cases["newer"].xml]
    assert refs["LIDC-IDRI-0004"].paths("xml_superseded") == [cases["older"]]
    report = check_download("lidc", root)
    assert report.unexpected == () and "LIDC-IDRI-0003" not in report.missing
    assert {case for case, _ in report.unreadable} == {"LIDC-IDRI-0005", "LIDC-IDRI-0006", "LIDC-IDRI-0007"}


def test_convert_quirks(quirky, tmp_path):
    root, cases = quirky
    out = tmp_path / "q.zarr"
    report = convert_dataset(ConvertConfig(source="lidc", input_dir=str(root), output=str(out)), progress=False)
    outcome = {o.case_id: o for o in report.outcomes}
    assert [c for c, o in outcome.items() if o.status == "converted"] == ["LIDC-IDRI-0003", "LIDC-IDRI-0003_2",
                                                                          "LIDC-IDRI-0004"]
    assert outcome["LIDC-IDRI-0005"].reason == (f"{cases['no_xml'].ct_files[0].parent}: no LIDC XML names this CT "
                                                "series (10 files), so the case has no reader annotations")
    assert outcome["LIDC-IDRI-0006"].reason.startswith(f"{cases['no_ct'].xml}: the CT series this XML names")
    assert outcome["LIDC-IDRI-0007"].reason.startswith(f"{cases['broken'].xml}: malformed XML")
    store = SliceStore.open(out)
    first, second = store.record("LIDC-IDRI-0003"), store.record("LIDC-IDRI-0003_2")
    assert first.patient_id == second.patient_id == "LIDC-IDRI-0003" and first.split == second.split
    record = store.record("LIDC-IDRI-0004")
    # named as in the manifest: relative, each folder or file name public or hashed (issue 17, C7)
    assert record.annotations["lidc"]["superseded_xml"] == [public_path(cases["older"].relative_to(root).as_posix())]
    assert record.annotations["lidc"]["reading_sessions"] == 4  # from the newer XML, not the older (one session)
    np.testing.assert_array_equal(store.read_case("LIDC-IDRI-0004").labels["nodule_reader_2"],
                                  cases["newer"].readers[1])


# ---- positions on the stored case -------------------------------------------------------------------
def test_lesion_slices_only_moves_positions_to_stored_rows(tmp_path):
    case = write_lidc_case(tmp_path / "in", 8, shape=(16, 48, 48), seed=8)
    config = ConvertConfig(source="lidc", input_dir=str(tmp_path / "in"), output=str(tmp_path / "s.zarr"),
                           slices="lesion")
    assert convert_dataset(config, progress=False).outcomes[0].status == "converted"
    data = SliceStore.open(tmp_path / "s.zarr").read_case("LIDC-IDRI-0008")
    rows = list(data.record.slice_indices)
    expected = expected_labels(list(case.readers))["nodule_consensus_50"]
    assert rows == np.flatnonzero(expected.any(axis=(1, 2))).tolist() and rows[0] > 2
    (nodule,) = data.record.annotations["nodules"]
    centroid = np.mean([np.argwhere(data.labels[f"nodule_reader_{k}"]).mean(axis=0) for k in (1, 2, 3, 4)], axis=0)
    np.testing.assert_allclose(nodule["centroid_zyx"], centroid, atol=2e-3)  # z in stored rows
    assert data.record.annotations["small_nodules"][0]["z"] is None  # grid slice 2 is not stored
    assert nodule["z_range"][0] == 0


def test_adapt_positions_through_resampling():
    before = Geometry(shape=(10, 20, 20), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    after = Geometry(shape=(5, 10, 10), spacing=(4.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    annotations = {"nodules": [{"centroid_zyx": [4.0, 6.0, 8.0], "z_range": [2, 6]}],
                   "small_nodules": [{"z": 4, "y": 6, "x": 8}, {"z": None, "y": 2, "x": 2}],
                   "non_nodules": [{"z": 6, "y": 0, "x": 0}], "ct": {"files": 10}}
    out = adapt_positions(annotations, before=before, after=after, rows=[1, 2, 3])
    assert out["nodules"] == [{"centroid_zyx": [1.0, 3.0, 4.0], "z_range": [0, 2]}]
    assert out["small_nodules"] == [{"z": 1, "y": 3, "x": 4}, {"z": None, "y": 1, "x": 1}]
    assert out["non_nodules"] == [{"z": 2, "y": 0, "x": 0}] and out["ct"] == {"files": 10}
    same = adapt_positions(annotations, before=before, after=before, rows=range(10))
    assert same["nodules"] == annotations["nodules"] and same["small_nodules"] == annotations["small_nodules"]


def test_registered():
    assert SOURCES["lidc"] is LidcSource
    assert get_source("lidc").manifest.lesion_label == "nodule_consensus_50"
    with pytest.raises(ValueError, match="does not take the option"):
        get_source("lidc", {"gtvs": "merge"})
