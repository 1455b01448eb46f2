"""The ``ctlabel`` command line: thin wrappers over ctlabel's library (heavy imports inside commands)."""

from __future__ import annotations

import sys

import click

from lkbase.cli import EXIT_FAILED, fail_cleanly

FROM_HELP = ("Evidence: recist (RECIST axes in the case annotations, e.g. DeepLesion), readers (LIDC "
             "reader masks: --intersection/--union) or mask (a binary label's connected components per slice).")


_fail_cleanly = fail_cleanly("ctlabel")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesionkit")
def main() -> None:
    """Trimaps and soft masks (closed-form matting) for the lesions of a ctprep store.

    \b
    ctlabel softmask lits.zarr --from mask --label tumour     trimap_tumour + soft_tumour
    ctlabel softmask deeplesion.zarr --recist                 trimap_recist + soft_recist
    ctlabel soften lits.zarr --soft soft_tumour --binary tumour
    ctlabel preview deeplesion.zarr --case 000089_01_01_037 --out lesions.png   (ids: ctprep info STORE --cases)
    """


def _labelling_options(func):
    options = [
        click.argument("store"),
        click.option("--from", "source", type=click.Choice(["recist", "readers", "mask"]), help=FROM_HELP),
        click.option("--label", help="--from mask: the binary label (default: the store's lesion label)."),
        click.option("--intersection", default="nodule_all", show_default=True,
                     help="--from readers: label where all readers agree (foreground)."),
        click.option("--union", default="nodule_any", show_default=True,
                     help="--from readers: label where any reader marked."),
        click.option("--name", help="Output suffix: trimap_NAME, soft_NAME. Default: recist, nodule, or the --label."),
        click.option("--band-fraction", type=click.FloatRange(min=0), default=0.1, show_default=True,
                     help="Unknown band on each side of the border, as a fraction of the lesion's diameter."),
        click.option("--min-band-mm", type=click.FloatRange(min=0), default=1.0, show_default=True,
                     help="Narrowest band (mm)."),
        click.option("--max-band-mm", type=click.FloatRange(min=0), default=10.0, show_default=True,
                     help="Widest band (mm)."),
        click.option("--margin-mm", type=click.FloatRange(min=0), default=2.0, show_default=True,
                     help="--from readers: background starts this far outside the readers' union."),
        click.option("--iterations", type=click.IntRange(min=1), default=2, show_default=True,
                     help="--from recist: GrabCut iterations."),
        click.option("--channels", metavar="WINDOW,WINDOW",
                     help="Stored windows GrabCut and matting see (names as stored, e.g. lung or dicom). Default: "
                          "DeepLesion's own DICOM window when stored, else the manifest's lesion window (lung for "
                          "NSCLC/LIDC, liver for LiTS, kidney for KiTS19), else all stored windows; the choice "
                          "is recorded in the labels' attributes."),
        click.option("--cases", metavar="ID,ID", help="Only these case ids."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Cases processed in parallel (local processes)."),
        click.option("--dask", "dask_scheduler", metavar="ADDRESS",
                     help="Run one task per lesion on dask.distributed: a scheduler address (tcp://host:8786) or "
                          "'local[:N]' for a local cluster of N worker processes. This process reads the crops "
                          "and writes the labels; workers need no access to the store. Same labels as a local run."),
        click.option("--overwrite", is_flag=True, help="Replace outputs made with other parameters."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_labelling(*, matting: bool, store, source, label, intersection, union, name, band_fraction, min_band_mm,
                   max_band_mm, margin_mm, iterations, channels, cases, workers, dask_scheduler, overwrite, quiet, epsilon=None,
                   max_unknown=None, recist_from=None) -> None:
    from ctlabel.label import LabelConfig, label_store
    from ctlabel.matting import MattingParams
    from ctlabel.trimap import TrimapParams

    if source is None:
        raise click.UsageError("choose the evidence with --from recist|readers|mask (or --recist)")
    config = LabelConfig(
        store=store, source=source, name=name, label=label, recist_from=recist_from, intersection=intersection, union=union,
        matting=matting, channels=_names(channels),
        trimap=TrimapParams(band_fraction=band_fraction, min_band_mm=min_band_mm, max_band_mm=max_band_mm,
                            readers_margin_mm=margin_mm, grabcut_iterations=iterations),
        matting_params=MattingParams(**{k: v for k, v in (("epsilon", epsilon), ("max_unknown", max_unknown))
                                        if v is not None}),
        cases=_names(cases), workers=workers, dask=dask_scheduler, overwrite=overwrite)
    report = label_store(config, progress=not quiet)
    for line in report.lines():
        click.echo(line)
    if not report.with_status("labelled") and not report.with_status("existing"):
        sys.exit(EXIT_FAILED)


def _names(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option as a tuple (None when not given)."""
    return tuple(c.strip() for c in text.split(",") if c.strip()) or None if text else None


@main.command()
@_labelling_options
@_fail_cleanly
def trimap(**options) -> None:
    """Write trimap_NAME (uint8: 0 background, 128 unknown, 255 foreground) for every lesion.

    Resumable: cases whose trimap exists with the same parameters are kept.
    Lesions that cannot be labelled are skipped and listed.
    """
    _run_labelling(matting=False, **options)


@main.command()
@_labelling_options
@click.option("--recist", "recist_flag", is_flag=True, help="Shorthand for --from recist.")
@click.option("--recist-from", metavar="LABEL",
              help="RECIST measured on a binary mask label (implies --from recist): per 3D connected lesion, "
                   "the longest diameter on its largest slice and the longest diameter perpendicular to it "
                   "(DeepLesion's rule). SoftGAN's RECIST experiment on NSCLC, LiTS, KiTS19, LIDC stores; "
                   "score it with ctlabel evaluate --reference LABEL.")
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=1e-7, show_default=True,
              help="Closed-form matting regularisation (larger: smoother alpha).")
@click.option("--max-unknown", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Lesions with more unknown pixels are solved on a coarser grid (0: always full resolution).")
@_fail_cleanly
def softmask(recist_flag, recist_from, **options) -> None:
    """Trimap and closed-form matting in one: trimap_NAME and soft_NAME (float32 alpha in [0, 1]).

    \b
    Examples:
      ctlabel softmask deeplesion.zarr --recist --workers 2
      ctlabel softmask deeplesion.zarr --recist --dask tcp://scheduler:8786
      ctlabel softmask lidc.zarr --from readers
      ctlabel softmask lits.zarr --from mask --label tumour
      ctlabel softmask nsclc.zarr --recist-from tumour
    """
    if recist_flag or recist_from:
        if options["source"] not in (None, "recist"):
            flag = "--recist-from" if recist_from else "--recist"
            raise click.UsageError(f"{flag} contradicts --from {options['source']}")
        options["source"] = "recist"
    _run_labelling(matting=True, recist_from=recist_from, **options)


@main.command()
@click.argument("store")
@click.option("--soft", required=True, help="The soft mask label, e.g. soft_tumour.")
@click.option("--binary", help="The binary label to soften with, e.g. tumour: writes softened_NAME = max(soft, binary).")
@click.option("--threshold", type=float, default=None,
              help="Write binary_NAME = soft >= T (0.5 when --binary is not given).")
@click.option("--name", help="Output suffix (default: the soft label without 'soft_').")
@click.option("--cases", metavar="ID,ID", help="Only these case ids.")
@_fail_cleanly
def soften(store, soft, binary, threshold, name, cases) -> None:
    """Softened labels max(soft, binary) (SoftGAN) and/or soft masks binarised at --threshold."""
    from ctlabel.soften import SoftenConfig, soften_store

    report = soften_store(SoftenConfig(
        store=store, soft=soft, binary=binary, threshold=threshold, name=name,
        cases=tuple(c.strip() for c in cases.split(",") if c.strip()) if cases else None))
    for line in report.lines():
        click.echo(line)


@main.command()
@click.argument("store")
@click.option("--case", "case_id", required=True, help="Case id.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--name", help="Which trimap_NAME / soft_NAME (default: the only one).")
@click.option("--channel", default=0, show_default=True, help="Which stored window to show.")
@click.option("--max-lesions", default=12, show_default=True, type=click.IntRange(min=1),
              help="At most this many lesions in the grid (the largest first).")
@_fail_cleanly
def preview(store, case_id, out, name, channel, max_lesions) -> None:
    """PNG grid of a case's lesions: slice with RECIST axes and outlines, trimap, soft mask."""
    from ctlabel.preview import write_lesion_preview

    click.echo(f"wrote {write_lesion_preview(store, case_id, out, name=name, channel=channel, max_lesions=max_lesions)}")


@main.command()
@click.argument("store")
@click.option("--label", required=True, help="The soft label to score, e.g. soft_recist.")
@click.option("--reference", required=True, help="The binary reference label, e.g. tumour.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for lesions.csv, cases.csv, evaluation.json "
              "and evaluation.html (default: print only).")
@click.option("--worst", default=12, show_default=True, type=click.IntRange(min=0),
              help="Lesions shown as panels on the HTML page (lowest Dice at 0.5).")
@click.option("--cases", metavar="ID,ID", help="Only these case ids.")
@_fail_cleanly
def evaluate(store, label, reference, out, worst, cases) -> None:
    """Score a soft label against a reference mask, per lesion and per case.

    Prints Dice and IoU at 0.5, SoftGAN's figures (soft mask binarised at 128/255: Dice, IoU,
    ACC; AUC of alpha) and the RECIST ellipse's Dice as the baseline.

    \b
      ctlabel evaluate nsclc.zarr --label soft_recist --reference tumour --out eval/
    """
    from ctlabel.evaluate import evaluate_store
    from ctlabel.evaluate_page import write_evaluation

    evaluation = evaluate_store(store, label, reference, _names(cases))
    for line in evaluation.lines():
        click.echo(line)
    if out:
        for path in write_evaluation(evaluation, out, worst):
            click.echo(f"wrote {path}")
    if not evaluation.lesions:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    main()
