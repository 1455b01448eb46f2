"""The ``ctseg`` command line: thin wrappers over ctseg.train / ctseg.predict / ctseg.evaluate.

Convention: every command checks what it can of its arguments before torch is imported
(torch takes seconds to import): ``--help``, ``ctseg models`` (the torch-free catalogue
of ctseg.models.registry), a missing model, store or target (ctseg.config.require_keys,
ctseg.models.registry.check_name) and a missing checkpoint file
(ctseg.checkpoint.require_file) answer at once; tests/ctseg/test_cli_speed.py checks
that they do not import torch.
"""

from __future__ import annotations

import click

from lkbase.cli import fail_cleanly

_fail_cleanly = fail_cleanly("ctseg")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesionkit")
def main() -> None:
    """Train and run GAN tumour segmentors on ctprep slice stores.

    \b
    ctseg models                                   the registered models
    ctseg train --model unet --store S.zarr --target tumour --out runs/unet
    ctseg predict --checkpoint runs/unet/best.pt --store S.zarr
    ctseg predict --checkpoint runs/unet/best.pt --input ct.nii.gz (or a DICOM folder) --format nifti,seg
    """


# Flags that map straight onto TrainConfig keys (None: not given).
_FLAG_KEYS = {"epochs": "epochs", "batch_size": "batch_size", "size": "size", "workers": "workers",
              "device": "device", "amp": "amp", "seed": "seed", "max_steps": "max_steps", "crop": "crop",
              "sampling": "sampling", "threshold": "threshold"}


@main.command()
@click.option("--model", help="Registered model name (see `ctseg models`). Required, unless --config or --resume gives it.")
@click.option("--store", type=click.Path(), help="Slice store to train from (path or URL). Required, unless --config "
              "or --resume gives it.")
@click.option("--target", help="Label to learn (several: comma-separated). Required, unless --config or --resume "
              "gives it.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoints, logs).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of config keys.")
@click.option("--preset", help="A preset of the model, e.g. `paper`.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt, exactly.")
@click.option("--epochs", type=int, help="Training epochs in all (default: the model's phases).")
@click.option("--batch-size", type=int, help="Slices per batch (default: the model's).")
@click.option("--size", type=int, help="Model input size (square crops or resized slices).")
@click.option("--crop", type=click.Choice(["lesion", "random", "center", "resize"]),
              help="How --size inputs are cut: around lesions (mixed with crops elsewhere), at random, at the "
                   "centre, or whole slices resized (default: the model's).")
@click.option("--sampling", type=click.Choice(["all", "lesion_only", "balanced"]),
              help="Which slices batches are drawn from (default: the model's).")
@click.option("--workers", type=int, help="DataLoader worker processes.")
@click.option("--device", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]),
              help="Mixed precision on CUDA (auto: bf16 where supported, else fp16; off on the CPU).")
