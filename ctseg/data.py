"""Training data straight from a slice store: a torch Dataset, batch samplers and the DataLoader.

* :class:`SliceDataset` reads a batch's stored slices with one ``SliceStore.read_slices``
  (``__getitems__``; no copy of the store): each item's windows as channels, optionally
  ``context`` neighbouring slices each side as more channels (clamped at the ends of the case), and the target
  label(s) as float masks in [0, 1] (binary uint8 labels become 0/1, float32 soft
  masks are kept). It crops ``size`` x ``size`` (a mix of lesion-centred crops, crops
  elsewhere in the body and, optionally, hard negatives: ctseg.crops), at random or at
  the centre, or resizes the whole slice, then augments with torch (flips, rotation,
  scaling, shift, intensity jitter) using one affine grid for image and target.
* Batch samplers (ctseg.samplers) decide which slices form each batch, with a seed per
  item, so runs are reproducible and resumable whatever the number of loader workers.
* Each DataLoader worker opens its own ``SliceStore`` (``worker_init_fn``); the store
  object is never pickled into workers.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ctprep.store import SliceIndex, SliceStore, is_url
from ctseg.config import AugmentConfig, TrainConfig
from ctseg.augment import AugmentParams, augment_pair
from ctseg.batching import BatchReader
from ctseg.crops import crop_centre, crop_kind, crop_padded
from ctseg.errors import ConfigError
from ctseg.folds import fold_cases
from ctseg.samplers import BatchPlan, ItemKey, make_batch_sampler



# ---- which slices -----------------------------------------------------------------------------
def select_index(store: SliceStore, *, split: str, lesion_only: bool = False,
                 cases: Sequence[str] | None = None, targets: Sequence[str] = ()) -> SliceIndex:
    """The store's slice index filtered by split ("all" for every split, "fold=I"/"fold!=I": ctseg.folds), lesion and cases.

    Cases lacking one of the ``targets`` labels are left out (a soft mask may exist for
    some cases only); naming a label that no case has is an error.
    """
    folded = fold_cases(store, split)  # "fold=I" / "fold!=I" (ctseg.folds), else None
    index = store.index(split=None if split == "all" or folded is not None else split, lesion_only=lesion_only)
    if folded is not None:
        index = index.filter(cases=folded)
    if cases is not None:
        unknown = sorted(set(cases) - set(store.case_ids()))
        if unknown:
            raise ConfigError(f"{store.path}: cases not in the store: {', '.join(unknown)}")
        index = index.filter(cases=cases)
    if targets:
        present = [c for c in sorted(set(index.rows["case"].tolist()))
                   if set(targets) <= set(store.label_names(c))]
        if not present and len(index):
            some = store.label_names(str(index.rows["case"][0]))
            raise ConfigError(f"{store.path}: no case has label(s) {', '.join(targets)} "
                              f"(case {index.rows['case'][0]} has: {', '.join(some)})")
        index = index.filter(cases=present)
    return index


def context_rows(z: int, num_slices: int, context: int) -> list[int]:
    """Stored rows z-K .. z+K, clamped to the case (the end slice repeats)."""
    return [min(max(z + d, 0), num_slices - 1) for d in range(-context, context + 1)]


def stack_inputs(image: np.ndarray, channels: Sequence[int] | None) -> np.ndarray:
    """(slices, window, y, x) -> (slices*windows, y, x): slice-major, the order every model sees."""
    if channels is not None:
        image = image[:, list(channels)]
    return image.reshape(-1, *image.shape[2:])


def target_array(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Label slices (each (y, x), uint8 0/1 or float32 soft) -> float32 (labels, y, x) in [0, 1]."""
    out = [(lab > 0).astype(np.float32) if lab.dtype == np.uint8 else np.clip(lab, 0, 1).astype(np.float32)
           for lab in labels]
    return np.stack(out)


# ---- the dataset -------------------------------------------------------------------------------
@contextlib.contextmanager
def _one_thread():
    """Per-item tensor work on one thread: these ops are tiny, and on a busy machine torch's
    intra-op threads spend more time waiting for each other than computing (measured 5x slower
    with 2 threads). Workers already run single-threaded (_worker_init); this covers workers=0.
    """
    if torch.utils.data.get_worker_info() is not None or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)



