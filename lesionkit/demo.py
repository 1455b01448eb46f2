"""``ctprep demo``: the whole product on phantom downloads, talking while it works.

Nothing is downloaded: the raw data are fabricated in the real layouts
(ctprep.phantoms.nifti for LiTS and KiTS19, in several orientations, so the demo also
shows that every orientation lands on the same canonical grid; ctprep.phantoms.nsclc for
CT series + RTSTRUCT written with rt-utils; ctprep.phantoms.lidc for CT series + four
readers' XML; ctprep.phantoms.deeplesion for 16-bit PNGs with a DL_info.csv). Then the
demo runs the rest of the product on those stores: soft masks by matting from the
DeepLesion RECIST axes and from the LIDC readers (ctlabel), and, when torch is installed,
a short CPU training of the U-Net baseline on the LiTS store's training cases, validated
on its val case and evaluated on its held-out test cases (ctseg).

Convention: the demo is a list of steps. Each step returns a :class:`DemoStep` (what it
printed, one sentence saying what it shows, the files it made); each step's lines are
handed to ``say`` as soon as the step finishes, and ``OUT_DIR/index.html`` links every
step's files with its sentence.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ctprep.commands.info import store_info
from ctprep.commands.preview import write_preview
from ctprep.commands.report import write_store_report
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.datasets import SplitConfig, assign_split
from ctprep.phantoms.deeplesion import write_deeplesion_phantom
from ctprep.phantoms.lidc import write_lidc_case
from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctprep.phantoms.nsclc import write_nsclc_case
from ctprep.store import SliceStore
from lkbase.atomic import write_text_atomic

Say = Callable[[str], None]

# Source options the demo converts with (the ``--roi`` flags): NSCLC stores the lungs too.
DEMO_OPTIONS = {"nsclc": {"rois": ["Lung-Left=lungs", "Lung-Right=lungs"]}}
LITS_CASES = 6  # enough for a patient-level train / val / test split
LITS_FRACTIONS = (0.5, 0.2, 0.3)


@dataclass(frozen=True, kw_only=True)
class DemoStep:
    """One finished step: its printed lines, what it shows (one sentence), the files it made."""

    title: str
    explains: str
    lines: tuple[str, ...]
    files: tuple[Path, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    steps: tuple[DemoStep, ...]
    index: Path
    seconds: float


def make_demo_inputs(out_dir: Path) -> dict[str, Path]:
    """Write the phantom downloads: 6 LiTS volumes (two batches, three orientations), 2 KiTS19 cases,
    2 NSCLC-Radiomics patients (one with two GTVs), 2 LIDC-IDRI patients (four readers each), DeepLesion."""
    lits, kits = out_dir / "raw" / "lits", out_dir / "raw" / "kits19"
    orientations = [("R", "A", "S"), ("L", "P", "S"), ("R", "P", "I")]
    for number in range(LITS_CASES):
        write_lits_case(lits / f"Training Batch {1 + number % 2}", number, axcodes=orientations[number % 3],
                        gz=number % 2 == 1, shape=(48, 128, 128) if number == 2 else (40, 128, 128))
    for number in (0, 1):
        write_kits19_case(kits, number)
    nsclc, lidc = out_dir / "raw" / "NSCLC-Radiomics", out_dir / "raw" / "LIDC-IDRI"
    write_nsclc_case(nsclc, 1, tumours=2)
    write_nsclc_case(nsclc, 2)
    for number in (1, 2):
        write_lidc_case(lidc, number)
    deeplesion = write_deeplesion_phantom(out_dir / "raw" / "DeepLesion").root
    return {"lits": lits, "kits19": kits, "nsclc": nsclc, "lidc": lidc, "deeplesion": deeplesion}


def demo_split(patient_ids: list[str]) -> SplitConfig:
    """The first seed whose hash split of ``patient_ids`` leaves no split empty (the demo's held-out cases)."""
    for seed in range(1000):
        config = SplitConfig(seed=seed, fractions=LITS_FRACTIONS)
        if {assign_split(p, config) for p in patient_ids} == {"train", "val", "test"}:
            return config
    raise RuntimeError(f"no seed below 1000 splits {patient_ids} three ways")  # cannot happen for 6 ids


def run_demo(out_dir: str | Path, workers: int = 1, progress: bool = True, train: bool = True,
             say: Say = print) -> DemoResult:
    """Every step in turn, each one's lines handed to ``say`` as soon as it finishes; then index.html."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    say(f"writing phantom downloads in {out_dir / 'raw'} ...")
    inputs = make_demo_inputs(out_dir)
    steps = []
    for source, folder in inputs.items():
        steps.append(_announced(say, convert_step(out_dir, source, folder, workers, progress)))
    steps.append(_announced(say, soft_mask_step(out_dir, progress, say)))
    if train:
        steps.append(_announced(say, training_step(out_dir, progress, say)))
    index = write_index(out_dir, steps, time.perf_counter() - started)
    say(f"demo finished in {time.perf_counter() - started:.0f} s; open {index}")
    return DemoResult(steps=tuple(steps), index=index, seconds=time.perf_counter() - started)


def _announced(say: Say, step: DemoStep) -> DemoStep:
    for line in ("", *step.lines):
        say(line)
    return step


def convert_step(out_dir: Path, source: str, folder: Path, workers: int, progress: bool) -> DemoStep:
    """``ctprep convert`` of one phantom download, its ``info``, a preview and the store's report page."""
    store_path = out_dir / f"{source}.zarr"
    split = SplitConfig()
    if source == "lits":
        from ctprep.sources import get_source

        split = demo_split(sorted({r.patient_id for r in get_source("lits").discover(folder)}))
    config = ConvertConfig(source=source, input_dir=str(folder), output=str(store_path), workers=workers,
                           overwrite=True, split=split, source_options=DEMO_OPTIONS.get(source, {}))
    report = convert_dataset(config, progress=progress, created_by=f"ctprep demo {out_dir}")
    info = store_info(store_path)
    case_id = SliceStore.open(store_path).case_ids()[0]
    preview = write_preview(store_path, case_id, out_dir / f"{source}_{case_id}.png")
    page = write_store_report(store_path, out_dir / f"{source}.report", progress=False).page
    return DemoStep(title=f"{source}: converted", files=(preview, page),
                    explains=f"The phantom {source} download converted into {store_path.name}: the preview shows "
                             f"{case_id}'s largest lesion slice with every label outlined; the store page lists "
                             "every case with a thumbnail.",
                    lines=(*report.lines(), *(f"  {line}" for line in info.lines()), f"preview: {preview}"))


def soft_mask_step(out_dir: Path, progress: bool, say: Say) -> DemoStep:
    """Trimaps and soft masks: from RECIST axes (DeepLesion) and from the four readers (LIDC)."""
    say("loading the matting kernels (compiled once, cached) ...")
    from ctlabel.label import LabelConfig, label_store
    from ctlabel.preview import write_lesion_preview

    lines, files = [], []
    for source, evidence in (("deeplesion", "recist"), ("lidc", "readers")):
        store_path = out_dir / f"{source}.zarr"
        report = label_store(LabelConfig(store=str(store_path), source=evidence, overwrite=True), progress=progress)
        lines += report.lines()
        labelled = [o.case_id for o in report.with_status("labelled")]
        if labelled:
            files.append(write_lesion_preview(store_path, labelled[0], out_dir / f"{source}_{labelled[0]}_softmask.png"))
            lines.append(f"preview: {files[-1]}")
    return DemoStep(title="soft masks", lines=tuple(lines), files=tuple(files),
                    explains="Soft masks by closed-form matting: from DeepLesion's RECIST axes (GrabCut, then "
                             "matting) and from the agreement of LIDC's four readers; each panel shows a lesion's "
                             "crop, its trimap and its alpha.")


def training_step(out_dir: Path, progress: bool, say: Say) -> DemoStep:
    """A short CPU training of the U-Net baseline on the LiTS training cases, evaluated on the held-out test cases."""
    say("loading torch for training (a few seconds) ...")
    try:
        import torch  # noqa: F401
    except ImportError:
        return DemoStep(title="training", explains="Training needs torch.",
                        lines=("training skipped: torch is not installed (pip install -e '.[train]')",))
    from ctseg.build import build_config
    from ctseg.predict import evaluate_checkpoint_run
    from ctseg.train import train

    store = out_dir / "lits.zarr"
    test_cases = SliceStore.open(store).index(split="test").keys()
    run = out_dir / "runs" / "unet"
    # Tiny widths and crops so that it takes seconds on a CPU.
    config = build_config(model="unet", layers=[{
        "store": str(store), "target": ["tumour"], "out": str(run), "size": 64,
        "batch_size": 8, "steps_per_epoch": 20, "phases": [{"epochs": 4, "decay": "linear"}],
        "train_split": "train", "val_split": "val", "sampling": "balanced", "image_every": 0, "device": "cpu",
        "model_options": {"features": [16, 32, 64]}, "optimizers": {"net": {"lr": 1e-3}}}])
    say(f"training a small U-Net on the CPU: {config.total_epochs} epochs of {config.steps_per_epoch} steps ...")
    result = train(config, progress=progress)
    held_out = sorted({case for case, _ in test_cases})
    lines = [f"ctseg: unet: {result.epoch} epochs, {result.step} steps; best validation Dice "
             f"{result.best_metric:.3f}; run in {run}",
             f"evaluating on the held-out test cases, never trained on: {', '.join(held_out)}"]
    files = []
    for output in evaluate_checkpoint_run(run, store, "test", device="cpu", progress=progress):
        lines += output.lines()
        files += [p for p in output.files if p.suffix == ".html"]
    return DemoStep(title="training and evaluation", lines=tuple(lines), files=tuple(files),
                    explains=f"A small U-Net trained on the LiTS training cases, validated on the val case, "
                             f"and evaluated on the held-out test cases ({', '.join(held_out)}): the report "
                             "gives per-case metrics and the best and worst cases' overlays.")


def write_index(out_dir: Path, steps: list[DemoStep], seconds: float) -> Path:
    """``OUT_DIR/index.html``: one section per step, its sentence, its files linked (images shown)."""
    sections = []
    for step in steps:
        links = "".join(_link(out_dir, path) for path in step.files)
        sections.append(f"<h2>{html.escape(step.title)}</h2><p>{html.escape(step.explains)}</p>{links}"
                        f"<pre>{html.escape(chr(10).join(step.lines))}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>lesionkit demo</title><style>"
            "body{font-family:sans-serif;margin:1.5em;max-width:1100px}img{max-width:100%;border:1px solid #ccc}"
            "pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>"
            "<h1>lesionkit demo</h1><p>Everything below was made from phantom downloads in the real layouts "
            f"(folder raw/), in {seconds:.0f} s. Each section is one step; its files are linked.</p>"
            + "".join(sections) + "</body></html>")
    return write_text_atomic(out_dir / "index.html", page)


def _link(out_dir: Path, path: Path) -> str:
    rel = html.escape(os.path.relpath(path, out_dir).replace(os.sep, "/"), quote=True)
    if path.suffix == ".png":
        return f"<p><a href='{rel}'><img src='{rel}' alt='{rel}'></a></p>"
    return f"<p><a href='{rel}'>{rel}</a></p>"
