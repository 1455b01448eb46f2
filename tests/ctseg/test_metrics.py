"""ctseg.metrics against independent implementations (SimpleITK/ITK, medpy, scipy ranks) and properties.

Masks: smooth random blobs, and real label volumes (KiTS19 case_00061, pyradiomics'
lung nodule) with perturbed copies as "predictions", all with anisotropic spacing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.stats import rankdata

from ctseg import metrics as m

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPACING = (2.5, 0.8, 0.7)  # (z, y, x) mm, anisotropic


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} is absent "
                    "(../shared/data exists only on the project's machines)")
    return path


# ---- inputs --------------------------------------------------------------------------------------
def blob(shape, seed: int, smooth: float = 2.0, level: float = 0.5, pad: bool = True) -> np.ndarray:
    """A random smooth blob mask, one empty voxel from every edge (``pad``)."""
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random(shape), smooth) > level
    return np.pad(mask, 1) if pad else mask


def random_pairs():
    pairs = []
    for seed in range(4):
        truth = blob((12, 40, 44), seed, pad=False)
        moved = np.pad(truth[:, :, :-3], ((0, 0), (0, 0), (3, 0)))  # shifted 3 voxels along x
        pred = np.pad(blob((12, 40, 44), seed + 100, pad=False) | moved, 1)
        truth = np.pad(truth, 1)  # one empty voxel each side, as ITK's contour filter assumes
        pairs.append((f"blob{seed}", pred, truth, SPACING))
    return pairs


def _kits_pairs():
    import nibabel as nib

    path = shared("kits19_seg", "case_00061", "segmentation.nii.gz")
    image = nib.load(path)
    seg = np.asarray(image.dataobj)
    spacing = tuple(float(s) for s in image.header.get_zooms())  # file axes; only the pairing matters
    box = tuple(slice(max(int(i.min()) - 3, 0), int(i.max()) + 4) for i in np.nonzero(seg))
    seg = np.pad(seg[box], 1)
    tumour, kidney = seg == 2, seg >= 1
    shifted = ndimage.shift(tumour.astype(np.uint8), (0, 3, -2), order=0).astype(bool)
    grown = ndimage.binary_dilation(tumour, iterations=2) & ~np.roll(tumour, 4, axis=1)
    return [("kits_tumour_vs_kidney", kidney, tumour, spacing),  # nested: truth inside prediction
            ("kits_tumour_shifted", shifted, tumour, spacing),
            ("kits_tumour_grown", grown, tumour, spacing)]


def _lung_pairs():
    image = sitk.ReadImage(str(shared("pyradiomics_lung", "lung1_label.nrrd")))
    label = sitk.GetArrayFromImage(image) > 0
    spacing = tuple(image.GetSpacing())[::-1]  # (z, y, x)
    box = tuple(slice(max(int(i.min()) - 4, 0), int(i.max()) + 5) for i in np.nonzero(label))
    truth = np.pad(label[box], 1)
    in_plane = ndimage.generate_binary_structure(3, 1)
    in_plane[0] = in_plane[2] = False
    grown = ndimage.binary_dilation(truth, structure=in_plane, iterations=2)
    return [("lung_nodule_grown", grown, truth, spacing),
            ("lung_nodule_eroded", ndimage.binary_erosion(truth, structure=in_plane), truth, spacing)]


PAIR_MAKERS = {"random": random_pairs, "kits19": _kits_pairs, "lung": _lung_pairs}


@pytest.fixture(scope="module", params=sorted(PAIR_MAKERS))
def pairs(request):
    return PAIR_MAKERS[request.param]()


def sitk_image(mask: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing[::-1]])
    return image


# ---- overlap against ITK and medpy ---------------------------------------------------------------
def test_overlap_agrees_with_itk_label_overlap_measures(pairs):
    for name, pred, truth, spacing in pairs:
        itk = sitk.LabelOverlapMeasuresImageFilter()
        itk.Execute(sitk_image(pred, spacing), sitk_image(truth, spacing))  # source = prediction, target = truth
        ours = m.case_metrics(pred, truth, spacing)
        assert ours["dice"] == pytest.approx(itk.GetDiceCoefficient(), abs=1e-12), name
        assert ours["jaccard"] == pytest.approx(itk.GetJaccardCoefficient(), abs=1e-12), name
        assert ours["voe"] == pytest.approx(1 - itk.GetJaccardCoefficient(), abs=1e-12), name
        # ITK's volume similarity 2(|S|-|T|)/(|S|+|T|) maps to RVD = (|S|-|T|)/|T| = 2vs/(2-vs)
        vs = itk.GetVolumeSimilarity()
        assert ours["rvd"] == pytest.approx(2 * vs / (2 - vs), abs=1e-12), name
        assert ours["recall"] == pytest.approx(1 - itk.GetFalseNegativeError(), abs=1e-12), name
        assert ours["specificity"] == pytest.approx(1 - itk.GetFalsePositiveError(), abs=1e-12), name
        assert ours["precision"] == pytest.approx(1 - itk.GetFalseDiscoveryRate(), abs=1e-12), name
        assert 0 < ours["dice"] < 1, name  # the pairs are neither disjoint nor identical


def test_rvd_sign_follows_over_segmentation(pairs):
    for name, pred, truth, spacing in pairs:
        c = m.confusion(pred, truth)
        assert np.sign(m.rvd(c)) == np.sign(c.pred_voxels - c.truth_voxels), name


# ---- distances against ITK -----------------------------------------------------------------------
def _itk_contour(mask, spacing) -> sitk.Image:
    return sitk.BinaryContour(sitk_image(mask, spacing), fullyConnected=False, backgroundValue=0, foregroundValue=1)


def _itk_directed_surface_distances(a, b, spacing) -> np.ndarray:
    """Distances from a's contour voxels to b's contour, with ITK's Maurer distance map."""
    contour_a = sitk.GetArrayFromImage(_itk_contour(a, spacing)).astype(bool)
    distance = sitk.SignedMaurerDistanceMap(_itk_contour(b, spacing), insideIsPositive=False,
                                            squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance)[contour_a], 0.0)