class SliceDataset(torch.utils.data.Dataset):
    """Slices of a store as model inputs; see the module docstring.

    Items are ``{"image": float32 (C', size, size) in [0, 1], "target": float32 (labels,
    size, size), "index": int}``; ``C'`` = (2 * context + 1) * windows.
    """

    def __init__(self, store_path: str | Path, index: SliceIndex, *, targets: Sequence[str],
                 size: int, crop: str = "lesion", channels: Sequence[int] | None = None, context: int = 0,
                 augment: AugmentConfig | None = None, lesion_jitter: float = 0.25, seed: int = 0,
                 lesion_crops: float = 1.0, hard_negatives: float = 0.0):
        self.store_path = store_path if is_url(store_path) else Path(store_path)  # a URL stays a URL
        self.index = index
        self.targets = tuple(targets)
        self.size, self.crop, self.context, self.seed = size, crop, context, seed
        self.channels = tuple(channels) if channels is not None else None
        self.augment = augment if augment is not None and augment.enabled else None
        self.lesion_jitter, self.lesion_crops, self.hard_negatives = lesion_jitter, lesion_crops, hard_negatives
        self.hard: dict[int, np.ndarray] = {}  # item -> (n, 2) pixels where the model was wrong (ctseg.crops)
        self.cases = [str(c) for c in index.rows["case"]]
        self.rows = index.rows["z"].astype(np.int64)
        self.has_lesion = index.has_lesion.copy()
        self._store: SliceStore | None = None
        store = self.store
        self.num_slices = {c: store.record(c).num_slices for c in set(self.cases)}
        self.soft = {t: self._label_dtype(store, t) == np.float32 for t in self.targets} if self.cases else {}
        self.margin = int(math.ceil(size * 0.25)) if self.augment else 0

    @classmethod
    def from_config(cls, config: TrainConfig, index: SliceIndex, *, train: bool) -> "SliceDataset":
        return cls(config.store, index, targets=config.target, size=config.size, crop=config.crop,
                   channels=config.channels, context=config.context, augment=config.augment if train else None,
                   lesion_jitter=config.lesion_jitter if train else 0.0, seed=config.seed,
                   lesion_crops=config.lesion_crops if train else 1.0,
                   hard_negatives=config.hard_negatives if train else 0.0)

    def _label_dtype(self, store: SliceStore, name: str) -> np.dtype:
        return store.read_slices([(self.cases[0], int(self.rows[0]))], labels=[name]).labels[name].dtype

    @property
    def store(self) -> SliceStore:
        if self._store is None:
            self._store = SliceStore.open(self.store_path)
        return self._store

    def open(self) -> None:
        """(Re)open the store in this process: called in each DataLoader worker."""
        self._store = SliceStore.open(self.store_path)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None  # each worker opens its own
        return state

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def in_channels(self) -> int:
        windows = len(self.channels) if self.channels is not None else None
        if windows is None:
            windows = len(self.store.record(self.cases[0]).windows) if self.cases else 1
        return (2 * self.context + 1) * windows

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` uncropped: uint8 inputs (C', H, W) and float32 targets (labels, H, W)."""
        return self.read_many([i])[0]

    def read_many(self, indices: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``read`` of several items with one ``read_slices`` for their slices (+1 for context rows):
        on an object store a batch then waits for two round trips, not two per item."""
        keys = [(self.cases[i], int(self.rows[i])) for i in indices]
        centre = self.store.read_slices(keys, labels=self.targets)
        images = np.split(centre.image, len(keys))  # (rows, windows, H, W) each, as stack_inputs wants
        if self.context:
            rows = [context_rows(z, self.num_slices[c], self.context) for c, z in keys]
            flat = self.store.read_slices([(c, r) for (c, _), rs in zip(keys, rows) for r in rs]).image
            images = np.split(flat, len(keys))
        return [(stack_inputs(image, self.channels), target_array([centre.labels[t][k] for t in self.targets]))
                for k, image in enumerate(images)]

    def __getitem__(self, item: int | ItemKey) -> dict:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence[int | ItemKey]) -> list[dict]:
        """A batch's items (torch's DataLoader calls this with a batch sampler): their slices read at once."""
        with _one_thread():
            keyed = [(item, (self.seed, int(item))) if isinstance(item, (int, np.integer)) else item
                     for item in items]
            return [self._item(i, words, pair)
                    for (i, words), pair in zip(keyed, self.read_many([int(i) for i, _ in keyed]))]

    def _item(self, i: int, words: Sequence[int], pair: tuple[np.ndarray, np.ndarray]) -> dict:
        rng = np.random.default_rng(list(words))
        image, target = pair
        length = self.size + 2 * self.margin
        if self.crop == "resize":
            image_t, target_t = self._resized(image, target, length)
        else:
            kind = crop_kind(bool(self.has_lesion[int(i)]), int(i) in self.hard, self.lesion_crops,
                             self.hard_negatives, rng)
            cy, cx = crop_centre(self.crop, image, target, self.size, self.lesion_jitter, rng, kind=kind,
                                 hard=self.hard.get(int(i)))
            image_t = torch.from_numpy(crop_padded(image, cy, cx, length))
            target_t = torch.from_numpy(crop_padded(target, cy, cx, length))
        image_t = image_t.float().div_(255.0)
        if self.augment is not None:
            params = AugmentParams.draw(self.augment, rng)
            image_t, target_t = augment_pair(image_t, target_t, self.size, params, any(self.soft.values()))
        return {"image": image_t.contiguous(), "target": target_t.contiguous(), "index": int(i)}

    # -- the batch path (ctseg.batching): one store read per batch, uint8 out of the workers --
    def raw_batch(self, keys: Sequence[ItemKey]) -> dict:
        """The items ``keys`` before float conversion and augmentation (ctseg.batching.finish_batch
        does those, on the device): ``image`` uint8 (B, C', L, L), ``target`` uint8 0/1 (float32
        when a target is soft), ``index`` int64 (B,), ``augment`` the draws (None: no augmentation).

        The same random draws in the same order as ``self[key]``, so finishing gives its items
        bit for bit on the CPU. Resize mode ships float images and targets (not cropped).
        """
        items = [(int(i), tuple(words)) for i, words in keys]
        read = self._read_raw([i for i, _ in items])
        length = self.size + 2 * self.margin
        if self.crop == "resize":
            pairs = [self._resized(image, target.astype(np.float32), length) for image, target in read]
            image_b, target_b = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        else:  # crops written straight into the batch, in shared memory in a worker (no copy to send it)
            image_b = _batch_tensor((len(items), *read[0][0].shape[:1], length, length), torch.uint8)
            target_b = _batch_tensor((len(items), *read[0][1].shape[:1], length, length),
                                     torch.from_numpy(read[0][1][:0]).dtype)
        draws = []
        for b, ((i, words), (image, target)) in enumerate(zip(items, read)):
            rng = np.random.default_rng(list(words))
            if self.crop != "resize":
                kind = crop_kind(bool(self.has_lesion[i]), i in self.hard, self.lesion_crops, self.hard_negatives, rng)
                cy, cx = crop_centre(self.crop, image, target, self.size, self.lesion_jitter, rng, kind=kind,
                                     hard=self.hard.get(i))
                image_b[b].numpy()[...] = _cropped(image, cy, cx, length)
                target_b[b].numpy()[...] = _cropped(target, cy, cx, length)
            draws.append(AugmentParams.draw(self.augment, rng) if self.augment is not None else None)
        return {"image": image_b, "target": target_b, "index": torch.tensor([i for i, _ in items], dtype=torch.int64),
                "augment": draws if self.augment is not None else None}

    def _read_raw(self, items: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(uint8 inputs (C', H, W), targets (labels, H, W): uint8 0/1, float32 when soft) per item,
        read with one ``read_slices`` call (two with context) when the slices share a size."""
        sizes = {self.store.record(c).geometry.shape[1:] for c in {self.cases[i] for i in items}}
        if len(sizes) > 1:
            return [r for i in items for r in self._read_raw([i])]
        centres = [(self.cases[i], int(self.rows[i])) for i in items]
        got = self.store.read_slices(centres, labels=self.targets)
        image = got.image
        if self.context:
            rows = [(c, r) for c, z in centres for r in context_rows(z, self.num_slices[c], self.context)]
            image = self.store.read_slices(rows).image.reshape(len(items), -1, *got.image.shape[1:])
        else:
            image = image[:, None]
        soft = any(self.soft.values())
        out = []
        for b in range(len(items)):
            labels = [got.labels[t][b] for t in self.targets]
            target = target_array(labels) if soft else np.stack([lab > 0 for lab in labels]).view(np.uint8)
            out.append((stack_inputs(image[b], self.channels), target))
        return out

    def _resized(self, image: np.ndarray, target: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.size
        img = F.interpolate(torch.from_numpy(image)[None].float(), size=(size, size), mode="bilinear",
                            antialias=True, align_corners=False)[0]
        soft = any(self.soft.values())
        tgt = F.interpolate(torch.from_numpy(target)[None], size=(size, size),
                            mode="bilinear" if soft else "nearest", align_corners=False if soft else None)[0]
        pad = (length - size) // 2
        if pad:
            img, tgt = F.pad(img, (pad,) * 4), F.pad(tgt, (pad,) * 4)
        return img, tgt


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty batch tensor; in a DataLoader worker in shared memory, so sending it copies nothing."""
    out = torch.empty(shape, dtype=dtype)
    return out.share_memory_() if torch.utils.data.get_worker_info() is not None else out


def _cropped(array: np.ndarray, cy: int, cx: int, length: int) -> np.ndarray:
    """crop_padded, without the copy when the crop is the whole (C, length, length) array."""
    if array.shape[1:] == (length, length) and cy - length // 2 == 0 and cx - length // 2 == 0:
        return array
    return crop_padded(array, cy, cx, length)


# ---- loader ------------------------------------------------------------------------------------
def _worker_init(worker_id: int) -> None:
    """Each worker: its own store handle, one thread (the workers are the parallelism)."""
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "open"):
        info.dataset.open()


def make_loader(dataset: SliceDataset, batch_sampler: BatchPlan, *, workers: int, pin_memory: bool = False):
    """A DataLoader of raw batches of ``dataset`` driven by ``batch_sampler`` (workers persist across
    epochs): one worker call per batch (ctseg.batching); ``finish_batch`` makes them model inputs.

    The loader gets its own torch Generator: starting an iterator draws a base seed from
    it, and drawing from the global RNG instead would shift the models' random numbers
    (noise, dropout) between a resumed run and an uninterrupted one. Items do not use
    torch's RNG; their augmentation seeds come from the batch sampler.
    """
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    generator = torch.Generator().manual_seed(batch_sampler.seed)
    return torch.utils.data.DataLoader(BatchReader(dataset), sampler=batch_sampler, batch_size=None,
                                       num_workers=workers, worker_init_fn=_worker_init, pin_memory=pin_memory,
                                       generator=generator, **extra)


def training_data(config: TrainConfig, *, rank: int = 0, world: int = 1, pin_memory: bool = False,
                  exclude: frozenset[tuple[str, int]] | set[tuple[str, int]] = frozenset()):
    """(dataset, batch sampler, loader) for the training side of ``config``, without the ``exclude``d
    (case, row) pairs (slices held out for validation)."""
    store = SliceStore.open(config.store)
    index = select_index(store, split=config.train_split, lesion_only=config.sampling == "lesion_only",
                         cases=config.cases, targets=config.target)
    if exclude:
        index = SliceIndex(index.rows[np.array([(str(c), int(z)) not in exclude for c, z in index], dtype=bool)])
    if len(index) == 0:
        raise ConfigError(f"{config.store}: no {config.train_split!r} slices"
                          + (" with a lesion" if config.sampling == "lesion_only" else "")
                          + f" for target {', '.join(config.target)}")
    check_sampling(config, store, index)
    dataset = SliceDataset.from_config(config, index, train=True)
    sampler = make_batch_sampler(config, dataset, rank=rank, world=world)
    return dataset, sampler, make_loader(dataset, sampler, workers=config.workers, pin_memory=pin_memory)


def check_sampling(config: TrainConfig, store: SliceStore, index: SliceIndex) -> None:
    """Refuse crop and sampling options the training slices cannot meet, naming the option and the store."""
    where = f"{config.store} ({config.train_split!r} slices, target {', '.join(config.target)})"
    h, w = store.record(str(index.rows["case"][0])).geometry.shape[1:]
    if config.crop != "resize" and config.size > min(h, w):
        raise ConfigError(f"--size {config.size} (crop {config.crop}): larger than the {h}x{w} slices of {where}; "
                          "use a smaller --size or --crop resize")
    lesions = int(index.has_lesion.sum())
    if config.crop == "lesion" and config.lesion_crops > 0 and not lesions:
        raise ConfigError(f"--crop lesion: {where} has no lesion slice; use --crop random or resize")
    if config.sampling == "balanced" and not lesions:
        raise ConfigError(f"--sampling balanced: {where} has no lesion slice; use --sampling all")
    if config.sampling == "balanced" and config.lesion_fraction < 1 and lesions == len(index):
        raise ConfigError(f"--sampling balanced (lesion_fraction {config.lesion_fraction:g}): {where} has no "
                          "lesion-free slice; convert with --slices lesion+K or all, or use --sampling lesion_only")


def held_out_crops(config: TrainConfig, cases: Sequence[str]) -> SliceDataset:
    """One crop per stored slice of ``cases``: the training crop mode, no jitter, no augmentation (deterministic).

    What a model's own validation scores (SegModel.validation; srgan's PSNR/SSIM).
    """
    index = select_index(SliceStore.open(config.store), split="all", cases=list(cases), targets=config.target)
    if len(index) == 0:
        raise ConfigError(f"{config.store}: no slices with label(s) {', '.join(config.target)} in cases "
                          f"{', '.join(cases) or '(none)'}")
    return SliceDataset(config.store, index, targets=config.target, size=config.size, crop=config.crop,
                        channels=config.channels, context=config.context, augment=None, lesion_jitter=0.0,
                        seed=config.seed)
