"""ctlabel.label: the per-lesion runner over a store (sources, skips, resume, workers, attributes)."""

from __future__ import annotations

import numpy as np
import pytest

from ctlabel.errors import LabelInputError

from ctlabel.label import LabelConfig, label_store
from ctlabel.trimap import BACKGROUND, FOREGROUND, UNKNOWN, Recist, TrimapParams, trimap_from_mask
from ctprep.errors import CaseNotFoundError, StoreParameterError
from ctprep.store import SliceStore

SPACING = (2.0, 0.8, 0.8)


def _volume(lk, slices: dict[int, list[dict]], nz: int = 4, shape=(96, 96), seed=0):
    """HU and mask volumes with the given lesions (lesion_slice keyword sets) on the given slices."""
    hu = np.full((nz, *shape), -800.0)
    mask = np.zeros((nz, *shape), np.uint8)
    rng = np.random.default_rng(seed)
    for z, lesions in slices.items():
        for spec in lesions:
            one, truth = lk.lesion_slice(shape=shape, **spec)
            hu[z] = np.maximum(hu[z], one)
            mask[z] |= truth.astype(np.uint8)
    hu += rng.normal(0, 10, size=hu.shape)
    return hu.astype(np.int16), mask


@pytest.fixture
def mask_store(tmp_path, lk):
    """Two cases: case-a has two lesions on slice 1, one on slice 2 and a 2x2-pixel speck; case-b one lesion."""
    store = lk.new_store(tmp_path / "masks.zarr")
    hu, mask = _volume(lk, {1: [dict(centre=(28, 30), radii=(12, 9)), dict(centre=(70, 64), radii=(14, 10))],
                            2: [dict(centre=(48, 48), radii=(16, 12))]})
    mask[3, 80:82, 10:12] = 1
    hu[3, 80:82, 10:12] = 40
    lk.write_case(store, "case-a", hu, {"tumour": mask}, SPACING)
    hu, mask = _volume(lk, {0: [dict(centre=(50, 40), radii=(18, 11))]}, seed=1)
    lk.write_case(store, "case-b", hu, {"tumour": mask}, SPACING)
    return tmp_path / "masks.zarr"


def _read(path, case_id: str, *names: str) -> dict:
    return SliceStore.open(path).read_case(case_id, labels=list(names)).labels


def test_mask_source_components_and_skips(mask_store):
    report = label_store(LabelConfig(store=str(mask_store), source="mask", label="tumour"), progress=False)
    assert [o.status for o in report.outcomes] == ["labelled", "labelled"]
    done = {(case, lesion.lesion_id) for case, lesion in report.lesions("done")}
    assert done == {("case-a", "z1-1"), ("case-a", "z1-2"), ("case-a", "z2-1"), ("case-b", "z0-1")}
    skipped = report.lesions("skipped")
    assert [(case, lesion.lesion_id) for case, lesion in skipped] == [("case-a", "z3-1")]
    assert "no foreground" in skipped[0][1].reason
    labels = _read(mask_store, "case-a", "trimap_tumour", "soft_tumour", "tumour")
    trimap, soft, mask = labels["trimap_tumour"], labels["soft_tumour"], labels["tumour"]
    assert trimap.dtype == np.uint8 and soft.dtype == np.float32
    assert set(np.unique(trimap)) <= {BACKGROUND, UNKNOWN, FOREGROUND}
    # Slice 2, one lesion: the whole-slice trimap is the lesion's mask trimap (its crop holds the band).
    assert np.array_equal(trimap[2], trimap_from_mask(mask[2], SPACING[1:]))
    # Slice 1, two lesions with their own bands: the trimap invariants hold on the whole slice.
    inside = mask[1] == 1
    assert not ((trimap[1] == FOREGROUND) & ~inside).any()
    assert not (inside & (trimap[1] == BACKGROUND)).any()
    assert np.count_nonzero(trimap[1] == FOREGROUND) > 0.5 * np.count_nonzero(inside)
    assert not trimap[0].any() and not soft[0].any()  # no lesion, no label
    assert not trimap[3].any() and not soft[3].any()  # the skipped speck leaves nothing
    assert np.all(soft[trimap == FOREGROUND] == 1.0) and np.all(soft[trimap == BACKGROUND] == 0.0)
    hard = soft >= 0.5
    assert 2 * np.count_nonzero(hard & (mask == 1)) / (hard.sum() + mask.sum()) > 0.9
    info = SliceStore.open(mask_store).label_attributes("case-a", "soft_tumour")["ctlabel"]
    assert info["kind"] == "soft" and info["parameters"]["from"] == "mask"
    assert info["parameters"]["evidence"] == {"label": "tumour"}
    assert {entry["lesion_id"]: entry["status"] for entry in info["lesions"]} == {
        "z1-1": "done", "z1-2": "done", "z2-1": "done", "z3-1": "skipped"}
    summary = "\n".join(report.lines())
    assert "2 cases labelled" in summary and "4 lesions labelled, 1 skipped" in summary
    assert "skipped lesion case-a/z3-1 (z=3)" in summary


