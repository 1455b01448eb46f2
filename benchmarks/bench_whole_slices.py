"""Whole-slice segmentation by every segmenting model from its defaults, on the real lung CT (issue 13).

Trains each model on the pyradiomics chest CT (../shared/data/pyradiomics_lung, 48 slices,
converted whole with ``--size 128,128``, lung window) with its defaults, a CPU-sized network
(``TINY``) and ``--steps`` steps of 64-px crops, then predicts every slice whole with the
run's own post-processing and scores the case in 3D: Dice, precision, recall, and beside
them the crop-only Dice (64-px crops centred on the nodule, the number crop validation gave).

    PYTHONPATH=. python benchmarks/bench_whole_slices.py --steps 300 [--models unet,segan] [--seeds 0,1,2]
        [--set key=value]

It prints one row per model and seed (and the seconds it took), and whether the row meets
issue 13's bar (Dice >= 0.6, precision >= 0.5): the figures of docs/models.md. The tests run
seed 0; other seeds show how much a default depends on luck.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TESTS = Path(__file__).resolve().parents[1] / "tests" / "ctseg"
sys.path.insert(0, str(TESTS))
from conftest import write_nodule_case  # noqa: E402  the tests' writer of the real CT in LiTS layout
from whole_ct import SEGMENTERS, meets_the_bar, train_and_score  # noqa: E402  what the tests run


def convert_whole_ct(folder: Path) -> Path:
    """The whole pyradiomics CT as a LiTS case, converted at 128 x 128 (the tests' ``whole_ct_store``)."""
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.windowing import parse_window

    write_nodule_case(folder / "raw", margin_slices=None, size=None)
    convert_dataset(ConvertConfig(source="lits", input_dir=str(folder / "raw"), output=str(folder / "whole.zarr"),
                                  windows=(parse_window("lung"),), size=(128, 128)), progress=False)
    return folder / "whole.zarr"


def run(model: str, store: Path, out: Path, steps: int, extra: list[str]) -> dict:
    from ctseg.config import parse_assignment

    started = time.perf_counter()
    scores = train_and_score(model, store, out, steps=steps, extra=[parse_assignment(e) for e in extra])
    return {**scores, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SEGMENTERS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds (the tests use 0)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = convert_whole_ct(Path(tmp))
        print(f"{'model':16} {'seed':>4} {'dice':>6} {'prec':>6} {'recall':>6} {'crop':>6} {'s':>6}  bar", flush=True)
        for model in args.models.split(","):
            for seed in args.seeds.split(","):
                r = run(model, store, Path(tmp) / f"{model}-{seed}", args.steps, [f"seed={seed}", *args.extra])
                print(f"{model:16} {seed:>4} {r['dice']:6.3f} {r['precision']:6.3f} {r['recall']:6.3f} "
                      f"{r['crop_dice']:6.3f} {r['seconds']:6.1f}  {'met' if meets_the_bar(r) else 'SHORT'}", flush=True)


if __name__ == "__main__":
    main()