def test_hausdorff_is_itk_hausdorff_of_the_voxel_sets(pairs):
    for name, pred, truth, spacing in pairs:
        itk = sitk.HausdorffDistanceImageFilter()
        itk.Execute(sitk_image(pred, spacing), sitk_image(truth, spacing))
        assert m.hausdorff(pred, truth, spacing) == pytest.approx(itk.GetHausdorffDistance(), rel=1e-5), name


def test_surface_distances_agree_with_itk_contours_and_maurer_maps(pairs):
    for name, pred, truth, spacing in pairs:
        # the surface is ITK's face-connected binary contour
        np.testing.assert_array_equal(m.surface(pred), sitk.GetArrayFromImage(_itk_contour(pred, spacing)) > 0)
        d_pt = _itk_directed_surface_distances(pred, truth, spacing)
        d_tp = _itk_directed_surface_distances(truth, pred, spacing)
        pooled = np.concatenate([d_pt, d_tp])
        ours = m.surface_distance_metrics(pred, truth, spacing)
        assert ours["mssd"] == pytest.approx(pooled.max(), rel=1e-5), name
        assert ours["assd"] == pytest.approx(pooled.mean(), rel=1e-5), name
        assert ours["hd95"] == pytest.approx(np.percentile(pooled, 95), rel=1e-5), name
        # ITK's Hausdorff filter run on the two contours is the MSSD; its "average" the mean of directed means
        itk = sitk.HausdorffDistanceImageFilter()
        itk.Execute(_itk_contour(pred, spacing), _itk_contour(truth, spacing))
        assert ours["mssd"] == pytest.approx(itk.GetHausdorffDistance(), rel=1e-5), name
        directed_means = (m.surface_distances(pred, truth, spacing).mean()
                          + m.surface_distances(truth, pred, spacing).mean()) / 2
        assert directed_means == pytest.approx(itk.GetAverageHausdorffDistance(), rel=1e-5), name


def test_nested_masks_separate_set_and_surface_hausdorff():
    """Truth inside a larger prediction: the set distance looks one way only, the surfaces both ways."""
    for _, pred, truth, spacing in _kits_pairs()[:1]:
        assert np.all(pred[truth])  # tumour inside kidney
        assert m.directed_hausdorff(truth, pred, spacing) == 0.0
        assert m.hausdorff(pred, truth, spacing) == m.directed_hausdorff(pred, truth, spacing) > 0
        assert m.mssd(pred, truth, spacing) >= m.hausdorff(pred, truth, spacing)