def test_default_label_is_the_store_lesion_label(mask_store):
    report = label_store(LabelConfig(store=str(mask_store), source="mask", matting=False), progress=False)
    assert report.labels == ("trimap_tumour",)
    assert "soft_tumour" not in SliceStore.open(mask_store).label_names("case-a")


def test_resume_refuse_and_overwrite(mask_store):
    config = LabelConfig(store=str(mask_store), source="mask", label="tumour")
    label_store(config, progress=False)
    before = _read(mask_store, "case-b", "soft_tumour")["soft_tumour"]
    again = label_store(config, progress=False)
    assert [o.status for o in again.outcomes] == ["existing", "existing"]
    # The trimap alone, same parameters: nothing to do either.
    trimaps = label_store(LabelConfig(store=str(mask_store), source="mask", label="tumour", matting=False),
                          progress=False)
    assert [o.status for o in trimaps.outcomes] == ["existing", "existing"]
    wider = LabelConfig(store=str(mask_store), source="mask", label="tumour",
                        trimap=TrimapParams(band_fraction=0.3))
    with pytest.raises(StoreParameterError, match="band_fraction: has 0.1, asked 0.3"):
        label_store(wider, progress=False)
    import dataclasses

    redone = label_store(dataclasses.replace(wider, overwrite=True), progress=False)
    assert [o.status for o in redone.outcomes] == ["labelled", "labelled"]
    after = _read(mask_store, "case-b", "soft_tumour")["soft_tumour"]
    assert not np.array_equal(before, after)  # a wider band gives another alpha
    # Another --name writes beside, without touching the first.
    beside = label_store(dataclasses.replace(config, name="other"), progress=False)
    assert beside.labels == ("trimap_other", "soft_other")


def test_softmask_after_trimap_redoes_the_case(mask_store):
    label_store(LabelConfig(store=str(mask_store), source="mask", matting=False, cases=("case-b",)), progress=False)
    report = label_store(LabelConfig(store=str(mask_store), source="mask", cases=("case-b",)), progress=False)
    assert [o.status for o in report.outcomes] == ["labelled"]
    assert [o.case_id for o in report.outcomes] == ["case-b"]


