"""The ``ctprep`` command line: thin wrappers over the library (heavy imports happen inside commands)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from lkbase.cli import EXIT_FAILED, fail_cleanly
from lkbase.errors import ParameterError

SOURCE_HELP = ("Raw dataset layout: lits, kits19, nsclc, lidc, deeplesion, or nifti (your own NIfTI pairs; "
               "Decathlon and nnU-Net v2 folders recognised).")


_fail_cleanly = fail_cleanly("ctprep")


def _floats(text: str | None, count: tuple[int, ...], what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers", param_hint=what) from None
    if len(values) not in count:
        raise click.BadParameter(f"{text!r}: expected {' or '.join(map(str, count))} numbers", param_hint=what)
    return values


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesionkit")
def main() -> None:
    """Convert public CT tumour datasets into HU-windowed Zarr slice stores.

    \b
    Start with:  ctprep demo demo_out        (phantom data, no download)
    Then:        ctprep convert --source kits19 --input kits19/data --output kits19.zarr
    """
    logging.basicConfig(level=logging.INFO, format="ctprep: %(message)s", stream=sys.stderr)
    for client in ("botocore", "aiobotocore", "s3fs", "fsspec"):  # their INFO lines ("Found credentials ...") are noise
        logging.getLogger(client).setLevel(logging.WARNING)


@main.command()
@click.option("--source", required=True, help=SOURCE_HELP)
@click.option("--input", "input_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of the download (searched recursively).")
@click.option("--output", required=True, type=click.Path(), help="Store to write, e.g. kits19.zarr.")
@click.option("--window", "windows", multiple=True, metavar="W",
              help="A channel: preset (lung, mediastinum, abdomen, liver, kidney, bone), 'L,W' or 'min:max', "
                   "optionally 'name=...'; a '/eq' suffix equalises each slice's histogram after windowing "
                   "(e.g. 100:400/eq). Repeat for several channels. Default: the dataset's manifest.")
@click.option("--spacing", metavar="Z,Y,X", help="Resample to this spacing in mm (one number: isotropic; 0 keeps an axis).")
@click.option("--size", metavar="Y,X", help="Resample slices to this in-plane size (one number: square).")
@click.option("--slices", default="all", show_default=True, metavar="MODE",
              help="all, lesion (tumour slices only) or lesion+K (plus K neighbours each side).")
@click.option("--keep-hu", is_flag=True, help="Also store raw HU as int16.")
@click.option("--cases", metavar="ID,ID", help="Only these case ids (comma-separated).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Cases converted in parallel.")
@click.option("--dask", "dask_scheduler", metavar="ADDRESS", default=None,
              help="Run one task per case on dask.distributed: a scheduler address (tcp://host:8786) or "
                   "'local[:N]' for a local cluster of N worker processes. The store must be reachable from "
                   "every worker.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store instead of resuming into it.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any case is skipped.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the patient-level split.")
@click.option("--split", "split_fractions", default="0.7,0.15,0.15", show_default=True, metavar="TR,VA,TE",
              help="Train, validation and test fractions (used when the dataset has no official split).")
@click.option("--folds", type=click.IntRange(min=2), default=None, metavar="K",
              help="k-fold cross-validation: give each train/val patient a fold 0..K-1 (seeded hash of the patient "
                   "id, --split-seed; all scans of a patient in one fold; test untouched), recorded in the manifest "
                   "under 'folds'; train with `ctseg train --fold I`. Later runs into the store keep it. "
                   "Default: no folds.")
@click.option("--roi", "rois", multiple=True, metavar="ROI[=LABEL]",
              help="nsclc: RTSTRUCT ROI to rasterise, matched case-insensitively (repeatable). "
                   "Default: the tumour (GTV-1 and its aliases). 'Lung-Left=lungs' stores it as label 'lungs'.")
@click.option("--gtvs", type=click.Choice(["merge", "separate", "both"]), default=None,
              help="nsclc: several GTVs (GTV-1, GTV-2, ...) merged into 'tumour', kept as gtv_1, gtv_2, ... "
                   "or both. Default: both.")
@click.option("--context", type=click.IntRange(min=0), default=None, metavar="K",
              help="deeplesion: neighbouring slices stored each side of a key slice. Default: 2.")
@click.option("--keep-noisy", is_flag=True, default=None,
              help="deeplesion: keep lesions flagged Possibly_noisy (skipped by default).")
@click.option("--dicom-window", is_flag=True, default=None,
              help="deeplesion: add a channel 'dicom' windowed by each row's own DICOM_windows.")
@click.option("--images", default=None, metavar="GLOB",
              help="nifti: images below --input, e.g. 'imagesTr/*.nii.gz' (the * is the case id). "
                   "Default: the folder's dataset.json (Decathlon or nnU-Net v2 layout).")
@click.option("--labels", default=None, metavar="PATTERN", help="nifti: each image's label file, e.g. 'labelsTr/{id}.nii.gz'.")
@click.option("--label-map", default=None, metavar="MAP",
              help="nifti: 'liver=1+2,tumour=2', JSON text or a JSON file (default: dataset.json's labels).")
@click.option("--lesion-label", default=None, metavar="NAME",
              help="nifti: the label that is the lesion (default: one named tumour/cancer/lesion/nodule/...).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def convert(source, input_dir, output, windows, spacing, size, slices, keep_hu, cases, workers, dask_scheduler,
            overwrite, strict, split_seed, split_fractions, folds, rois, gtvs, context, keep_noisy, dicom_window,
            images, labels, label_map, lesion_label, quiet) -> None:
    """Convert a raw dataset folder into a slice store.

    Re-running the same command resumes: complete cases are kept, interrupted ones redone.
    Bad cases are skipped and listed; the exit status is non-zero only when nothing
    was converted (or, with --strict, when anything was skipped).

    \b
    Examples:
      ctprep convert --source lits --input LiTS/ --output lits.zarr --window liver --window abdomen
      ctprep convert --source kits19 --input kits19/data --output kits19.zarr \\
          --spacing 3,0,0 --size 256 --slices lesion+2 --workers 2
    """
    from ctprep.convert import ConvertConfig, convert_dataset
    from ctprep.conversion_manifest import manifest_path
    from ctprep.datasets import SplitConfig
    from ctprep.windowing import parse_window

    spacing_values = _floats(spacing, (1, 3), "--spacing")
    if spacing_values is not None and len(spacing_values) == 1:
        spacing_values = spacing_values * 3
    size_values = _floats(size, (1, 2), "--size")
    if size_values is not None:
        size_values = tuple(int(v) for v in (size_values * 2 if len(size_values) == 1 else size_values))
    fractions = _floats(split_fractions, (3,), "--split")
    config = ConvertConfig(
        source=source, input_dir=input_dir, output=output,
        windows=tuple(parse_window(w) for w in windows), spacing=spacing_values, size=size_values,
        slices=slices, keep_hu=keep_hu,
        cases=tuple(c.strip() for c in cases.split(",") if c.strip()) if cases else None,
        workers=workers, dask=dask_scheduler, overwrite=overwrite, strict=strict,
        split=SplitConfig(seed=split_seed, fractions=fractions), folds=folds,
        source_options=_source_options(rois=list(rois) or None, gtvs=gtvs, context=context, keep_noisy=keep_noisy,
                                        dicom_window=dicom_window, images=images, labels=labels,
                                        label_map=_label_map_text(label_map), lesion_label=lesion_label),
    )
    report = convert_dataset(config, progress=not quiet)
    for line in report.lines():
        click.echo(line)
    click.echo(f"manifest: {manifest_path(output)}")
    done = report.with_status("converted") + report.with_status("existing")
    if not done or (strict and report.with_status("skipped")):
        sys.exit(EXIT_FAILED)


def _label_map_text(label_map: str | None) -> str | None:
    """A --label-map JSON file's text (so that workers and the manifest see the map, not a path)."""
    if label_map and label_map.endswith(".json") and Path(label_map).is_file():
        return Path(label_map).read_text()
    return label_map