# ---- medpy (a second independent implementation) -----------------------------------------------
def test_agrees_with_medpy(pairs):
    binary = pytest.importorskip("medpy.metric.binary", reason="medpy is not installed (test extra)")
    for name, pred, truth, spacing in pairs:
        ours = m.case_metrics(pred, truth, spacing)
        assert ours["dice"] == pytest.approx(binary.dc(pred, truth), abs=1e-12), name
        assert ours["jaccard"] == pytest.approx(binary.jc(pred, truth), abs=1e-12), name
        assert ours["precision"] == pytest.approx(binary.precision(pred, truth), abs=1e-12), name
        assert ours["recall"] == pytest.approx(binary.recall(pred, truth), abs=1e-12), name
        assert ours["specificity"] == pytest.approx(binary.specificity(pred, truth), abs=1e-12), name
        assert ours["rvd"] == pytest.approx(binary.ravd(pred, truth), abs=1e-12), name
        assert ours["mssd"] == pytest.approx(binary.hd(pred, truth, voxelspacing=spacing), rel=1e-9), name
        assert ours["hd95"] == pytest.approx(binary.hd95(pred, truth, voxelspacing=spacing), rel=1e-9), name
        # medpy's asd is the directed mean; its assd the mean of the two directed means, ours pools them
        d_pt = m.surface_distances(pred, truth, spacing)
        d_tp = m.surface_distances(truth, pred, spacing)
        assert d_pt.mean() == pytest.approx(binary.asd(pred, truth, voxelspacing=spacing), rel=1e-9), name
        assert d_tp.mean() == pytest.approx(binary.asd(truth, pred, voxelspacing=spacing), rel=1e-9), name
        pooled = (d_pt.sum() + d_tp.sum()) / (len(d_pt) + len(d_tp))
        assert ours["assd"] == pytest.approx(pooled, rel=1e-12), name


# ---- AUC -----------------------------------------------------------------------------------------
def _rank_auc(scores, truth) -> float:
    """Mann-Whitney U from scipy's average ranks (independent of the searchsorted implementation)."""
    ranks = rankdata(scores.ravel())
    pos = truth.ravel().astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_rank_formula_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = blob((6, 20, 20), seed)
    noisy = np.clip(truth * 0.3 + rng.random(truth.shape) * 0.8, 0, 1)
    for scores in (noisy, np.round(noisy * 8) / 8):  # continuous, and with many ties
        expected = _rank_auc(scores, truth)
        assert m.auc(scores, truth) == pytest.approx(expected, abs=1e-12)
        assert m.auc(scores, truth, block=97) == pytest.approx(expected, abs=1e-12)  # blocks add up
        assert m.auc(scores, ~truth) == pytest.approx(1 - expected, abs=1e-12)  # smaller class switches
        assert m.auc(1 - scores, truth) == pytest.approx(1 - expected, abs=1e-12)


def test_auc_extremes_and_undefined():
    truth = blob((4, 10, 10), 3)
    assert m.auc(truth.astype(np.float32), truth) == 1.0
    assert m.auc(np.full(truth.shape, 0.7), truth) == 0.5
    assert math.isnan(m.auc(np.ones((3, 3)), np.zeros((3, 3))))


def test_pooled_counts_are_lits_global_metrics():
    pooled = m.PooledCounts()
    preds, truths, scores_all = [], [], []
    for seed in range(3):
        truth = blob((5, 16, 18), seed)
        scores = (np.round(np.clip(truth * 0.4 + np.random.default_rng(seed).random(truth.shape) * 0.7, 0, 1) * 255)
                  / 255)  # on the histogram's grid: the binned AUC is exact
        pred = scores >= 0.5
        pooled.add(pred, truth, scores)
        preds.append(pred), truths.append(truth), scores_all.append(scores)
    glob = pooled.metrics()
    allp, allt = np.concatenate(preds), np.concatenate(truths)
    assert glob["dice"] == pytest.approx(2 * (allp & allt).sum() / (allp.sum() + allt.sum()), abs=1e-12)
    assert glob["cases"] == 3 and glob["tp"] == int((allp & allt).sum())
    assert glob["auc"] == pytest.approx(_rank_auc(np.concatenate(scores_all), allt), abs=1e-12)
    # pooled Dice is not the mean of per-case Dice (large cases weigh more) -- but lies within their range
    per_case = [m.dice(m.confusion(p, t)) for p, t in zip(preds, truths)]
    assert min(per_case) <= glob["dice"] <= max(per_case)


# ---- empty masks: the documented policy ----------------------------------------------------------
def test_both_empty_is_perfect_agreement():
    empty = np.zeros((3, 8, 8), bool)
    row = m.case_metrics(empty, empty, SPACING)
    assert row["empty"] == "both"
    for key in ("dice", "jaccard", "precision", "recall", "f1", "specificity", "accuracy"):
        assert row[key] == 1.0, key
    for key in ("voe", "rvd", "hausdorff", "hd95", "assd", "mssd"):
        assert row[key] == 0.0, key
    assert math.isnan(row["auc"])