def test_workers_give_the_same_labels(mask_store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(mask_store, copy)
    label_store(LabelConfig(store=str(mask_store), source="mask"), progress=False)
    report = label_store(LabelConfig(store=str(copy), source="mask", workers=2), progress=False)
    assert len(report.lesions("done")) == 4
    for case_id in ("case-a", "case-b"):
        one = _read(mask_store, case_id, "trimap_tumour", "soft_tumour")
        two = _read(copy, case_id, "trimap_tumour", "soft_tumour")
        for name in one:
            np.testing.assert_array_equal(one[name], two[name])


def test_recist_source_skips_bad_annotations_and_cases(tmp_path, lk):
    store = lk.new_store(tmp_path / "recist.zarr")
    hu, mask = _volume(lk, {1: [dict(centre=(48, 50), radii=(20, 12), angle=0.3)]}, nz=3)
    good = Recist.from_axes([[29.9, 44.1], [66.1, 55.9]], [[44.4, 61.2], [51.6, 38.8]])
    lesions = [
        lk.recist_annotation("good", 1, good, SPACING[1:]),
        lk.recist_annotation("outside", 1, Recist.from_axes([[90, 10], [120, 10]], [[100, 5], [100, 15]]),
                             SPACING[1:]),
        {"lesion_id": "three-points", "z": 1, "recist": {"long": [[1, 2], [3, 4], [5, 6]], "short": [[1, 1], [2, 2]]}},
        {"lesion_id": "bad-z", "z": 7, "recist": good.to_dict()},
        {"lesion_id": "good", "z": 1, "recist": good.to_dict()},  # a repeated id
        "not a mapping",
    ]
    lk.write_case(store, "with", hu, {"tumour": mask}, SPACING, annotations={"lesions": lesions})
    lk.write_case(store, "without", hu, {"tumour": mask}, SPACING)
    lk.write_case(store, "empty", hu, {"tumour": mask}, SPACING, annotations={"lesions": []})
    report = label_store(LabelConfig(store=str(tmp_path / "recist.zarr"), source="recist"), progress=False)
    outcomes = {o.case_id: o for o in report.outcomes}
    assert outcomes["without"].status == "skipped" and "no RECIST annotations" in outcomes["without"].reason
    assert outcomes["empty"].status == "labelled" and outcomes["empty"].lesions == ()
    listed = [(lesion.lesion_id, lesion.status, lesion.reason) for lesion in outcomes["with"].lesions]
    assert [entry for entry in listed if entry[0] == "good"] == [
        ("good", "done", ""), ("good", "skipped", "lesion_id repeated in the case; expected unique ids")]
    reasons = {lesion_id: (status, reason) for lesion_id, status, reason in listed if lesion_id != "good"}
    assert "outside the 96x96 slice" in reasons["outside"][1]
    assert "long axis" in reasons["three-points"][1]
    assert "z must be a stored slice index 0..2" in reasons["bad-z"][1]
    assert any("expected a mapping" in reason for status, reason in reasons.values())
    soft = _read(tmp_path / "recist.zarr", "with", "soft_recist")["soft_recist"]
    hard = soft[1] >= 0.5
    assert 2 * np.count_nonzero(hard & (mask[1] == 1)) / (hard.sum() + mask[1].sum()) > 0.85
    assert not soft[0].any() and not soft[2].any()
    empty = _read(tmp_path / "recist.zarr", "empty", "soft_recist", "trimap_recist")
    assert not empty["soft_recist"].any() and not empty["trimap_recist"].any()


def test_readers_source(tmp_path, lk):
    store = lk.new_store(tmp_path / "lidc.zarr")
    hu, union = _volume(lk, {1: [dict(centre=(40, 44), radii=(16, 12))], 2: [dict(centre=(60, 60), radii=(8, 8))]})
    intersection = union.copy()
    intersection[1] = union[1] & np.pad(np.ones((88, 88), np.uint8), 4)  # all agree but on the rim
    intersection[1, :, :38] = 0  # ... and readers differ on the left half
    intersection[2] = 0  # slice 2: readers never overlap
    lk.write_case(store, "LIDC-IDRI-0001", hu, {"nodule_any": union, "nodule_all": intersection}, SPACING,
                  lesion_label="nodule_any")
    report = label_store(LabelConfig(store=str(tmp_path / "lidc.zarr"), source="readers"), progress=False)
    lesions = {lesion.lesion_id: lesion for _, lesion in report.lesions("done") + report.lesions("skipped")}
    assert lesions["z1-1"].status == "done"
    assert lesions["z2-1"].status == "skipped" and "no foreground" in lesions["z2-1"].reason
    labels = _read(tmp_path / "lidc.zarr", "LIDC-IDRI-0001", "trimap_nodule", "soft_nodule")
    trimap = labels["trimap_nodule"][1]
    assert np.array_equal(trimap == FOREGROUND, intersection[1] == 1)
    assert not ((trimap == BACKGROUND) & (union[1] == 1)).any()
    soft = labels["soft_nodule"][1]
    assert np.all(soft[intersection[1] == 1] == 1.0)
    unknown = (trimap == UNKNOWN) & (union[1] == 1)
    assert soft[unknown].mean() > 0.5  # the readers' disagreement is lesion-like in the image


def test_case_problems_are_reported_not_fatal(mask_store):
    # a label no case has: refused once, before any case, with the valid ones (a typo, not a bad case)
    with pytest.raises(LabelInputError, match=r"unknown label 'liver' \(valid: tumour\)"):
        label_store(LabelConfig(store=str(mask_store), source="mask", label="liver"), progress=False)
    label_store(LabelConfig(store=str(mask_store), source="mask", label="tumour", matting=False), progress=False)
    not_binary = label_store(LabelConfig(store=str(mask_store), source="mask", label="trimap_tumour", name="x"),
                             progress=False)
    assert "not a binary 0/1 mask" in not_binary.outcomes[0].reason
    with pytest.raises(CaseNotFoundError, match="no case 'nope'"):
        label_store(LabelConfig(store=str(mask_store), source="mask", cases=("nope",)), progress=False)


def test_config_round_trip_and_validation():
    config = LabelConfig(store="s.zarr", source="readers", trimap=TrimapParams(band_fraction=0.2), cases=("a",))
    assert LabelConfig.from_dict(config.to_dict()) == config
    assert config.trimap_label == "trimap_nodule" and config.soft_label == "soft_nodule"
    assert LabelConfig(store="s", source="recist").output_name == "recist"
    with pytest.raises(ValueError, match="--from 'grabcut'"):
        LabelConfig(store="s", source="grabcut")
    with pytest.raises(ValueError, match="workers"):
        LabelConfig(store="s", source="mask", workers=0)
