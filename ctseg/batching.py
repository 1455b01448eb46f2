"""Whole training batches: read in one store call, shipped as uint8, finished on the device.

The DataLoader's unit is the batch, not the item (``ctseg.data.make_loader``): each
worker turns one list of item keys from the batch sampler into one dict through
``SliceDataset.raw_batch`` (one ``read_slices`` call for the batch's slices, crops that
change nothing skipped, images and binary targets left as uint8: a 512^2 batch of 16
crosses the process boundary as 20 MB instead of 48 MB of float32). Then
:func:`finish_batch`, in the training process, moves the batch to the device, converts
to float in [0, 1] and applies each item's augmentation draw there (the GPU when training
on one). On the CPU the result is bit for bit the batch of per-item ``SliceDataset[key]``
(the reference path, tests/ctseg/test_batching.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ctseg.augment import augment_batch


class BatchReader(torch.utils.data.Dataset):
    """A Dataset whose items are whole raw batches of ``dataset`` (keys: a list of ItemKeys)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, keys: Sequence) -> dict:
        return self.dataset.raw_batch(keys)

    def open(self) -> None:
        """(Re)open the store in this process: called in each DataLoader worker."""
        self.dataset.open()


def finish_batch(batch: dict, device: torch.device | str, *, size: int, soft_target: bool) -> dict:
    """A raw batch (SliceDataset.raw_batch) on ``device`` as the model sees it: ``image`` float32
    (B, C', size, size) in [0, 1], ``target`` float32 (B, labels, size, size), ``index`` int64."""
    non_blocking = torch.device(device).type == "cuda"
    image = batch["image"].to(device, non_blocking=non_blocking).float().div_(255.0)
    target = batch["target"].to(device, non_blocking=non_blocking).float()
    if batch.get("augment") is not None:
        image, target = augment_batch(image, target, size, batch["augment"], soft_target)
    return {"image": image.contiguous(), "target": target.contiguous(),
            "index": batch["index"].to(device, non_blocking=non_blocking)}