def _source_options(**given) -> dict:
    """The source-specific flags the user set (the source rejects those it does not take)."""
    return {name: value for name, value in given.items() if value is not None}


@main.command()
@click.option("--source", required=True, help=SOURCE_HELP)
@click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of the download.")
@_fail_cleanly
def check(source, input_dir) -> None:
    """Compare a download with the dataset's manifest: missing, unexpected and unreadable cases.

    Exits 1 when anything is off.
    """
    from ctprep.commands.check import check_download

    report = check_download(source, input_dir)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (case ids included).")
@click.option("--cases", "list_cases", is_flag=True, help="Also list every case: id, split, slices, lesion slices.")
@click.option("--fingerprint", is_flag=True,
              help="Also compute the dataset fingerprint per split (spacing, shape, intensity percentiles 0.5/50/99.5 "
                   "overall and in the lesion, lesion sizes in voxels, mm3 and equivalent diameter) and write it "
                   "into the store's manifest and the manifest file beside it (key 'fingerprint').")
@_fail_cleanly
def info(store, as_json, list_cases, fingerprint) -> None:
    """Summarise a store: cases, slices, lesion slices, windows, labels, size and compression.

    A predictions store (`ctseg predict --output`): its dataset store and whether it still
    matches, its cases and prediction labels, size.

    \b
    Example:
      ctprep info lits.zarr --fingerprint     (reads every case: minutes for a large store)
    """
    import dataclasses

    from ctprep.commands.info import store_info

    summary = store_info(store)
    extra: dict = {}
    if fingerprint:
        from ctprep.commands.fingerprint import fingerprint as compute, save_fingerprint

        extra["fingerprint"] = compute(store)
        save_fingerprint(store, extra["fingerprint"])
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(summary) | {"compression_ratio": summary.compression_ratio} | extra,
                              indent=2))
        return
    for line in summary.lines() + (summary.case_lines() if list_cases else []):
        click.echo(line)
    if fingerprint:
        from ctprep.commands.fingerprint import fingerprint_lines

        for line in fingerprint_lines(extra["fingerprint"]):
            click.echo(line)