def test_one_empty_gives_zero_overlap_and_infinite_distances():
    empty = np.zeros((3, 8, 8), bool)
    some = empty.copy()
    some[1, 2:5, 2:5] = True
    missed = m.case_metrics(empty, some, SPACING)  # nothing predicted
    assert missed["empty"] == "prediction"
    assert (missed["dice"], missed["jaccard"], missed["precision"], missed["recall"], missed["voe"]) == (0, 0, 0, 0, 1)
    assert missed["rvd"] == -1.0
    assert all(math.isinf(missed[k]) for k in m.DISTANCE_KEYS)
    invented = m.case_metrics(some, empty, SPACING)  # a lesion where there is none
    assert invented["empty"] == "truth"
    assert (invented["dice"], invented["precision"], invented["recall"]) == (0, 0, 0)
    assert math.isinf(invented["rvd"]) and math.isinf(invented["hausdorff"])
    assert invented["specificity"] == pytest.approx(1 - 9 / 192)


def test_summarise_reports_and_excludes_non_finite_values():
    rows = [{"dice": 0.5, "hausdorff": 2.0}, {"dice": 0.7, "hausdorff": math.inf},
            {"dice": 0.9, "hausdorff": 4.0}, {"dice": 0.0, "hausdorff": math.nan}]
    summary = m.summarise(rows, keys=("dice", "hausdorff"))
    assert summary["dice"]["mean"] == pytest.approx(0.525) and summary["dice"]["n"] == 4
    assert summary["dice"]["median"] == pytest.approx(0.6) and summary["dice"]["n_empty"] == 0
    assert summary["hausdorff"] == {"mean": 3.0, "std": 1.0, "median": 3.0, "min": 2.0, "max": 4.0,
                                    "n": 2, "n_empty": 2}
    assert m.empty_counts([{"empty": "none"}, {"empty": "both"}, {"empty": "none"}]) == \
        {"none": 2, "truth": 0, "prediction": 0, "both": 1}


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="differs from truth shape"):
        m.confusion(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        m.hausdorff(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 0.0, 1.0))


# ---- per slice ------------------------------------------------------------------------------------
def test_slice_metrics_are_2d_case_metrics_with_in_plane_spacing():
    pred, truth = blob((5, 30, 30), 7), blob((5, 30, 30), 8)
    pred[2] = False  # one slice with an empty prediction
    rows = m.slice_metrics(pred, truth, SPACING)
    assert [r["z"] for r in rows] == list(range(pred.shape[0]))
    for z, row in enumerate(rows):
        expected = m.case_metrics(pred[z], truth[z], SPACING[1:])
        for key in m.METRIC_KEYS:
            if key != "auc":
                assert row[key] == pytest.approx(expected[key], nan_ok=True), (z, key)
    assert rows[2]["empty"] in ("prediction", "both")


# ---- properties (hypothesis) ----------------------------------------------------------------------
masks = st.integers(min_value=0, max_value=2**31 - 1).map(lambda seed: blob((4, 9, 10), seed, smooth=1.0))
spacings = st.tuples(*[st.floats(min_value=0.3, max_value=5.0)] * 3)


@settings(max_examples=60, deadline=None)
@given(a=masks, b=masks, spacing=spacings)
def test_properties_symmetry_bounds_and_dice_jaccard(a, b, spacing):
    ab, ba = m.case_metrics(a, b, spacing), m.case_metrics(b, a, spacing)
    for key in ("dice", "jaccard", "accuracy", "hausdorff", "hd95", "assd", "mssd"):
        assert ab[key] == pytest.approx(ba[key], nan_ok=True), key
    assert ab["precision"] == pytest.approx(ba["recall"])
    j = ab["jaccard"]
    assert ab["dice"] == pytest.approx(2 * j / (1 + j))
    for key in ("dice", "jaccard", "precision", "recall", "accuracy", "voe"):
        assert 0.0 <= ab[key] <= 1.0, key
    if ab["empty"] == "none":
        assert 0.0 <= ab["assd"] <= ab["mssd"] and ab["hd95"] <= ab["mssd"]
        assert (ab["hausdorff"] == 0) == np.array_equal(a, b)
        assert (ab["mssd"] == 0) == np.array_equal(m.surface(a), m.surface(b))


@settings(max_examples=60, deadline=None)
@given(start=st.tuples(st.integers(2, 5), st.integers(2, 5), st.integers(2, 5)),
       size=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
       axis=st.integers(0, 2), k=st.integers(1, 6), spacing=spacings)
def test_translation_by_k_voxels_gives_k_times_spacing(start, size, axis, k, spacing):
    box = np.zeros((18, 18, 18), bool)
    box[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    moved = np.roll(box, k, axis=axis)
    assert m.hausdorff(moved, box, spacing) == pytest.approx(k * spacing[axis])
    assert m.mssd(moved, box, spacing) == pytest.approx(k * spacing[axis])
    assert m.case_metrics(box, box, spacing)["mssd"] == 0.0
    overlap = max(size[axis] - k, 0) / size[axis]
    assert m.dice(m.confusion(moved, box)) == pytest.approx(overlap)
