"""Whole-slice segmentation by every segmenting model from its defaults, on the real lung CT (issue 13).

Trains each model on the pyradiomics chest CT (../shared/data/pyradiomics_lung, 48 slices,
converted whole with ``--size 128,128``, lung window) with its defaults, a CPU-sized network
(``TINY``) and ``--steps`` steps of 64-px crops, then predicts every slice whole with the
run's own post-processing and scores the case in 3D: Dice, precision, recall, and beside
them the crop-only Dice (64-px crops centred on the nodule, the number crop validation gave).

    PYTHONPATH=. python benchmarks/bench_whole_slices.py --steps 150 [--models unet,segan] [--set key=value]

It prints one row per model (and the seconds it took): the figures of docs/models.md.
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
from test_whole_slices import SEGMENTERS, defaults_layer, whole_case_scores  # noqa: E402  what the test runs


def convert_whole_ct(folder: Path) -> Path:
    """The whole pyradiomics CT as a LiTS case, converted at 128 x 128 (the tests' ``whole_ct_store``)."""
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.windowing import parse_window

    write_nodule_case(folder / "raw", margin_slices=None, size=None)
    convert_dataset(ConvertConfig(source="lits", input_dir=str(folder / "raw"), output=str(folder / "whole.zarr"),
                                  windows=(parse_window("lung"),), size=(128, 128)), progress=False)
    return folder / "whole.zarr"


def run(model: str, store: Path, out: Path, steps: int, extra: list[str]) -> dict:
    import torch

    from ctseg.build import build_config
    from ctseg.config import parse_assignment
    from ctseg.train import train

    torch.manual_seed(0)
    config = build_config(model=model, layers=[defaults_layer(model, store, out, steps),
                                              *map(parse_assignment, extra)])
    started = time.perf_counter()
    train(config, progress=False)
    seconds = time.perf_counter() - started
    best = out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt"
    return {**whole_case_scores(best, store, out / "pred.zarr"), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SEGMENTERS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = convert_whole_ct(Path(tmp))
        print(f"{'model':16} {'dice':>6} {'prec':>6} {'recall':>6} {'crop':>6} {'s':>6}", flush=True)
        for model in args.models.split(","):
            r = run(model, store, Path(tmp) / model, args.steps, args.extra)
            print(f"{model:16} {r['dice']:6.3f} {r['precision']:6.3f} {r['recall']:6.3f} {r['crop_dice']:6.3f} "
                  f"{r['seconds']:6.1f}", flush=True)


if __name__ == "__main__":
    main()