@main.command()
@click.argument("store")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder of the page.  [default: STORE.report beside a local store]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def report(store, out, quiet) -> None:
    """Write a browsable HTML page of a store: manifest summary, one thumbnail per case at its
    largest lesion slice with label outlines (sortable by lesion volume), quirks and skipped cases.

    Thumbnails are written once and reused while a case is unchanged; open OUT/index.html.
    """
    from ctprep.commands.report import write_store_report

    for line in write_store_report(store, out, progress=not quiet).lines():
        click.echo(line)


@main.command()
@click.argument("store")
@click.option("--case", "case_id", required=True, help="Case id, as listed by `ctprep info STORE --cases`.")
@click.option("--z", "zs", type=int, multiple=True,
              help="Stored slice number (repeatable). Default: the slice with the most lesion.")
@click.option("--channel", default=0, show_default=True, help="Which window to show.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--label", "labels", multiple=True,
              help="Label to draw (repeatable). Default: every stored label of the case.")
@_fail_cleanly
def preview(store, case_id, zs, channel, out, labels) -> None:
    """Write a PNG of stored slices with the outline of each label.

    Given a predictions store, draws its predictions (and the truth labels) over the images
    of the dataset store it refers to.

    Every label has its own colour and legend entry; float labels (pred_*, soft_*) are outlined at
    0.5. Tiles show the canonical orientation (R/L, A/P) and a scale bar in mm.
    """
    from ctprep.commands.preview import write_preview

    click.echo(f"wrote {write_preview(store, case_id, out, zs, channel, labels)}")


