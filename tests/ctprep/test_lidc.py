"""ctprep.formats.lidc_xml: LIDC-IDRI XML parsing, per-reader masks, nodule groups and consensus.

Real XMLs (../shared/data/lidc_xml: 069.xml = LIDC-IDRI-0001, 071.xml =
LIDC-IDRI-0002) are rasterised on a synthetic native grid built from the
XML's own (imageSOP_UID, imageZposition) pairs, 512 x 512.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctprep.errors import CaseInputError, MissingInputError
from ctprep.formats.lidc_readers import (consensus, group_consensus, group_nodules, intersection, reader_masks,
                                         union, votes_needed)
from ctprep.formats.lidc_xml import LidcAnnotations, Point, Roi, parse_lidc_xml

LIDC_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lidc_xml"
XML_0001 = LIDC_DIR / "069.xml"
XML_0002 = LIDC_DIR / "071.xml"
DCM_0001 = LIDC_DIR / "LIDC-IDRI-0001_000001.dcm"
PIXEL_MM = 0.703125  # LIDC-IDRI-0001's PixelSpacing (LIDC-IDRI-0002's is close; only used for grouping)

needs_real = pytest.mark.skipif(not XML_0001.is_file() or not XML_0002.is_file(),
                                reason=f"real LIDC XMLs not found in {LIDC_DIR} (shared test data absent)")

# Per-reader pixel counts of the rasterised nodules (fill minus outlines minus holes), pinned:
# they must also equal the straightforward per-roi recomputation below.
EXPECTED_PIXELS = {
    "069.xml": {(0, "Nodule 001"): 5905, (1, "IL057_127364"): 4613, (2, "MI014_12127"): 4955, (3, "0"): 5497},
    "071.xml": {(2, "MI014_11691"): 10351, (3, "8"): 12595},
}


def _parsed(path: Path) -> LidcAnnotations:
    return parse_lidc_xml(path)


def native_grid(ann: LidcAnnotations) -> tuple[list[str], list[float]]:
    """All distinct (SOP UID, z) pairs the XML mentions, sorted by z: a stand-in for the series."""
    pairs: dict[str, float] = {}
    for s in ann.sessions:
        for n in s.nodules:
            for r in n.rois:
                pairs.setdefault(r.sop_uid, r.z_mm)
        for p in s.small_nodules + s.non_nodules:
            pairs.setdefault(p.sop_uid, p.z_mm)
    items = sorted(pairs.items(), key=lambda kv: kv[1])
    return [u for u, _ in items], [z for _, z in items]


def masks_of(path: Path):
    ann = _parsed(path)
    uids, zs = native_grid(ann)
    return ann, uids, zs, reader_masks(ann, uids, zs, (len(uids), 512, 512))


# --------------------------------------------------------------------------- parsing (real XMLs)


@needs_real
def test_parse_069_sessions_nodules_points():
    ann = _parsed(XML_0001)
    assert ann.series_uid == "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
    assert ann.study_uid == "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
    assert len(ann.sessions) == 4
    assert [s.reader_index for s in ann.sessions] == [0, 1, 2, 3]
    assert [s.servicing_radiologist_id for s in ann.sessions] == ["540461523", "1428348137", "-750896469",
                                                                  "2103845659"]
    assert [len(s.nodules) for s in ann.sessions] == [1, 1, 1, 1]
    assert [[len(n.rois) for n in s.nodules] for s in ann.sessions] == [[8], [7], [8], [9]]
    assert sum(len(n.rois) for _, n in ann.nodules) == 32
    assert all(r.inclusion and len(r.points) > 1 for _, n in ann.nodules for r in n.rois)
    assert [len(s.small_nodules) for s in ann.sessions] == [3, 0, 3, 3]
    assert [len(s.non_nodules) for s in ann.sessions] == [4, 1, 8, 0]
    first = ann.sessions[0].nodules[0]
    assert first.nodule_id == "Nodule 001"
    assert first.characteristics == {"subtlety": 5, "internalStructure": 1, "calcification": 6, "sphericity": 3,
                                     "margin": 3, "lobulation": 3, "spiculation": 4, "texture": 5,
                                     "malignancy": 5}
    roi = first.rois[0]
    assert roi.z_mm == -125.0 and roi.sop_uid.endswith(".110383487652933113465768208719")
    assert roi.points[:3] == ((312, 355), (311, 356), (310, 357))  # (x = col, y = row)
    small = ann.sessions[0].small_nodules
    assert all(isinstance(p, Point) and isinstance(p.x, int) and isinstance(p.y, int) for p in small)
    assert [p.nodule_id for p in small] == ["Nodule 002", "Nodule 003", "Nodule 004"]
    assert [p.nodule_id for p in ann.sessions[0].non_nodules][0] == "_Non-nodule 001"
    json.dumps(ann.to_dict())  # JSON-serialisable


@needs_real
def test_parse_071_exclusion_rois():
    ann = _parsed(XML_0002)
    assert len(ann.sessions) == 4
    contoured = {(r, n.nodule_id): n for r, n in ann.nodules}
    assert sorted(contoured) == [(2, "MI014_11691"), (3, "8")]  # two readers contour one nodule
    assert sum(len(n.rois) for n in contoured.values()) == 53
    excl = contoured[(2, "MI014_11691")].exclusion_rois
    assert len(excl) == 2 and not contoured[(3, "8")].exclusion_rois
    assert sorted(r.z_mm for r in excl) == [-107.0, -102.0]
    # each hole lies on a slice the same reader outlined with an inclusion roi
    incl_uids = {r.sop_uid for r in contoured[(2, "MI014_11691")].inclusion_rois}
    assert all(r.sop_uid in incl_uids for r in excl)
    assert [len(s.small_nodules) for s in ann.sessions] == [7, 1, 11, 7]
    assert [len(s.non_nodules) for s in ann.sessions] == [8, 3, 12, 2]


@needs_real
def test_series_uid_matches_the_real_dicom_slice():
    pydicom = pytest.importorskip("pydicom")
    if not DCM_0001.is_file():
        pytest.skip(f"{DCM_0001} absent")
    ds = pydicom.dcmread(DCM_0001, stop_before_pixels=True)
    assert parse_lidc_xml(XML_0001).series_uid == ds.SeriesInstanceUID
    assert parse_lidc_xml(XML_0002).series_uid != ds.SeriesInstanceUID


# --------------------------------------------------------------------------- parsing tolerance and errors

_MINIMAL = """<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage {ns}>
<ResponseHeader><{series_tag}>1.2.3</{series_tag}><StudyInstanceUID>4.5.6</StudyInstanceUID></ResponseHeader>
<readingSession>
  <servicingRadiologistID>anon</servicingRadiologistID>
  <unblindedReadNodule><noduleID>N1</noduleID>
    <roi><imageZposition>-10.5 </imageZposition><imageSOP_UID>s1</imageSOP_UID><inclusion>true</inclusion>
      <edgeMap><xCoord>10</xCoord><yCoord>20</yCoord></edgeMap>
      <edgeMap><xCoord>14</xCoord><yCoord>20</yCoord></edgeMap>
      <edgeMap><xCoord>14</xCoord><yCoord>26</yCoord></edgeMap></roi>
  </unblindedReadNodule>
  <unblindedReadNodule><noduleID>small</noduleID>
    <roi><imageZposition>-8</imageZposition><imageSOP_UID>s2</imageSOP_UID><inclusion>TRUE</inclusion>
      <edgeMap><xCoord>3</xCoord><yCoord>4</yCoord></edgeMap></roi>
  </unblindedReadNodule>
  <nonNodule><nonNoduleID>nn</nonNoduleID><imageZposition>-8</imageZposition><imageSOP_UID>s2</imageSOP_UID>
    <locus><xCoord>7</xCoord><yCoord>9</yCoord></locus></nonNodule>
