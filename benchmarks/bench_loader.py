"""The training input pipeline against an nnU-Net-style ``np.load(mmap_mode="r")`` Dataset, in one run.

    python benchmarks/bench_loader.py            # 512^2, batch 16, 48 slices, workers 0 and 2
    python benchmarks/bench_loader.py --quick    # fewer batches

Both sides read the same slices of one converted phantom case (2 windows, tumour label)
in the same shuffled order, whole 512^2 slices, batch 16, no augmentation:

* ``store``: ``ctseg.data.make_loader`` (one ``read_slices`` per batch, uint8 batches out
  of the workers) then ``ctseg.batching.finish_batch`` on the CPU (float in [0, 1], float
  targets): what a CPU training step receives. ``store raw`` is the loader alone (what a
  GPU run moves to the device, where the float conversion happens).
* ``per-item (before)``: the loader this replaced (``SliceDataset[key]`` per item, default_collate).
* ``npy``: the slices exported once to ``image.npy`` (float32, the way nnU-Net keeps
  preprocessed cases) and ``target.npy`` (uint8), read per item from memory maps, converted
  to float32 tensors and collated by torch's default_collate.

Targets (ratios in this run): store/npy slices/s >= 0.5 at workers 0 (moonshot 0.8); the
store 8-20x smaller on disk than the npy files; store workers 2 faster than workers 0;
>= 3x MONAI's CacheDataset (when MONAI is installed; skipped with the reason otherwise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SIZE, BATCH = 512, 16


def make_store(out: Path, slices: int) -> Path:
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.phantoms.nifti import write_lits_case
    from ctprep.windowing import PRESETS

    store = out / f"loader-{SIZE}x{slices}.zarr"
    if not store.exists():
        raw = out / f"loader-raw-{SIZE}x{slices}"
        write_lits_case(raw, 0, shape=(slices, SIZE, SIZE), spacing=(2.0, 0.6, 0.6))
        convert_dataset(ConvertConfig(source="lits", input_dir=str(raw), output=str(store), slices="all",
                                      windows=(PRESETS["liver"], PRESETS["abdomen"]), overwrite=True),
                        progress=False)
    return store


def store_dataset(store: Path):
    from ctprep.store import SliceStore
    from ctseg.config import AugmentConfig
    from ctseg.data import SliceDataset, select_index

    index = select_index(SliceStore.open(store), split="all")
    return SliceDataset(store, index, targets=("tumour",), size=SIZE, crop="center",
                        augment=AugmentConfig(enabled=False))


def export_npy(store: Path, out: Path) -> Path:
    """The store's slices as nnU-Net-style arrays: image float32 (z, C, y, x), target uint8 (z, 1, y, x)."""
    from ctprep.store import SliceStore

    folder = out / f"{store.stem}-npy"
    if not (folder / "target.npy").exists():
        folder.mkdir(parents=True, exist_ok=True)
        s = SliceStore.open(store)
        case = s.read_case(s.case_ids()[0], labels=["tumour"])
        np.save(folder / "image.npy", case.image.astype(np.float32) / 255.0)
        np.save(folder / "target.npy", (case.labels["tumour"] > 0).astype(np.uint8)[:, None])
    return folder


class NpyDataset:
    """Per item: the memory-mapped slice as float32 tensors (image, target), like nnU-Net's loaders."""

    def __init__(self, folder: Path):
        self.folder, self.image, self.target = folder, None, None

    def __len__(self) -> int:
        return int(np.load(self.folder / "target.npy", mmap_mode="r").shape[0])

    def __getitem__(self, i: int) -> dict:
        import torch

        if self.image is None:
            self.image = np.load(self.folder / "image.npy", mmap_mode="r")
            self.target = np.load(self.folder / "target.npy", mmap_mode="r")
        return {"image": torch.from_numpy(np.array(self.image[i])),
                "target": torch.from_numpy(self.target[i].astype(np.float32)), "index": i}


def rate(loader, finish=None, batches: int = 10) -> float:
    """Slices/s over ``batches`` batches after one warm-up batch."""
    it = iter(loader)
    next(it)
    started, count = time.perf_counter(), 0
    for _, batch in zip(range(batches), it):
        batch = finish(batch) if finish else batch
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - started)


def store_rates(store: Path, workers: int, batches: int) -> tuple[float, float]:
    from ctseg.batching import finish_batch
    from ctseg.data import make_loader
    from ctseg.samplers import ShuffledBatches

    ds = store_dataset(store)
    sampler = ShuffledBatches(len(ds), batch_size=BATCH, seed=0, steps_per_epoch=batches + 1)
    loader = make_loader(ds, sampler, workers=workers)
    raw = rate(loader, batches=batches)
    finished = rate(loader, lambda b: finish_batch(b, "cpu", size=SIZE, soft_target=False), batches)
    return raw, finished


def per_item_rate(store: Path, workers: int, batches: int) -> float:
    """The loader before the batch path: per-item SliceDataset[key] collated by default_collate."""
    import torch

    from ctseg.samplers import ShuffledBatches

    ds = store_dataset(store)
    sampler = ShuffledBatches(len(ds), batch_size=BATCH, seed=0, steps_per_epoch=batches + 1)
    extra = {"persistent_workers": True, "worker_init_fn": lambda _: ds.open()} if workers else {}
    return rate(torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, **extra), batches=batches)