@main.command()
@click.argument("store")
@click.option("--case", "case_id", required=True, help="Case id, as listed by `ctprep info STORE --cases`.")
@click.option("--label", "labels", required=True, multiple=True,
              help="Stored label: ground truth (e.g. tumour) or a prediction (pred_<run>); repeatable for "
                   "rtstruct/seg (one ROI/segment each). 'image' (a window) or 'hu' (--keep-hu stores): the CT.")
@click.option("--format", "fmt", type=click.Choice(["nifti", "rtstruct", "seg"]), default="nifti", show_default=True,
              help="nifti: on the source grid with its affine; rtstruct/seg: DICOM referring to the source "
                   "series (DICOM-sourced cases; needs --dicom).")
@click.option("--dicom", "dicom_dir", type=click.Path(file_okay=False),
              help="The original CT series folder of the case (a store keeps no paths); checked against the "
                   "case's recorded grid and input digest.")
@click.option("--channel", default=0, show_default=True, help="--label image: which window.")
@click.option("--threshold", default=0.5, show_default=True, help="rtstruct/seg: cut-off for float labels.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write (.nii/.nii.gz for nifti, .dcm for rtstruct/seg).")
@_fail_cleanly
def export(store, case_id, labels, fmt, dicom_dir, channel, threshold, out) -> None:
    """Write a stored label (or the CT) back on the case's original grid, as NIfTI or DICOM RTSTRUCT/SEG.

    Undoes the canonical reorientation and any resampling (nearest neighbour for masks,
    linear for probabilities and the image); slices left out by --slices are written as 0.
    """
    from ctprep.commands.export import export_label_nifti
    from ctprep.commands.export_dicom import IMAGE_LABELS, export_image_nifti, export_labels_dicom

    if fmt != "nifti":
        if not dicom_dir:
            raise ParameterError(f"--format {fmt} needs --dicom DIR, the case's original CT series folder")
        lines = export_labels_dicom(store, case_id, labels, dicom_dir, out, fmt, threshold=threshold).lines()
    elif len(labels) != 1:
        raise ParameterError(f"--format nifti writes one label per file, found {len(labels)}: {', '.join(labels)}")
    elif labels[0] in IMAGE_LABELS:
        lines = export_image_nifti(store, case_id, labels[0], out, channel=channel)
    else:
        lines = export_label_nifti(store, case_id, labels[0], out).lines()
    for line in lines:
        click.echo(line)


@main.command()
@click.argument("store")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def verify(store, quiet) -> None:
    """Check a store against the checksums recorded when it was written.

    Recomputes every chunk's checksum and compares it with the case's record and the
    conversion manifest, checks the slice index against the cases and the labels
    against the label map. Reports problems by case; exits 1 if there are any.
    """
    from ctprep.commands.verify import verify_store

    report = verify_store(store, progress=not quiet)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("store")
@click.option("--also", "extra", multiple=True, type=click.Path(exists=True),
              help="Other files or folders to scan too, e.g. conversion logs (repeatable).")
@_fail_cleanly
def audit(store, extra) -> None:
    """Scan a store, its manifest and logs for values that look like PHI.

    Looks for DICOM PHI attribute names and tags, DICOM person names (FAMILY^GIVEN),
    birth dates, e-mail addresses and telephone numbers in every JSON and text file.
    Exits 1 if anything is found.
    """
    from ctprep.commands.audit import audit_store

    report = audit_store(store, list(extra))
    for line in report.lines():
        click.echo(line)
    if not report.clean:
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("manifest")
@click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of the raw download the store was made from.")
@click.option("--output", required=True, type=click.Path(), help="Store to write.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Cases rebuilt in parallel.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def rebuild(manifest, input_dir, output, workers, quiet) -> None:
    """Rebuild a store from its MANIFEST (x.manifest.json) and the raw download.

    Checks the input files' sha256 against the manifest first, converts the same cases
    with the same parameters, then compares every case's chunk checksums with the
    manifest's. Exits 1 unless every case is identical.
    """
    from ctprep.commands.rebuild import rebuild_store

    report = rebuild_store(manifest, input_dir, output, workers=workers, progress=not quiet)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    main()
