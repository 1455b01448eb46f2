"""``ctprep demo``: phantom LiTS, KiTS19, NSCLC-Radiomics and LIDC-IDRI downloads, converted,
summarised and previewed.

Nothing is downloaded: the raw data are fabricated in the real layouts
(ctprep.phantoms.nifti for the NIfTI datasets, in several orientations, so the demo also
shows that every orientation lands on the same canonical grid; ctprep.phantoms.nsclc
for CT series + RTSTRUCT written with rt-utils; ctprep.phantoms.lidc for CT series +
four readers' XML in the LIDC schema; ctprep.phantoms.deeplesion for 16-bit PNGs with a
DL_info.csv). Then the demo runs the rest of the product on those stores: soft masks by
matting from the DeepLesion RECIST axes and from the LIDC readers (ctlabel), and, when
torch is installed, a short CPU training of the U-Net baseline on the LiTS store with
its evaluation report (ctseg).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.convert import ConversionReport, ConvertConfig, convert_dataset
from ctprep.phantoms.deeplesion import write_deeplesion_phantom
from ctprep.commands.info import StoreInfo, store_info
from ctprep.phantoms.lidc import write_lidc_case
from ctprep.phantoms.nsclc import write_nsclc_case
from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctprep.commands.preview import write_preview
from ctprep.store import SliceStore


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    reports: dict[str, ConversionReport]
    infos: dict[str, StoreInfo]
    previews: list[Path]
    labelling: list[str]  # ctlabel's summaries
    training: list[str]  # ctseg's summary and evaluation, or why it was skipped


# Source options the demo converts with (the ``--roi`` flags): NSCLC stores the lungs too.
DEMO_OPTIONS = {"nsclc": {"rois": ["Lung-Left=lungs", "Lung-Right=lungs"]}}


def make_demo_inputs(out_dir: Path) -> dict[str, Path]:
    """Write the phantom downloads: 3 LiTS volumes (two batches, three orientations), 2 KiTS19 cases,
    2 NSCLC-Radiomics patients (one with two GTVs) and 2 LIDC-IDRI patients (four readers each)."""
    lits, kits = out_dir / "raw" / "lits", out_dir / "raw" / "kits19"
    write_lits_case(lits / "Training Batch 1", 0, axcodes=("R", "A", "S"))
    write_lits_case(lits / "Training Batch 1", 1, axcodes=("L", "P", "S"), gz=True)
    write_lits_case(lits / "Training Batch 2", 2, axcodes=("R", "P", "I"), shape=(48, 128, 128))
    for number in (0, 1):
        write_kits19_case(kits, number)
    nsclc, lidc = out_dir / "raw" / "NSCLC-Radiomics", out_dir / "raw" / "LIDC-IDRI"
    write_nsclc_case(nsclc, 1, tumours=2)
    write_nsclc_case(nsclc, 2)
    for number in (1, 2):
        write_lidc_case(lidc, number)
    deeplesion = write_deeplesion_phantom(out_dir / "raw" / "DeepLesion").root
    return {"lits": lits, "kits19": kits, "nsclc": nsclc, "lidc": lidc, "deeplesion": deeplesion}


def run_demo(out_dir: str | Path, workers: int = 1, progress: bool = True, train: bool = True) -> DemoResult:
    out_dir = Path(out_dir)
    inputs = make_demo_inputs(out_dir)
    reports, infos, previews = {}, {}, []
    for source, folder in inputs.items():
        store_path = out_dir / f"{source}.zarr"
        config = ConvertConfig(source=source, input_dir=str(folder), output=str(store_path),
                               workers=workers, overwrite=True, source_options=DEMO_OPTIONS.get(source, {}))
        reports[source] = convert_dataset(config, progress=progress, created_by=f"ctprep demo {out_dir}")
        infos[source] = store_info(store_path)
        store = SliceStore.open(store_path)
        case_id = store.case_ids()[0]
        previews.append(write_preview(store_path, case_id, out_dir / f"{source}_{case_id}.png"))
    labelling = demo_soft_masks(out_dir, previews, progress)
    training = demo_training(out_dir, progress) if train else ["training skipped (--no-train)"]
    return DemoResult(reports=reports, infos=infos, previews=previews, labelling=labelling, training=training)


def demo_soft_masks(out_dir: Path, previews: list[Path], progress: bool) -> list[str]:
    """Trimaps and soft masks: from RECIST axes (DeepLesion) and from the four readers (LIDC)."""
    from ctlabel.label import LabelConfig, label_store
    from ctlabel.preview import write_lesion_preview

    lines = []
    for source, evidence in (("deeplesion", "recist"), ("lidc", "readers")):
        store_path = out_dir / f"{source}.zarr"
        report = label_store(LabelConfig(store=str(store_path), source=evidence, overwrite=True), progress=progress)
        lines += report.lines()
        labelled = [o.case_id for o in report.with_status("labelled")]
        if labelled:
            previews.append(write_lesion_preview(store_path, labelled[0],
                                                 out_dir / f"{source}_{labelled[0]}_softmask.png"))
    return lines


def demo_training(out_dir: Path, progress: bool) -> list[str]:
    """A short CPU training of the U-Net baseline on the LiTS store, then its evaluation report."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ["training skipped: torch is not installed (pip install -e '.[train]')"]
    from ctseg.build import build_config
    from ctseg.predict import evaluate_checkpoint_run
    from ctseg.train import train

    run = out_dir / "runs" / "unet"
    # Tiny widths and crops so that it takes seconds on a CPU; every case trains and is
    # evaluated (three phantom cases cannot make a meaningful held-out split).
    config = build_config(model="unet", layers=[{
        "store": str(out_dir / "lits.zarr"), "target": ["tumour"], "out": str(run), "size": 64,
        "batch_size": 8, "steps_per_epoch": 20, "phases": [{"epochs": 4, "decay": "linear"}],
        "train_split": "all", "val_split": "all", "sampling": "balanced", "image_every": 0, "device": "cpu",
        "model_options": {"features": [16, 32, 64]}, "optimizers": {"net": {"lr": 1e-3}}}])
    result = train(config, progress=progress)
    lines = [f"ctseg: unet: {result.epoch} epochs, {result.step} steps; best training-set Dice "
             f"{result.best_metric:.3f}; run in {run}"]
    for output in evaluate_checkpoint_run(run, out_dir / "lits.zarr", "all", device="cpu", progress=progress):
        lines += output.lines()
    return lines