@click.option("--seed", type=int, help="Seed of sampling, augmentation and initialisation (default 0).")
@click.option("--threshold", type=float, help="Binarisation threshold of probabilities.")
@click.option("--max-steps", type=int, help="Stop (and checkpoint) after this many steps in total.")
@click.option("--fold", type=int, default=None, metavar="I",
              help="Cross-validation: validate on fold I of a store converted with --folds K, train on the other "
                   "folds (sets val_split=fold=I, train_split=fold!=I; the test split is never used). Default: the "
                   "store's train/val split.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Any config key (dotted for nested: optimizers.g.lr=1e-4); repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def train(model, store, target, out, config_file, preset, resume, fold, assignments, quiet, **flags) -> None:
    """Train a model from a store (one loop for every model; DDP under torchrun)."""
    from pathlib import Path

    from ctseg.config import load_yaml, merge_layers, parse_assignment, require_keys
    from ctseg.errors import ConfigError
    from ctseg.models.registry import check_name

    layers: list[dict] = []
    if resume:
        from ctseg.checkpoint import load

        saved = load(Path(out) / "last.pt")["config"]
        model = model or saved["model"]
        layers.append({**saved, "max_steps": None})  # a resumed run goes on unless given --max-steps again
    if config_file:
        layers.append(load_yaml(config_file))
    explicit = {"store": store, "target": target, "out": out}
    explicit.update({key: flags[name] for name, key in _FLAG_KEYS.items() if flags.get(name) is not None})
    layers.append({k: v for k, v in explicit.items() if v is not None})
    if fold is not None:
        from ctseg.folds import fold_splits

        layers.append(fold_splits(fold))
    layers += [parse_assignment(a) for a in assignments]
    model = model or next((layer["model"] for layer in layers if "model" in layer), None)
    if not model:
        raise ConfigError("--model is required (or a config file naming one)")
    require_keys(merge_layers([{"model": check_name(model)}, *layers]))  # before torch is imported

    from ctseg.build import build_config

    config = build_config(model=model, layers=layers, preset=preset)

    from ctseg.train import train as run_training

    result = run_training(config, resume=resume, progress=not quiet)
    best = f", best val Dice {result.best_metric:.4f} (epoch {result.best_epoch})" if result.best_epoch > 0 else ""
    click.echo(f"ctseg: {config.model}: {result.epoch} epochs, {result.step} steps ({result.stopped}){best}; "
               f"run in {result.run_dir}")


def _inference_options(command):
    """The options predict and evaluate share: how slices go through the model, how masks are cleaned."""
    options = [
        click.option("--tta", is_flag=True, help="Flip test-time augmentation (mean over x and y flips)."),
        click.option("--window", is_flag=True, help="Crop-trained models: sliding windows of the training size, "
                                                    "Gaussian-weighted (default: the whole slice at once)."),
        click.option("--largest", type=int,
                     help="Keep the N largest 3D connected components of each mask (0: all). Default: the run's "
                          "(config key largest, 1 unless set); any post-processing flag replaces the run's."),
        click.option("--min-size-mm3", type=float,
                     help="Drop 3D connected components smaller than this volume (default: the run's, 0)."),
        click.option("--organ", help="Keep predictions inside this stored organ label (liver for LiTS, kidney for "
                                     "KiTS19, lungs for NSCLC); cases without it are left as they are."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _inference(tta: bool, window: bool, largest: int | None, min_size_mm3: float | None, organ: str | None,
               batch_size: int = 16):
    """InferenceOptions and PostProcess of the flags; PostProcess None (the run's own) when none is given."""
    from ctseg.inference import InferenceOptions
    from ctseg.postprocess import PostProcess

    given = largest is not None or min_size_mm3 is not None or organ is not None
    post = PostProcess(largest=largest or 0, min_size_mm3=min_size_mm3 or 0.0, organ=organ) if given else None
    return InferenceOptions(tta=tta, window=window, batch_size=batch_size), post


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="best.pt or last.pt of a run.")
@click.option("--store", type=click.Path(), help="Dataset store to predict (path or URL). Without --output the "
              "predictions are added to it as labels.")
@click.option("--output", type=click.Path(),
              help="With --store: a predictions store to write instead (path or URL; created if absent, resumed if "
                   "interrupted): only the prediction labels, naming the dataset store, which stays unchanged. "
                   "Recommended.")
@click.option("--input", "input_path", type=click.Path(),
              help="Instead of --store: a CT as a NIfTI file, a DICOM series folder, or a folder of them.")
@click.option("--out", type=click.Path(file_okay=False),
              help="With --input: output folder (default: beside a NIfTI input, the series folder's parent).")
@click.option("--format", "formats", default="nifti", show_default=True,
              help="With --input: comma-separated nifti, rtstruct, seg (the DICOM ones need a DICOM input).")
@click.option("--series", help="With --input: the SeriesInstanceUID to predict when a folder holds several, or 'all'.")
@click.option("--overwrite", is_flag=True, help="With --input: replace existing output files.")
@click.option("--cases", multiple=True, help="Case ids (repeat or comma-separate); default all.")
@click.option("--name", help="Run name in the label names pred_<name>[_mask] (default: the run folder).")
@click.option("--threshold", type=float, help="Binarisation threshold (default: the run's).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
@click.option("--batch-size", default=16, show_default=True, help="Slices per forward (0: by free GPU memory).")
@_inference_options
@click.option("--export-nifti", type=click.Path(file_okay=False),
              help="Also write each prediction as <case>_<label>.nii.gz on the case's original grid.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def predict(checkpoint, store, output, input_path, out, formats, series, overwrite, cases, name, threshold, device,
            batch_size, export_nifti, quiet, **inference) -> None:
    """Predict cases slice by slice.

    With --store and --output (recommended): writes pred_<run> (probabilities) and
    pred_<run>_mask per case into the predictions store OUTPUT, which refers to the dataset
    store; the dataset store is only read. Cases already predicted there the same way are kept.

    With --store alone: writes the same labels into the dataset store itself.

    With --input: reads CT files with the run's windows, spacing and size (recorded in the
    checkpoint) and writes <name>_pred_<run>_mask.nii.gz on the input's own grid, plus a
    DICOM RTSTRUCT and/or SEG referring to a DICOM input series (--format rtstruct,seg).
    """
    from ctseg.checkpoint import require_file

    if (store is None) == (input_path is None):
        raise click.UsageError("give exactly one of --store or --input")
    if output is not None and store is None:
        raise click.UsageError("--output is a predictions store of --store; with --input use --out")
    require_file(checkpoint)  # before torch is imported
    if input_path is not None:
        from ctseg.predict_file import parse_formats, predict_files

        done = predict_files(checkpoint, input_path, out=out, formats=parse_formats(formats), series=series,
                             threshold=threshold, name=name, device=device, batch_size=batch_size,
                             overwrite=overwrite, progress=not quiet)
        for item in done:
            click.echo(f"ctseg: {item.line()}")
        click.echo(f"ctseg: predicted {len(done)} input(s)")
        return
    from ctseg.predict import predict_store

    wanted = [c.strip() for text in cases for c in text.split(",") if c.strip()] or None
    done = predict_store(checkpoint, store, cases=wanted, name=name, threshold=threshold, device=device,
                         batch_size=batch_size, progress=not quiet, export_nifti=export_nifti, output=output,
                         **dict(zip(("inference", "post"), _inference(batch_size=batch_size, **inference))))
    labels = sorted({label for case in done for label in case.labels})
    kept = sum(case.kept for case in done)
    click.echo(f"ctseg: predicted {len(done) - kept} case(s) into {output or store}"
               + (f" (predictions of {store})" if output else "")
               + (f", kept {kept} already there" if kept else "") + f": labels {', '.join(labels)}"
               + (f"; NIfTI in {export_nifti}" if export_nifti else ""))


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Run folder of `ctseg train`.")
@click.option("--store", help="Dataset store (a path or an fsspec URL). Required, unless --predictions names it.")
@click.option("--predictions", type=click.Path(),
              help="A predictions store (`ctseg predict --output`): read the run's predictions from it (predicting "
                   "missing cases into it) and the truth from its dataset store (the one it names, or --store, "
                   "which must be that one). Default: predictions in the dataset store itself.")
@click.option("--split", default="test", show_default=True, help="train, val, test or all.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Default: RUN/best.pt (else last.pt).")
@click.option("--threshold", type=float, help="Binarisation threshold (default: the run's).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
@_inference_options
@click.option("--protocol", "protocols", multiple=True, metavar="PAPER",
              help="Also score as a seed paper did (ctumorgan, segan, crgan, lgan, casgan; repeatable): "
                   "writes protocol_<PAPER>.csv/.json next to the report and prints paper vs measured.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def evaluate(run_dir, store, predictions, split, checkpoint, threshold, device, protocols, quiet, **inference) -> None:
    """Evaluate a run on a split: predicts the cases if needed, then per-case and global metrics.

    Predictions are read from (and missing ones written to) the dataset store, or with
    --predictions from a predictions store; the truth always from the dataset store.

    Writes RUN/eval/<split>/ per_case.csv, per_case.json, per_slice.csv, summary.json and
    report.html (metrics table, box plots, best and worst cases). A model with other outputs
    (crgan: G alone) also gets outputs.csv/.json: each output's Dice next to the final one.
    """
    from ctseg.protocols import check_name

    for name in protocols:
        check_name(name)  # before anything is predicted
    if store is None and predictions is None:
        raise click.UsageError("give --store, or --predictions (a predictions store names its dataset store)")
    from ctseg.outputs import compare_run_outputs
    from ctseg.predict import evaluate_checkpoint_run
    from ctseg.protocols import protocol_for_evaluation

    for output in evaluate_checkpoint_run(run_dir, store, split, checkpoint=checkpoint, device=device,
                                          threshold=threshold, progress=not quiet, predictions=predictions,
                                          **dict(zip(("inference", "post"), _inference(**inference)))):
        for line in output.lines():
            click.echo(line)
        for name in protocols:
            for line in protocol_for_evaluation(name, output.evaluation, output.folder).lines():
                click.echo(line)
        for line in compare_run_outputs(run_dir, output, checkpoint=checkpoint, device=device):
            click.echo(line)


@main.group()
def recipe() -> None:
    """Paper recipes (recipes/*.yaml): convert, label, train and evaluate as a paper did."""


@recipe.command("run")
@click.argument("recipe_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "raw", required=True, type=click.Path(file_okay=False), help="The raw download.")
@click.option("--work", required=True, type=click.Path(file_okay=False), help="Folder for the store and the run.")
@click.option("--budget", type=click.Choice(["paper", "tiny"]), default="paper", show_default=True,
              help="tiny: a few training steps on 32 x 32 inputs (a smoke run, e.g. on phantoms).")
@_fail_cleanly
def run_recipe_command(recipe_file, raw, work, budget) -> None:
    """Run a recipe end to end and print the paper's figures next to the measured ones.

    RECIPE_FILE is one of recipes/*.yaml (docs/models.md, "Reproducing the papers"). Each step
    (ctprep convert, the recipe's ctlabel steps, ctseg train, ctseg evaluate) is echoed as its
    command line and run in this process; WORK gets store.zarr and run/.

    \b
    Example:
      ctseg recipe run recipes/ctumorgan-lits.yaml --input LiTS/ --work runs/ctumorgan-lits
    """
    from ctlabel.cli import main as ctlabel
    from ctprep.cli import main as ctprep
    from ctseg.recipe import run_recipe

    run_recipe(recipe_file, raw, work, budget, programs={"ctprep": ctprep, "ctlabel": ctlabel, "ctseg": main},
               echo=click.echo)


@main.command("models")
def list_models() -> None:
    """List the registered models."""
    from ctseg.models.registry import CATALOGUE

    width = max(len(n) for n in CATALOGUE)
    for name in sorted(CATALOGUE):
        click.echo(f"{name.ljust(width)}  {CATALOGUE[name]}")


if __name__ == "__main__":  # torchrun -m ctseg.cli train ...
    main()
