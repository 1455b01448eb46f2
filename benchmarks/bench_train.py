"""Training throughput: the data pipeline against the training step, per model, in one run.

    python benchmarks/bench_train.py             # CPU section (~2-5 min on 2 cores, every registered model)
    python benchmarks/bench_train.py --quick     # fewer steps, two models
    python benchmarks/bench_train.py --gpu-only  # only the GPU section (needs CUDA)

CPU section (target 5, benchmarks/README.md): the loader alone (``ctseg.data``: one
``SliceStore.read_slices`` per batch, lesion crop, uint8 batches; then ``ctseg.batching.finish_batch``:
float conversion and augmentation on the device)
with 0 and 2 workers, and each registered model's ``train_step`` alone on synthetic
in-memory batches of the same shape; **target: loader slices/s >= 2x step slices/s**
for every model (the best worker setting; both printed).

GPU section (when CUDA is present, or ``--gpu-device cpu`` for a dry run of the code):
per model at 256^2 and 512^2 with AMP (bf16 where supported), slices/s, peak GPU
memory, and the share of the step's wall time spent in GPU kernels (torch.profiler;
target >= 70 %), next to the loader's slices/s at that size with ``--gpu-workers``, its batches finished
(float conversion, augmentation) on the GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

BATCH = 8
# Per model: model_options that fit the CPU size (the real widths, fewer levels where a
# model's default depth needs a larger input); the GPU section uses the defaults.
CPU_OPTIONS = {
    "ctumorgan": {"features": [64, 128, 256, 512, 512]},
    "crgan": {"features": [64, 128, 256, 512, 512]},
}
# Extra rows: a model's later training stage, measured as its own step (crgan's stage 2: R on the fixed G).
STAGES = {"crgan": [("crgan stage 2 (R)", {"cgan_epochs": 0})]}


def make_store(out: Path, size: int, slices: int) -> Path:
    """A phantom LiTS case converted into a store (generated once per size)."""
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.phantoms.nifti import write_lits_case
    from ctprep.windowing import PRESETS

    store = out / f"train-{size}x{size}x{slices}.zarr"
    if store.exists():
        return store
    raw = out / f"train-raw-{size}"
    write_lits_case(raw, 0, shape=(slices, size, size), spacing=(2.0, 300 / size, 300 / size))
    convert_dataset(ConvertConfig(source="lits", input_dir=str(raw), output=str(store),
                                  windows=(PRESETS["liver"], PRESETS["abdomen"]), overwrite=True), progress=False)
    return store


def config_for(model: str, store: Path, size: int, options: dict | None = None, **extra):
    from ctseg.build import build_config

    layer = {"store": str(store), "target": "tumour", "size": size, "batch_size": BATCH, "train_split": "all",
             "sampling": "balanced", "crop": "lesion", **extra}
    if options:
        layer["model_options"] = options
    return build_config(model=model, layers=[layer])


def sr_stage(store: Path, size: int, device: str = "cpu") -> Path:
    """CasGAN's super-resolution stage for the step benchmark: a one-step srgan run's last.pt
    (its weights do not matter for timing; casgan needs a trained srgan run to be built)."""
    from ctseg.build import build_config
    from ctseg.train import train

    out = store.parent / f"sr_stage_{size}_{device.replace(':', '_')}"
    if not (out / "last.pt").is_file():
        layer = {"store": str(store), "target": "tumour", "out": str(out), "size": size, "batch_size": 2,
                 "train_split": "all", "val_split": "none", "max_steps": 1, "image_every": 0, "device": device}
        train(build_config(model="srgan", layers=[layer]), progress=False)
    return out / "last.pt"


def model_options(name: str, store: Path, size: int, device: str = "cpu") -> dict:
    """The options a model is benchmarked with: CPU-sized widths, casgan's SR stage."""
    options = dict(CPU_OPTIONS.get(name, {})) if device == "cpu" else {}
    if name == "casgan":
        options["sr_checkpoint"] = str(sr_stage(store, size, device))
    return options


def loader_rate(store: Path, size: int, workers: int, batches: int, device: str = "cpu") -> float:
    """Slices/s of the training DataLoader alone (after one warm-up batch), each raw uint8 batch
    finished on ``device`` (float conversion and augmentation there: ctseg.batching.finish_batch)."""
    import torch

    from ctseg.batching import finish_batch
    from ctseg.data import training_data

    config = config_for("unet", store, size, workers=workers, steps_per_epoch=batches + 1)
    dataset, sampler, loader = training_data(config, pin_memory=device.startswith("cuda"))
    sampler.set_epoch(0)
    soft = any(dataset.soft.values())
    iterator = iter(loader)
    finish_batch(next(iterator), device, size=size, soft_target=soft)
    started, count = time.perf_counter(), 0
    for batch in iterator:
        count += finish_batch(batch, device, size=size, soft_target=soft)["image"].shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def step_rate(model_name: str, store: Path, size: int, steps: int, device: str = "cpu", options=None,
              profile: bool = False) -> dict:
    """Slices/s of one model's train_step alone on synthetic batches held on the device."""
    import torch

    from ctseg.models.base import Amp, StepContext
    from ctseg.build import build_model

    config = config_for(model_name, store, size, options, device=device)
    dev = torch.device(device)
    model = build_model(config, 2).to(dev).train()
    optimizers = model.optimizers(config)
    amp = Amp(dev, "auto", list(optimizers))
    ctx = StepContext(optimizers=optimizers, amp=amp, weights=config.weights_at(0), trainable=frozenset(optimizers))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(BATCH, 2, size, size, generator=g).to(dev),
             "target": (torch.rand(BATCH, 1, size, size, generator=g) > 0.9).float().to(dev)}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        model.train_step(batch, ctx)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        model.train_step(batch, ctx)
    sync()
    seconds = time.perf_counter() - started
    result = {"slices_s": steps * BATCH / seconds, "step_s": seconds / steps}
    if dev.type == "cuda":
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if profile:
        result["kernel_share"] = kernel_share(model, batch, ctx, seconds / steps, dev)
    return result


