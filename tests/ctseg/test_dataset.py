"""ctseg.dataset.StoreDataset: the store from your own training code (plain DataLoader, MONAI, TorchIO)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctprep.store import SliceStore
from ctseg.dataset import StoreDataset


def test_items_hold_image_label_and_geometry(phantom_store):
    data = StoreDataset(phantom_store, split="all")
    store = SliceStore.open(phantom_store)
    assert len(data) == len(store.index())
    item = data[3]
    case, z = item["case_id"], item["z"]
    raw = store.read_case(case, labels=["tumour"])
    assert item["image"].dtype == torch.float32 and item["image"].shape == (2, 64, 64)
    assert torch.equal(item["image"], torch.from_numpy(raw.image[z]).float() / 255)
    assert torch.equal(item["label"][0], torch.from_numpy(raw.labels["tumour"][z]).float())
    assert item["label_names"] == ["tumour"]
    record = store.record(case)
    assert item["spacing"].tolist() == list(record.geometry.spacing)
    # Pixel (y, x) of this slice lies at affine @ (x, y, 0, 1): its z is the slice's z_mm.
    world = item["affine"] @ np.array([5.0, 7.0, 0.0, 1.0])
    assert world[2] == pytest.approx(item["z_mm"]) == pytest.approx(record.z_positions[z])
    expected = record.geometry.affine_lps() @ np.array([5.0, 7.0, record.slice_indices[z], 1.0])
    assert np.allclose(world, expected)


def test_plain_dataloader_with_a_transform(phantom_store):
    def flip(item: dict) -> dict:
        return {**item, "image": item["image"].flip(-1), "label": item["label"].flip(-1), "flipped": True}

    plain = StoreDataset(phantom_store, split="train", lesion_only=True)
    data = StoreDataset(phantom_store, split="train", lesion_only=True, transform=flip)
    store = SliceStore.open(phantom_store)
    assert len(data) > 2 and {store.record(plain[i]["case_id"]).split for i in range(len(plain))} == {"train"}
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 2, 64, 64) and batch["label"].shape == (2, 1, 64, 64)
    assert batch["spacing"].shape == (2, 3) and batch["affine"].shape == (2, 4, 4)
    assert batch["flipped"].tolist() == [True, True]
    assert torch.equal(batch["image"][0], plain[0]["image"].flip(-1))
    assert batch["label"].sum() > 0  # lesion_only: every slice has tumour


def test_dataloader_workers_open_their_own_store(phantom_store):
    data = StoreDataset(phantom_store, split="all", context=1)
    assert data[0]["image"].shape == (6, 64, 64)  # 3 slices x 2 windows
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=1)
    batches = list(loader)
    assert sum(len(b["z"]) for b in batches) == len(data)


def test_unknown_label_is_one_clear_error(phantom_store):
    from ctseg.errors import ConfigError

    with pytest.raises(ConfigError, match="no case has label"):
        StoreDataset(phantom_store, labels=["spleen"])


def test_monai_cache_dataset(phantom_store):
    monai = pytest.importorskip("monai", reason="MONAI is optional (not a lesionkit dependency)")
    from monai.transforms import Compose, RandFlipd, ScaleIntensityd

    data = StoreDataset(phantom_store, split="all", lesion_only=True)
    cached = monai.data.CacheDataset(data, transform=Compose([ScaleIntensityd(keys="image"),
                                                              RandFlipd(keys=["image", "label"], prob=1.0,
                                                                        spatial_axis=1)]),
                                     cache_rate=1.0, num_workers=0, progress=False)
    item = cached[0]
    assert tuple(item["image"].shape) == (2, 64, 64)
    assert torch.equal(torch.as_tensor(item["label"]), data[0]["label"].flip(-1))
    batch = next(iter(monai.data.DataLoader(cached, batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 2, 64, 64)


def test_torchio_pipeline(phantom_store):
    tio = pytest.importorskip("torchio", reason="TorchIO is optional (not a lesionkit dependency)")

    flip = tio.Compose([tio.RandomFlip(axes=(0,), flip_probability=1.0)])

    def as_subject(item: dict) -> dict:
        # TorchIO images are (C, W, H, D): a slice is one voxel deep; its affine is RAS.
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ item["affine"]
        subject = tio.Subject(image=tio.ScalarImage(tensor=item["image"].permute(0, 2, 1)[..., None], affine=ras),
                              label=tio.LabelMap(tensor=item["label"].permute(0, 2, 1)[..., None], affine=ras))
        out = flip(subject)
        return {**item, "image": out["image"].data[..., 0].permute(0, 2, 1),
                "label": out["label"].data[..., 0].permute(0, 2, 1).float()}

    plain = StoreDataset(phantom_store, split="all", lesion_only=True)
    data = StoreDataset(phantom_store, split="all", lesion_only=True, transform=as_subject)
    assert torch.equal(data[0]["label"], plain[0]["label"].flip(-1))
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert batch["image"].shape == (2, 2, 64, 64)