def npy_rate(folder: Path, workers: int, batches: int) -> float:
    import torch

    ds = NpyDataset(folder)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=BATCH * (batches + 1),
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=workers,
                                         persistent_workers=bool(workers))
    return rate(loader, batches=batches)


def monai_rates(store: Path, out: Path, slices: int, batches: int) -> dict[str, float] | str:
    """MONAI's CacheDataset, slices/s at workers 0, two ways (or why it was skipped):

    * ``volume cache``: as MONAI's own 2-D-from-3-D recipes do it: the case's NIfTI files cached
      after LoadImaged, EnsureChannelFirstd and the two windows (ScaleIntensityRanged), one axial
      slice drawn per item (RandSpatialCropd to one slice, SqueezeDimd); ``copy_cache=False``,
      MONAI's fast setting for transforms that leave the cache alone (its default deep-copies the
      cached volume for every item, ~13x slower here). The target is measured against this one.
    * ``slice cache``: the store's slices, already windowed and sliced as float arrays, cached with
      no transform at all: a Python list and default collation, the least MONAI can do.
    """
    try:
        import monai.data  # noqa: F401
    except ImportError:
        return "skipped: MONAI is not installed (pip install monai to compare with its CacheDataset)"
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai import transforms as mt

    from ctprep.store import SliceStore
    from ctprep.windowing import PRESETS

    raw = out / f"loader-raw-{SIZE}x{slices}"
    case = {"image": str(next(raw.rglob("volume-*.nii*"))), "label": str(next(raw.rglob("segmentation-*.nii*")))}
    keys = ["image", "label"]
    windows = [mt.ScaleIntensityRanged(keys=[f"w{i}"], a_min=w.lo, a_max=w.hi, b_min=0.0, b_max=1.0, clip=True)
               for i, w in enumerate((PRESETS["liver"], PRESETS["abdomen"]))]
    volume = CacheDataset([case], progress=False, copy_cache=False, transform=mt.Compose([
        mt.LoadImaged(keys=keys), mt.EnsureChannelFirstd(keys=keys),
        mt.CopyItemsd(keys=["image"], times=2, names=["w0", "w1"]),
        *windows, mt.ConcatItemsd(keys=["w0", "w1"], name="image"), mt.DeleteItemsd(keys=["w0", "w1"]),
        mt.RandSpatialCropd(keys=keys, roi_size=(-1, -1, 1), random_size=False), mt.SqueezeDimd(keys=keys, dim=-1)]))
    s = SliceStore.open(store)
    data = s.read_case(s.case_ids()[0], labels=["tumour"])
    items = [{"image": data.image[z].astype(np.float32) / 255.0, "target": data.labels["tumour"][z][None] > 0}
             for z in range(len(data.image))]
    rates = {}
    for name, ds in (("volume cache", volume), ("slice cache", CacheDataset(items, transform=None, progress=False))):
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=BATCH * (batches + 1))
        rates[name] = rate(DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=0), batches=batches)
    return rates


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="data folder (default <tmp>/lesionkit-loader)")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per measurement")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats = 4, 1
    torch.set_num_threads(1)
    out = common.out_dir(args.out, "loader")
    print(common.machine_line())
    store = make_store(out, args.slices)
    npy = export_npy(store, out)
    verdicts = common.Verdicts()
    rows, rates = [], {}
    for workers in (0, 2):
        raws, finished = zip(*(store_rates(store, workers, args.batches) for _ in range(args.repeats)))
        ref = max(npy_rate(npy, workers, args.batches) for _ in range(args.repeats))
        before = max(per_item_rate(store, workers, args.batches) for _ in range(args.repeats))
        rates[workers] = (max(raws), max(finished), ref)
        rows.append([str(workers), before, max(raws), max(finished), ref, max(finished) / ref])
    common.print_table(f"slices/s, {SIZE}^2, batch {BATCH}, 2 windows, no augmentation",
                       ["workers", "per-item (before)", "store raw", "store finished", "npy mmap", "store/npy"], rows)
    store_mb, npy_mb = common.folder_bytes(store) / 1e6, common.folder_bytes(npy) / 1e6
    print(f"\non disk: store {store_mb:.1f} MB, npy {npy_mb:.1f} MB ({npy_mb / store_mb:.1f}x larger)")
    verdicts.check("store/npy slices/s, workers 0 (moonshot 0.8)", rates[0][1] / rates[0][2], 0.5)
    verdicts.check("npy/store bytes on disk (target 8-20x)", npy_mb / store_mb, 8.0)
    verdicts.check("store workers 2 / workers 0 slices/s", rates[2][1] / rates[0][1], 1.0)
    monai = monai_rates(store, out, args.slices, args.batches)
    if isinstance(monai, str):
        verdicts.note(f"store / MONAI CacheDataset: {monai}")
    else:
        print("\nMONAI CacheDataset, workers 0: " + ", ".join(f"{k} {v:,.0f} slices/s" for k, v in monai.items()))
        verdicts.check("store / MONAI CacheDataset, volumes cached, a slice per item (workers 0)",
                       rates[0][1] / monai["volume cache"], 3.0)
        verdicts.note(f"store / MONAI CacheDataset of float slices with no transform: "
                      f"{rates[0][1] / monai['slice cache']:.2f}x (a list and default collation)")
    print(common.machine_line())
    return verdicts.print()


if __name__ == "__main__":
    sys.exit(main())
