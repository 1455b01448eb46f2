"""The slice store as a dataset for your own training code: :class:`StoreDataset`.

A thin public layer over :class:`ctseg.data.SliceDataset` (which ctseg's own training
uses): it reads one stored slice per item, whole (no crop, no augmentation: those are
yours, through ``transform``), and returns a plain dict with MONAI-style keys:

==============  =====================================================================
``image``       float32 tensor (C, H, W) in [0, 1]: the store's windows as channels
                (C = windows x (2 * context + 1), slice-major), uint8 / 255
``label``       float32 tensor (L, H, W) in [0, 1]: one channel per name in ``labels``
                (binary labels 0/1, soft masks as stored)
``label_names`` list of the label names, in channel order
``case_id``     the store's case id (never a patient name); ``z`` the stored row
``spacing``     float64 array (3,): (z, y, x) voxel size in mm of the stored grid
``affine``      float64 array (4, 4): voxel (x, y, 0) of this slice -> LPS mm
                (DICOM/SimpleITK world; the slice's own origin, so ``affine @ [x, y, 0, 1]``
                is where pixel (y, x) lies)
``z_mm``        the slice's superior coordinate in mm
==============  =====================================================================

Convention: everything ``torch.utils.data.default_collate`` can batch, so a plain
DataLoader works; ``transform`` takes the dict and returns the dict (MONAI dictionary
transforms, a TorchIO wrapper or a plain function). The store is opened lazily in each
DataLoader worker (never pickled). Geometry comes from the case record
(:class:`ctprep.geometry.Geometry`); see docs/store-format.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ctprep.store import SliceStore
from ctseg.data import SliceDataset, select_index
from ctseg.errors import ConfigError

Transform = Callable[[dict], dict]


def slice_affine(geometry, stored_row: int) -> np.ndarray:
    """4x4 LPS affine of one slice: voxel (x, y, 0, 1) of grid row ``stored_row`` -> mm."""
    affine = geometry.affine_lps()
    affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * stored_row
    return affine


class StoreDataset(torch.utils.data.Dataset):
    """Stored slices of one split as MONAI-style dicts; see the module docstring.

    ``store``: a store path or URL. ``split``: train, val, test or all. ``labels``: label
    names (default: the store's lesion label). ``cases``: only these case ids.
    ``lesion_only``: only slices with a lesion. ``channels``: window channels to keep
    (default all). ``context``: K neighbouring slices each side as more channels.
    ``transform``: called on each item dict.
    """

    def __init__(self, store: str | Path, *, split: str = "train", labels: Sequence[str] | None = None,
                 cases: Sequence[str] | None = None, lesion_only: bool = False,
                 channels: Sequence[int] | None = None, context: int = 0, transform: Transform | None = None):
        opened = SliceStore.open(store)
        names = tuple(labels) if labels is not None else _lesion_label(opened)
        index = select_index(opened, split=split, lesion_only=lesion_only, cases=cases, targets=names)
        size = int(opened.record(str(index.rows["case"][0])).geometry.shape[1]) if len(index) else 1
        self.slices = SliceDataset(store, index, targets=names, size=size, crop="resize", channels=channels,
                                   context=context)
        self.label_names = list(names)
        self.transform = transform
        self._records = {c: opened.record(c) for c in set(self.slices.cases)}

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= int(i) < len(self):
            raise IndexError(f"item {i} of a dataset of {len(self)} slices")
        image, label = self.slices.read(int(i))
        case, z = self.slices.cases[int(i)], int(self.slices.rows[int(i)])
        record = self._records[case]
        item = {"image": torch.from_numpy(image).float().div_(255.0), "label": torch.from_numpy(label),
                "label_names": list(self.label_names), "case_id": case, "z": z,
                "spacing": np.asarray(record.geometry.spacing, dtype=np.float64),
                "affine": slice_affine(record.geometry, record.slice_indices[z]),
                "z_mm": float(record.z_positions[z])}
        return self.transform(item) if self.transform is not None else item


def _lesion_label(store: SliceStore) -> tuple[str, ...]:
    names = sorted({r.lesion_label for r in store.records() if r.lesion_label})
    if not names:
        raise ConfigError(f"{store.path}: no case has a lesion label; name the labels to read (labels=[...])")
    return tuple(names[:1])


__all__ = ["StoreDataset", "slice_affine"]