def kernel_share(model, batch, ctx, step_seconds: float, dev) -> float:
    """Sum of GPU kernel time per step (torch.profiler) over the un-profiled wall time per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    steps = 3
    with profile(activities=activities) as prof:
        for _ in range(steps):
            model.train_step(batch, ctx)
        if dev.type == "cuda":
            import torch

            torch.cuda.synchronize()
    kernel_us = 0.0
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            kernel_us += getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0))
    return kernel_us / 1e6 / steps / step_seconds


def cpu_section(args, verdicts: common.Verdicts) -> None:
    import torch

    from ctseg.build import MODELS

    torch.set_num_threads(args.threads)
    store = make_store(args.out, args.size * 2, 24)
    rates = {w: max(loader_rate(store, args.size, w, args.batches) for _ in range(2)) for w in (0, 2)}
    loader_best = max(rates.values())
    common.print_table(f"loader alone, {args.size}x{args.size} lesion crops of 2 windows, batch {BATCH}",
                       ["workers", "slices/s"], [[str(w), r] for w, r in rates.items()])
    models = sorted(MODELS)[:2] if args.quick else sorted(MODELS)
    rows = []
    runs = [(label, name, {**model_options(name, store, args.size), **extra})
            for name in models for label, extra in [(name, {}), *STAGES.get(name, [])]]
    for label, name, options in runs:
        try:
            step = step_rate(name, store, args.size, args.steps, options=options or None)
        except Exception as exc:  # a model that cannot run at this size is reported, not fatal
            rows.append([label, "-", "-", f"skipped: {type(exc).__name__}: {exc}"[:80]])
            continue
        ratio = loader_best / step["slices_s"]
        rows.append([label, step["slices_s"], step["step_s"], ratio])
        verdicts.check(f"5 loader / step slices/s, {label}", ratio, 2.0)
    common.print_table(f"train_step alone on synthetic batches (CPU, {torch.get_num_threads()} threads)",
                       ["model", "slices/s", "s/step", "loader/step"], rows)


def gpu_section(args, verdicts: common.Verdicts) -> None:
    import torch

    from ctseg.build import MODELS

    device = args.gpu_device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("\nGPU section: no CUDA device here; run this script on a GPU machine for the GPU figures.")
        return
    if device.startswith("cuda"):
        print(f"\nGPU: {torch.cuda.get_device_name(0)}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    rows = []
    for size in args.gpu_sizes:
        store = make_store(args.out, size, 48)
        loader = loader_rate(store, size, args.gpu_workers, args.batches, device=device)
        rows.append([f"loader ({args.gpu_workers} workers)", size, loader, "-", "-", "-"])
        for name in sorted(MODELS):
            try:
                r = step_rate(name, store, size, args.gpu_steps, device=device, profile=True,
                              options=model_options(name, store, size, device) or None)
            except Exception as exc:
                rows.append([name, size, "-", "-", "-", f"skipped: {type(exc).__name__}"])
                continue
            share = r.get("kernel_share", 0.0)
            rows.append([name, size, r["slices_s"], r.get("peak_gb", 0.0), f"{100 * share:.0f} %",
                         f"{loader / r['slices_s']:.2f}"])
            if device.startswith("cuda"):
                verdicts.check(f"GPU kernel share, {name} {size}^2", 100 * share, 70.0, unit=" %")
    common.print_table(f"GPU section ({device}, AMP auto, batch {BATCH})",
                       ["model", "size", "slices/s", "peak GB", "kernel share", "loader/step"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="data folder (default <tmp>/lesionkit-train)")
    parser.add_argument("--size", type=int, default=64, help="CPU section crop size")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40, help="loader batches timed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the CPU section (1: like the loader's serial path; busy machines)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--gpu-device", default=None, help="cuda (default when available) or cpu (dry run)")
    parser.add_argument("--gpu-sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--gpu-workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    args.out = common.out_dir(str(args.out) if args.out else None, "train")
    if args.quick:
        args.steps, args.batches, args.gpu_steps = 3, 15, 5
    print(common.machine_line())
    verdicts = common.Verdicts()
    if not args.gpu_only:
        cpu_section(args, verdicts)
    gpu_section(args, verdicts)
    print(common.machine_line())
    return verdicts.print()


if __name__ == "__main__":
    sys.exit(main())
