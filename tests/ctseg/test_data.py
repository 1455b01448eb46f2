"""The data pipeline: items against the store's own arrays, split and lesion filters, samplers, augmentation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctprep.store import SliceStore
from ctseg.config import AugmentConfig, TrainConfig
from ctseg.errors import ConfigError
from ctseg.augment import AugmentParams, augment_pair, geometric_transform
from ctseg.data import SliceDataset, make_loader, select_index, training_data
from ctseg.samplers import BalancedBatches, PatientBatches, ShuffledBatches


def dataset(store_path, *, split="all", lesion_only=False, **kwargs) -> SliceDataset:
    index = select_index(SliceStore.open(store_path), split=split, lesion_only=lesion_only)
    kwargs.setdefault("targets", ("tumour",))
    kwargs.setdefault("size", 64)
    kwargs.setdefault("crop", "center")
    return SliceDataset(store_path, index, **kwargs)


def test_item_is_the_stored_slice_with_clamped_context(phantom_store):
    ds = dataset(phantom_store, context=1)
    case = SliceStore.open(phantom_store).read_case("volume-1", labels=["tumour"])
    rows = np.flatnonzero((np.asarray(ds.cases) == "volume-1"))
    first, last = rows[np.argmin(ds.rows[rows])], rows[np.argmax(ds.rows[rows])]
    item = ds[int(first)]
    assert item["image"].shape == (6, 64, 64) and item["target"].shape == (1, 64, 64)
    expected = np.concatenate([case.image[0], case.image[0], case.image[1]]) / 255.0  # z-1 clamps to 0
    np.testing.assert_allclose(item["image"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(item["target"][0].numpy(), case.labels["tumour"][0])
    top = ds[int(last)]["image"].numpy()
    z = ds.rows[last]
    np.testing.assert_allclose(top, np.concatenate([case.image[z - 1], case.image[z], case.image[z]]) / 255.0,
                               atol=1e-6)


def test_channel_selection_keeps_the_chosen_window(phantom_store):
    ds = dataset(phantom_store, channels=(1,))
    item = ds[3]
    image = SliceStore.open(phantom_store).read_slices([(ds.cases[3], int(ds.rows[3]))]).image
    np.testing.assert_allclose(item["image"].numpy(), image[0, 1:2] / 255.0, atol=1e-6)
    assert ds.in_channels == 1


def test_split_and_lesion_filters(phantom_store):
    store = SliceStore.open(phantom_store)
    splits = {c: store.record(c).split for c in store.case_ids()}
    for split in ("train", "val", "test"):
        index = select_index(store, split=split)
        assert set(index.rows["case"].tolist()) == {c for c, s in splits.items() if s == split}
    lesion = dataset(phantom_store, lesion_only=True)
    assert len(lesion) == int(store.index().has_lesion.sum()) > 0
    for i in range(len(lesion)):
        assert lesion[i]["target"].sum() > 0  # centre crop of a 64x64 slice is the whole slice
    with pytest.raises(ConfigError, match="no case has label"):
        select_index(store, split="all", targets=("spleen",))


def test_soft_target_is_kept_as_float(phantom_store, tmp_path):
    path = tmp_path / "soft.zarr"
    shutil.copytree(phantom_store, path)
    store = SliceStore.open(path, mode="a")
    for case_id in store.case_ids():
        truth = store.read_case(case_id, labels=["tumour"]).labels["tumour"]
        store.write_label(case_id, "soft", (truth * 0.75).astype(np.float32))
    ds = dataset(path, targets=("soft",), lesion_only=True)
    values = np.unique(ds[0]["target"].numpy())
    assert set(values.tolist()) <= {0.0, 0.75} and 0.75 in values


def test_lesion_crop_contains_the_lesion(phantom_store):
    ds = dataset(phantom_store, lesion_only=True, size=32, crop="lesion", lesion_jitter=0.25)
    for i in range(len(ds)):
        item = ds[(i, (7, i))]
        assert item["image"].shape == (2, 32, 32)
        assert item["target"].sum() > 0


def test_resize_mode_gives_model_size(phantom_store):
    ds = dataset(phantom_store, size=32, crop="resize")
    item = ds[0]
    assert item["image"].shape == (2, 32, 32) and item["target"].shape == (1, 32, 32)


def test_items_do_not_depend_on_workers(phantom_store):
    config = TrainConfig(model="unet", store=str(phantom_store), target=("tumour",), size=32, batch_size=4,
                         train_split="all", steps_per_epoch=3, seed=3)
    ds, sampler, loader = training_data(config)
    sampler.set_epoch(1)
    serial = [b["image"] for b in loader]
    parallel = [b["image"] for b in make_loader(ds, sampler, workers=2)]
    assert len(serial) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


# ---- samplers --------------------------------------------------------------------------------------
def flat(batches) -> list[int]:
    return [i for batch in batches for i, _ in batch]


def test_shuffled_covers_every_slice_and_resumes_mid_epoch():
    sampler = ShuffledBatches(10, batch_size=3, seed=1)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert sorted(flat(batches)) == list(range(10)) and len(batches) == 4
    sampler.set_epoch(2, start_batch=2)
    assert list(sampler) == batches[2:]
    sampler.set_epoch(3)
    assert flat(list(sampler)) != flat(batches)  # a new order each epoch


def test_ranks_take_disjoint_batches_of_one_plan():
    whole = ShuffledBatches(12, batch_size=2, seed=5)
    ranks = [ShuffledBatches(12, batch_size=2, seed=5, rank=r, world=2) for r in range(2)]
    plan = [[i for i, _ in b] for b in whole]
    assert [[i for i, _ in b] for b in ranks[0]] == plan[0::2]
    assert [[i for i, _ in b] for b in ranks[1]] == plan[1::2]


def test_balanced_draws_the_asked_lesion_share():
    has_lesion = np.zeros(100, dtype=bool)
    has_lesion[:5] = True
    sampler = BalancedBatches(has_lesion, fraction=0.5, batch_size=10, seed=0, steps_per_epoch=40)
    drawn = np.asarray(flat(list(sampler)))
    share = has_lesion[drawn].mean()
    assert len(drawn) == 400 and 0.42 < share < 0.58


def test_patient_batches_are_consecutive_slices_of_one_case():
    cases = ["a"] * 7 + ["b"] * 5 + ["c"] * 1
    rows = np.array([3, 0, 1, 2, 6, 5, 4, 0, 1, 2, 3, 4, 0])
    sampler = PatientBatches(cases, rows, batch_size=3, seed=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = []
        for batch in sampler:
            idx = [i for i, _ in batch]
            assert len({cases[i] for i in idx}) == 1 and 2 <= len(idx) <= 3
            zs = rows[idx]
            assert list(zs) == list(range(zs[0], zs[0] + len(zs)))  # consecutive, ascending
            seen += idx
        assert len(seen) == len(set(seen))
        assert "c" not in {cases[i] for i in seen}  # a single slice cannot make a batch


def test_balanced_patient_batches_show_the_lesion_runs_as_often_as_asked():
    """A 3-slice nodule in a 48-slice case is in one run of six; balanced, half the runs hold it."""
    cases, rows = ["a"] * 48, np.arange(48)
    has_lesion = np.isin(rows, [32, 33, 34])
    shares = []
    for balanced in ({}, {"has_lesion": has_lesion, "fraction": 0.5}):
        sampler = PatientBatches(cases, rows, batch_size=8, seed=0, **balanced)
        hits = runs = 0
        for epoch in range(200):
            sampler.set_epoch(epoch)
            for batch in sampler:
                zs = rows[[i for i, _ in batch]]
                assert list(zs) == list(range(zs[0], zs[0] + len(zs)))  # still consecutive, ascending
                hits, runs = hits + bool(has_lesion[zs].any()), runs + 1
        shares.append(hits / runs)
    assert shares[0] < 0.25 and 0.45 < shares[1] < 0.55, shares


# ---- augmentation ----------------------------------------------------------------------------------
def test_identity_augmentation_is_the_centre_crop():
    x = torch.arange(2 * 20 * 20, dtype=torch.float32).reshape(2, 20, 20)
    assert torch.equal(geometric_transform(x, AugmentParams(), 12, "nearest"), x[:, 4:16, 4:16])
    # bilinear samples pixel centres exactly, up to float rounding of the grid
    assert torch.allclose(geometric_transform(x, AugmentParams(), 12, "bilinear"), x[:, 4:16, 4:16], atol=1e-3)


def test_flip_flips():
    x = torch.rand(1, 8, 8)
    assert torch.allclose(geometric_transform(x, AugmentParams(flip_x=True), 8, "nearest"), x.flip(-1))
    assert torch.allclose(geometric_transform(x, AugmentParams(flip_y=True), 8, "nearest"), x.flip(-2))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cy=st.integers(14, 34), cx=st.integers(14, 34), ry=st.integers(3, 9),
       rx=st.integers(3, 9))
def test_augmentation_keeps_image_and_label_aligned(seed, cy, cx, ry, rx):
    """A bright ellipse in the image must land where its label lands, whatever the draw."""
    yy, xx = np.mgrid[:48, :48]
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)
    image = torch.from_numpy(np.stack([mask * 0.8 + 0.1, 1 - mask * 0.5]))
    params = AugmentParams.draw(AugmentConfig(rotate_deg=10, scale=(0.9, 1.1), shift=0.05, intensity=0.0),
                                np.random.default_rng(seed))
    out_image, out_label = augment_pair(image, torch.from_numpy(mask)[None], 32, params, soft_target=False)
    label = out_label[0] > 0.5
    seen = out_image[0] > 0.5
    assert set(torch.unique(out_label).tolist()) <= {0.0, 1.0}
    # Image (bilinear) and label (nearest) may differ only on the label's one-pixel boundary band.
    as_float = label.float()[None, None]
    dilated = torch.nn.functional.max_pool2d(as_float, 3, 1, 1)[0, 0] > 0
    eroded = -torch.nn.functional.max_pool2d(-as_float, 3, 1, 1)[0, 0] > 0
    boundary = dilated & ~eroded
    assert not ((label ^ seen) & ~boundary).any()
    if label.sum() > 10:
        ys, xs = torch.nonzero(label, as_tuple=True)
        ys2, xs2 = torch.nonzero(seen, as_tuple=True)
        assert abs(ys.float().mean() - ys2.float().mean()) < 1 and abs(xs.float().mean() - xs2.float().mean()) < 1


def test_intensity_jitter_changes_the_image_only():
    image, label = torch.full((1, 8, 8), 0.5), torch.ones(1, 8, 8)
    out_image, out_label = augment_pair(image, label, 8, AugmentParams(brightness=0.1, contrast=0.2), False)
    assert torch.allclose(out_image, torch.full((1, 8, 8), 0.6)) and torch.equal(out_label, label)
