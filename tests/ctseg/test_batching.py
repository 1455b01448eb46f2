"""The batch path (ctseg.batching) gives, bit for bit on the CPU, the batches of the per-item reference path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctprep.store import SliceStore
from ctseg.batching import finish_batch
from ctseg.config import AugmentConfig
from ctseg.data import SliceDataset, make_loader, select_index
from ctseg.samplers import ShuffledBatches


def reference(ds: SliceDataset, keys) -> dict:
    """What the loader delivered before: per-item SliceDataset[key], stacked by default_collate."""
    return torch.utils.data.default_collate([ds[k] for k in keys])


def finished(ds: SliceDataset, raw: dict) -> dict:
    return finish_batch(raw, "cpu", size=ds.size, soft_target=any(ds.soft.values()))


CASES = [dict(crop="lesion", augment=AugmentConfig(), context=1),
         dict(crop="random", augment=AugmentConfig(intensity=0.2, rotate_deg=30)),
         dict(crop="center", channels=(1,)),
         dict(crop="resize", augment=AugmentConfig()),
         dict(crop="center", size=64)]  # the whole slice: the crop that changes nothing


@pytest.mark.parametrize("options", CASES, ids=[f"{o['crop']}-{i}" for i, o in enumerate(CASES)])
def test_batches_equal_the_per_item_path_bit_for_bit(phantom_store, options):
    options = {"size": 32, **options}
    index = select_index(SliceStore.open(phantom_store), split="all")
    ds = SliceDataset(phantom_store, index, targets=("tumour",), seed=7, **options)
    sampler = ShuffledBatches(len(ds), batch_size=4, seed=7, steps_per_epoch=3)
    sampler.set_epoch(2)
    raw_batches = list(make_loader(ds, sampler, workers=0))
    assert len(raw_batches) == 3
    for keys, raw in zip(sampler, raw_batches):
        assert raw["image"].dtype == (torch.float32 if options["crop"] == "resize" else torch.uint8)
        got, want = finished(ds, raw), reference(ds, keys)
        assert got["image"].dtype == want["image"].dtype == torch.float32
        assert torch.equal(got["image"], want["image"]), "images differ"
        assert torch.equal(got["target"], want["target"]), "targets differ"
        assert torch.equal(got["index"], want["index"])
    assert any(b["target"].sum() > 0 for b in raw_batches) or options["crop"] != "lesion"


def test_soft_targets_ship_as_float_and_match(phantom_store, tmp_path):
    import shutil

    path = tmp_path / "store"
    shutil.copytree(phantom_store, path)
    store = SliceStore.open(path, mode="a")
    for case in store.case_ids():
        tumour = store.read_case(case, labels=["tumour"]).labels["tumour"]
        soft = np.clip(tumour.astype(np.float32) * 0.7 + np.linspace(0, 0.2, tumour.shape[-1], dtype=np.float32), 0, 1)
        store.write_label(case, "soft_tumour", soft)
    index = select_index(SliceStore.open(path), split="all")
    ds = SliceDataset(path, index, targets=("soft_tumour",), size=32, crop="lesion", augment=AugmentConfig(), seed=1)
    keys = [(i, (1, 0, 0, 0, p)) for p, i in enumerate(range(0, len(ds), 7))]
    raw = ds.raw_batch(keys)
    assert raw["target"].dtype == torch.float32
    got, want = finished(ds, raw), reference(ds, keys)
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["target"], want["target"])