</readingSession>
</LidcReadMessage>
"""


@pytest.mark.parametrize("ns", ['xmlns="http://www.nih.gov"', ""])
@pytest.mark.parametrize("series_tag", ["SeriesInstanceUid", "SeriesInstanceUID", "seriesinstanceuid"])
def test_header_spellings_and_namespace(tmp_path, ns, series_tag):
    path = tmp_path / "a.xml"
    path.write_text(_MINIMAL.format(ns=ns, series_tag=series_tag))
    ann = parse_lidc_xml(path)
    assert (ann.series_uid, ann.study_uid) == ("1.2.3", "4.5.6")
    (session,) = ann.sessions
    assert session.servicing_radiologist_id == "anon"
    (nodule,) = session.nodules
    assert nodule.characteristics == {} and nodule.rois[0].z_mm == -10.5 and nodule.rois[0].inclusion
    assert session.small_nodules == (Point(nodule_id="small", z_mm=-8.0, sop_uid="s2", x=3, y=4),)
    assert session.non_nodules == (Point(nodule_id="nn", z_mm=-8.0, sop_uid="s2", x=7, y=9),)


@pytest.mark.parametrize("text, reason", [
    ("<LidcReadMessage><ResponseHeader>", "malformed XML"),
    ("<IdriReadMessage xmlns='http://www.nih.gov'/>", "root"),
    ("<LidcReadMessage xmlns='http://www.nih.gov'><ResponseHeader><StudyInstanceUID>1</StudyInstanceUID>"
     "</ResponseHeader></LidcReadMessage>", "SeriesInstanceUID"),
    (_MINIMAL.format(ns="", series_tag="SeriesInstanceUid").replace("-10.5 ", "abc"), "imageZposition"),
    (_MINIMAL.format(ns="", series_tag="SeriesInstanceUid").replace("<inclusion>true", "<inclusion>maybe"),
     "inclusion"),
])
def test_bad_xml_raises_case_input_error_naming_the_file(tmp_path, text, reason):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(CaseInputError) as info:
        parse_lidc_xml(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert reason in info.value.reason


def test_missing_xml(tmp_path):
    with pytest.raises(MissingInputError):
        parse_lidc_xml(tmp_path / "nope.xml")


# --------------------------------------------------------------------------- masks


def _reference_slice(rois, shape=(512, 512)) -> np.ndarray:
    """Straightforward per-roi rule: fill each inclusion, take every outline away, take each hole away."""
    out = np.zeros(shape, bool)
    for roi in rois:
        if roi.inclusion:
            img = np.zeros(shape, np.uint8)
            cv2.fillPoly(img, [np.array(roi.points, np.int32)], 1)
            out |= img.astype(bool)
    for roi in rois:
        img = np.zeros(shape, np.uint8)
        if roi.inclusion:
            cv2.polylines(img, [np.array(roi.points, np.int32)], True, 1)
        else:
            cv2.fillPoly(img, [np.array(roi.points, np.int32)], 1)
            cv2.polylines(img, [np.array(roi.points, np.int32)], True, 1)
        out &= ~img.astype(bool)
    return out


def _inside_even_odd(points, shape=(512, 512)) -> np.ndarray:
    """Pixel centres strictly inside the polygon by ray casting (no OpenCV)."""
    pts = np.asarray(points, float)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    inside = np.zeros(shape, bool)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r0, r1 = int(max(0, pts[:, 1].min() - 1)), int(min(shape[0], pts[:, 1].max() + 2))
    c0, c1 = int(max(0, pts[:, 0].min() - 1)), int(min(shape[1], pts[:, 0].max() + 2))
    yy, xx = rows[r0:r1, c0:c1], cols[r0:r1, c0:c1]
    acc = np.zeros(yy.shape, bool)
    for a, b, c, d in zip(x0, y0, x1, y1):
        if b == d:
            continue
        crosses = (b > yy) != (d > yy)
        xcross = a + (yy - b) * (c - a) / (d - b)
        acc ^= crosses & (xx < xcross)
    inside[r0:r1, c0:c1] = acc
    return inside


@needs_real
@pytest.mark.parametrize("xml", [XML_0001, XML_0002], ids=["069", "071"])
def test_reader_masks_exact_counts(xml):
    ann, uids, zs, masks = masks_of(xml)
    assert len(uids) == len(set(zs))  # one z per SOP UID: a usable synthetic grid
    assert {k: int(m.sum()) for k, m in masks.items()} == EXPECTED_PIXELS[xml.name]
    index = {u: k for k, u in enumerate(uids)}
    for reader, nodule in ann.nodules:
        mask = masks[(reader, nodule.nodule_id)]
        assert mask.dtype == np.uint8 and mask.shape == (len(uids), 512, 512) and set(np.unique(mask)) <= {0, 1}
        expected = np.zeros(mask.shape, bool)
        by_slice: dict[int, list[Roi]] = {}
        for roi in nodule.rois:
            by_slice.setdefault(index[roi.sop_uid], []).append(roi)
        for k, rois in by_slice.items():
            expected[k] = _reference_slice(rois)
        np.testing.assert_array_equal(mask.astype(bool), expected)
        # plausible: each reader's nodule is 15-35 mm across (equivalent sphere on 2.5/1.25 mm slices)
        step = float(np.median(np.diff(zs)))
        step = min(step, 2.5)
        diameter = (6 * mask.sum() * PIXEL_MM ** 2 * step / math.pi) ** (1 / 3)
        assert 10 < diameter < 40, diameter


@needs_real
def test_outline_pixels_are_not_nodule_and_fill_matches_ray_casting():
    ann, uids, zs, masks = masks_of(XML_0001)
    index = {u: k for k, u in enumerate(uids)}
    for reader, nodule in ann.nodules:
        mask = masks[(reader, nodule.nodule_id)].astype(bool)
        for roi in nodule.rois:
            k = index[roi.sop_uid]
            pts = np.array(roi.points)
            assert not mask[k, pts[:, 1], pts[:, 0]].any()  # edge points are excluded
            outline = np.zeros((512, 512), np.uint8)
            cv2.polylines(outline, [pts.astype(np.int32)], True, 1)
            band = cv2.dilate(outline, np.ones((3, 3), np.uint8)).astype(bool)
            inside = _inside_even_odd(roi.points)
            # away from the outline, the mask is exactly the polygon's interior
            np.testing.assert_array_equal(mask[k] & ~band, inside & ~band)
            assert inside.sum() > 50


@needs_real
def test_exclusion_rois_cut_holes():
    ann, uids, zs, masks = masks_of(XML_0002)
    nodule = dict(((r, n.nodule_id), n) for r, n in ann.nodules)[(2, "MI014_11691")]
    mask = masks[(2, "MI014_11691")]
    index = {u: k for k, u in enumerate(uids)}
    for hole in nodule.exclusion_rois:
        k = index[hole.sop_uid]
        same_slice = [r for r in nodule.inclusion_rois if r.sop_uid == hole.sop_uid]
        without_holes = _reference_slice(same_slice)
        hole_fill = np.zeros((512, 512), np.uint8)
        cv2.fillPoly(hole_fill, [np.array(hole.points, np.int32)], 1)
        cv2.polylines(hole_fill, [np.array(hole.points, np.int32)], True, 1)
        cut = without_holes & hole_fill.astype(bool)
        assert cut.sum() > 0  # the hole lies inside the nodule
        assert int(mask[k].sum()) == int(without_holes.sum()) - int(cut.sum())
        assert not (mask[k].astype(bool) & hole_fill.astype(bool)).any()


@needs_real
def test_z_fallback_and_missing_slice():
    ann, uids, zs, masks = masks_of(XML_0001)
    shape = (len(uids), 512, 512)
    renamed = [f"9.9.{k}" for k in range(len(uids))]  # no SOP UID matches: place by z
    shifted = [z + 0.4 for z in zs]  # within half the 2.5 mm interval
    by_z = reader_masks(ann, renamed, shifted, shape)
    assert by_z.keys() == masks.keys()
    for key in masks:
        np.testing.assert_array_equal(by_z[key], masks[key])
    # drop the slice of one roi (and its SOP UID): CaseInputError naming the XML and the z
    z_gone = ann.sessions[0].nodules[0].rois[0].z_mm
    keep = [k for k, z in enumerate(zs) if z != z_gone]
    with pytest.raises(CaseInputError) as info:
        reader_masks(ann, [uids[k] for k in keep], [zs[k] for k in keep], (len(keep), 512, 512))
    assert info.value.path == str(XML_0001) and f"z={z_gone:g}" in info.value.reason


def test_points_are_never_rasterised_and_shapes_are_checked(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(_MINIMAL.format(ns="", series_tag="SeriesInstanceUid"))
    ann = parse_lidc_xml(path)
    masks = reader_masks(ann, ["s1", "s2"], [-10.5, -8.0], (2, 32, 32))
    assert list(masks) == [(0, "N1")]
    assert masks[(0, "N1")][1].sum() == 0  # the small nodule and the non-nodule on s2 left no trace
    with pytest.raises(ValueError):
        reader_masks(ann, ["s1"], [-10.5, -8.0], (2, 32, 32))
    with pytest.raises(CaseInputError, match="outside"):
        reader_masks(ann, ["s1", "s2"], [-10.5, -8.0], (2, 16, 16))


# --------------------------------------------------------------------------- grouping


@needs_real
def test_grouping_real_xmls():
    ann, uids, zs, masks = masks_of(XML_0001)
    groups = group_nodules(masks, zs, (PIXEL_MM, PIXEL_MM))
    assert len(groups) == 1
    assert groups[0].members == ((0, "Nodule 001"), (1, "IL057_127364"), (2, "MI014_12127"), (3, "0"))
    assert groups[0].n_readers == 4 and 15 < groups[0].diameter_mm < 35
    json.dumps([g.to_dict() for g in groups])
    ann, uids, zs, masks = masks_of(XML_0002)
    groups = group_nodules(masks, zs, (PIXEL_MM, PIXEL_MM))
    assert [g.members for g in groups] == [((2, "MI014_11691"), (3, "8"))]


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return (d2 <= radius ** 2).astype(np.uint8)


def test_grouping_rules_synthetic():
    shape = (20, 64, 64)
    zs = [float(z) for z in range(20)]  # 1 mm slices, 1 mm pixels
    masks = {
        (0, "a"): _ball(shape, (5, 20, 20), 4),
        (1, "b"): _ball(shape, (6, 21, 20), 4),        # overlaps (0, a)
        (1, "d"): _ball(shape, (5, 21, 21), 3),        # reader 1 again, overlapping (0, a) too
        (3, "e"): _ball(shape, (15, 50, 50), 3),       # far away
        (2, "f"): _ball(shape, (15, 52, 50), 3),       # overlaps (3, e)
        (2, "c"): np.zeros(shape, np.uint8),
    }
    masks[(2, "c")][5, 20, 27] = 1  # one voxel 7 mm from (0, a)'s centre, beyond its ~4 mm radius
    groups = group_nodules(masks, zs)
    members = sorted(g.members for g in groups)
    assert ((0, "a"), (1, "b")) in members and ((1, "d"),) in members  # b overlaps a more (Dice) than d
    assert ((2, "f"), (3, "e")) in members
    assert ((2, "c"),) in members
    for g in groups:  # one annotation per reader per group
        readers = [r for r, _ in g.members]
        assert len(readers) == len(set(readers))
    assert sorted(k for g in groups for k in g.members) == sorted(masks)
    # near but not overlapping: centroids within the larger radius are linked
    near = {(0, "a"): _ball(shape, (5, 20, 20), 4), (1, "b"): _ball(shape, (5, 20, 20), 4)}
    near[(1, "b")] = np.roll(near[(1, "b")], 9, axis=2)  # 9 mm apart, no overlap
    assert len(group_nodules(near, zs)) == 2
    near[(0, "a")][5, 20, 20] = 0  # a shell around a one-voxel mark: no overlap, same centre
    near[(1, "b")] = np.zeros(shape, np.uint8)
    near[(1, "b")][5, 20, 20] = 1
    assert len(group_nodules(near, zs)) == 1  # centroids within the larger equivalent radius


# --------------------------------------------------------------------------- consensus


def test_votes_needed_table():
    assert [votes_needed(p, 4) for p in (0, 0.25, 0.5, 0.75, 1.0)] == [1, 1, 2, 3, 4]
    assert [votes_needed(p, 2) for p in (0, 0.25, 0.5, 0.75, 1.0)] == [1, 1, 1, 2, 2]
    assert 0.28 * 25 > 7 and votes_needed(0.28, 25) == 7  # no float rounding surprise (7.000000000000001)
    with pytest.raises(ValueError):
        votes_needed(1.5, 4)


def test_consensus_counts_and_reader_option():
    a = np.array([1, 1, 1, 0, 0], np.uint8)
    b = np.array([1, 1, 0, 0, 0], np.uint8)
    assert consensus([a, b], 0.5).tolist() == [1, 1, 1, 0, 0]  # 1 of the 2 readers who marked it
    assert consensus([a, b], 0.75).tolist() == [1, 1, 0, 0, 0]
    assert consensus([a, b], 0.5, n_readers=4).tolist() == [1, 1, 0, 0, 0]  # 2 of 4 LIDC readers
    assert consensus([a, b], 0.75, n_readers=4).tolist() == [0, 0, 0, 0, 0]
    assert intersection([a, b]).tolist() == [1, 1, 0, 0, 0] and union([a, b]).tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError):
        consensus([a, b], 0.5, n_readers=1)
    with pytest.raises(ValueError):
        consensus([a, b[:3]], 0.5)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), lo=st.floats(0, 1), hi=st.floats(0, 1),
       four=st.booleans())
def test_consensus_monotone_in_level(data, n, lo, hi, four):
    lo, hi = min(lo, hi), max(lo, hi)
    masks = [np.array(data.draw(st.lists(st.integers(0, 1), min_size=12, max_size=12)), np.uint8)
             .reshape(2, 2, 3) for _ in range(n)]
    n_readers = max(4, n) if four else None
    low, high = consensus(masks, lo, n_readers), consensus(masks, hi, n_readers)
    assert not (high & ~low.astype(bool)).any()  # a higher level never adds voxels
    inter, uni = intersection(masks), union(masks)
    for c in (low, high):
        assert c.dtype == np.uint8
        assert not (c.astype(bool) & ~uni.astype(bool)).any()
        if n_readers is None:
            assert not (inter.astype(bool) & ~c.astype(bool)).any()
    np.testing.assert_array_equal(consensus(masks, 0.0), uni)
    np.testing.assert_array_equal(consensus(masks, 1.0), inter)


@needs_real
def test_real_consensus_nested():
    ann, uids, zs, masks = masks_of(XML_0001)
    (group,) = group_nodules(masks, zs, (PIXEL_MM, PIXEL_MM))
    member_masks = [masks[m] for m in group.members]
    inter, uni = intersection(member_masks).astype(bool), union(member_masks).astype(bool)
    counts = []
    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        c = consensus(member_masks, level).astype(bool)
        assert not (inter & ~c).any() and not (c & ~uni).any()
        counts.append(int(c.sum()))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0
    assert counts[0] == uni.sum() and counts[-1] == inter.sum()
    vol = group_consensus([group], masks, 0.5)
    np.testing.assert_array_equal(vol, consensus(member_masks, 0.5))
    assert group_consensus([group], masks, 0.5, min_readers=5).sum() == 0
