"""Prediction without a store: ``ctseg predict --checkpoint RUN/best.pt --input CT``.

``CT`` is a NIfTI file, a DICOM series folder, or a folder of them. Each input is read
with ctprep's readers onto the canonical grid (ctprep.formats.nifti / ctprep.formats.dicom),
given the run's preprocessing as recorded in the checkpoint (ctseg.preprocessing: its
windows, ``--spacing`` and ``--size``), predicted with ctseg.predict.predict_volume, and
put back on the input's own grid with ctprep.commands.export's inverse mapping (the
probabilities are resampled back linearly, then thresholded). Written per input:

* ``<stem>_pred_<run>_mask[_<target>].nii.gz``: the uint8 mask with the input's affine
  (``<stem>``: the NIfTI name without suffix, or the series folder's name);
* for a DICOM input, with ``--format rtstruct`` and/or ``seg``: ``<stem>_pred_<run>_rtstruct.dcm``
  (one ROI per target, rt-utils) and ``<stem>_pred_<run>_seg.dcm`` (one binary segment per
  target, highdicom), referring to the input series (ctprep.formats.dicom_outputs, which
  also states what of the input header they copy and why).

Everything is checked before anything is written: formats, the checkpoint's windows
against what a CT can give, the inputs' series, and existing outputs (refused unless
``overwrite``). A DICOM folder holding several series is refused with their list unless
``series`` names one (or ``"all"``). Outputs go beside a NIfTI input, into the DICOM
series folder's parent, or into ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.geometry import Geometry, SourceGrid
from ctseg.errors import ConfigError
from ctseg.preprocessing import Preprocessing

FORMATS = ("nifti", "rtstruct", "seg")
DICOM_FORMATS = ("rtstruct", "seg")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """One CT found under ``--input``: a NIfTI file or the files of one DICOM series."""

    kind: str  # nifti | dicom
    path: Path  # the NIfTI file or the series folder
    stem: str
    files: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("nifti", "dicom"):
            raise ConfigError(f"input kind must be nifti or dicom, found {self.kind!r}")


@dataclass(frozen=True, kw_only=True, eq=False)
class InputCT:
    """An input read onto the canonical grid: int16 HU, its geometry and the way back."""

    spec: InputSpec
    hu: np.ndarray
    geometry: Geometry
    source_grid: SourceGrid
    files: tuple[Path, ...] = ()  # DICOM: the slices in native order


@dataclass(frozen=True, kw_only=True)
class PredictedFile:
    input: Path
    outputs: tuple[Path, ...]
    voxels: tuple[int, ...]  # predicted voxels per target

    def line(self) -> str:
        return f"{self.input}: {sum(self.voxels)} voxel(s) predicted -> {', '.join(p.name for p in self.outputs)}"


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = sorted(set(names) - set(FORMATS))
    if not names or unknown:
        raise ConfigError(f"--format: expected some of {', '.join(FORMATS)}, found {', '.join(unknown) or 'nothing'}")
    return tuple(dict.fromkeys(names))


# ---- finding inputs ------------------------------------------------------------------------------------
def _nifti_stem(path: Path) -> str | None:
    return next((path.name[:-len(s)] for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)


def find_inputs(path: str | Path, series: str | None = None) -> list[InputSpec]:
    """The CTs under ``path`` (see the module docstring); refuses a folder of several series unless chosen."""
    from ctprep.errors import CaseInputError, MissingInputError
    from ctprep.formats.dicom_scan import scan_dicom_folder

    path = Path(path)
    if path.is_file():
        stem = _nifti_stem(path)
        if stem is None:
            raise CaseInputError(path, "expected a .nii/.nii.gz file or a DICOM series folder")
        return [InputSpec(kind="nifti", path=path, stem=stem)]
    if not path.is_dir():
        raise MissingInputError(path, "input not found")
    specs = [] if series else [InputSpec(kind="nifti", path=p, stem=_nifti_stem(p)) for p in sorted(path.iterdir())
                               if p.is_file() and _nifti_stem(p)]  # --series: DICOM only
    found = scan_dicom_folder(path).series
    if series not in (None, "all"):
        if series not in found:
            raise CaseInputError(path, f"no series {series}; it holds: {_listing(found, path) or 'none'}")
        found = {series: found[series]}
    elif len(found) > 1 and series is None:
        raise CaseInputError(path, f"holds {len(found)} DICOM series, pick one with --series UID (or --series all): "
                                   f"{_listing(found, path)}")
    for uid, members in found.items():
        folders = {f.parent for f in members.files}
        folder = folders.pop() if len(folders) == 1 else path
        stem = folder.name if len(found) == 1 or folder != path else f"series-{uid.rsplit('.', 1)[-1]}"
        specs.append(InputSpec(kind="dicom", path=folder, stem=stem, files=tuple(members.files)))
    if not specs:
        raise CaseInputError(path, "no .nii/.nii.gz file and no CT DICOM series found")
    stems = [s.stem for s in specs]
    if len(set(stems)) != len(stems):
        raise CaseInputError(path, f"two inputs would write the same output names: {sorted(stems)}")
    return specs


def _listing(found: dict, root: Path) -> str:
    return "; ".join(f"{uid} ({len(s.files)} files in {s.files[0].parent.relative_to(root).as_posix() or '.'})"
                     for uid, s in found.items())


def read_input(spec: InputSpec, *, exact_slices: bool = False) -> InputCT:
    """Read ``spec`` onto the canonical grid. ``exact_slices`` refuses DICOM series that would need
    resampling (tilt, irregular steps): their RTSTRUCT/SEG must name the file slices one to one."""
    from ctprep.geometry import canonicalize

    if spec.kind == "nifti":
        from ctprep.formats.nifti import hu_int16, read_nifti

        volume = read_nifti(spec.path)
        if volume.array.ndim != 3:
            from ctprep.errors import CaseInputError

            raise CaseInputError(spec.path, f"expected a 3-D CT volume, found shape {volume.array.shape}")
        hu, geometry, source_grid = canonicalize(hu_int16(volume), volume.affine)
        return InputCT(spec=spec, hu=hu, geometry=geometry, source_grid=source_grid)
    from ctprep.formats.dicom import read_ct_series

    ct = read_ct_series(spec.files, irregular="refuse" if exact_slices else "resample")
    return InputCT(spec=spec, hu=ct.hu, geometry=ct.geometry, source_grid=ct.source_grid, files=ct.files)


# ---- predicting -----------------------------------------------------------------------------------------
def check_windows(prep: Preprocessing, config, in_channels: int, checkpoint: Path) -> tuple[int, ...]:
    """The window channels the model reads; refuses those a CT cannot give (one line)."""
    per_slice = in_channels // (2 * config.context + 1)
    needed = tuple(config.channels) if config.channels is not None else tuple(range(len(prep.windows)))
    if len(needed) != per_slice:
        raise ConfigError(f"{checkpoint}: the model reads {per_slice} window channel(s) per slice, its "
                          f"preprocessing gives {len(needed)}")
    foreign = [prep.windows[i].name for i in needed if i >= prep.derivable]
    if foreign:
        raise ConfigError(f"{checkpoint}: the model needs window channel(s) {', '.join(foreign)} that came from the "
                          "training source's own files, not from HU; a CT file cannot give them")
    return needed


def predict_masks(model, config, prep: Preprocessing, ct: InputCT, threshold: float,
                  batch_size: int = 16) -> list[np.ndarray]:
    """One uint8 mask per target, in the input's own array layout (its source grid)."""
    from ctprep.case import CaseRecord
    from ctprep.commands.export import to_canonical_grid, to_source_layout
    from ctprep.resample import AIR_HU, _resample, target_geometry
    from ctprep.windowing import apply_windows
    from ctseg.predict import predict_volume

    target = target_geometry(ct.geometry, prep.spacing, prep.size)
    hu = ct.hu
    if target != ct.geometry:  # the conversion's resampling (ctprep.resample), done the same way
        hu = np.clip(np.rint(_resample(hu, ct.geometry, target, linear=True, default=AIR_HU)), -32768, 32767)
        hu = hu.astype(np.int16)
    image = apply_windows(np.ascontiguousarray(hu), prep.windows[:prep.derivable])
    prob = predict_volume(model, image, config, batch_size=batch_size)
    n = target.shape[0]
    record = CaseRecord(case_id=ct.spec.stem, source="file", patient_id="", split="test", geometry=target,
                        canonical_geometry=ct.geometry, source_grid=ct.source_grid,
                        slice_indices=tuple(range(n)), z_positions=tuple(target.z_positions()),
                        windows=prep.windows[:prep.derivable], labels=(), lesion_label=None, lesion_pixels=(0,) * n)
    masks = []
    for channel in prob:
        back, _ = to_canonical_grid(np.ascontiguousarray(channel), record)
        masks.append(np.ascontiguousarray(to_source_layout((back >= threshold).astype(np.uint8), record)))
    return masks


def output_paths(spec: InputSpec, out: Path | None, run: str, targets: Sequence[str],
                 formats: Sequence[str]) -> dict[str, Path]:
    """Every file written for ``spec``: ``nifti:<target>``, ``rtstruct`` and ``seg`` keys."""
    from ctseg.predict import run_labels

    folder = out if out is not None else spec.path.parent
    paths = {}
    if "nifti" in formats:
        for target, (_, mask_label) in zip(targets, run_labels(run, targets)):
            paths[f"nifti:{target}"] = folder / f"{spec.stem}_{mask_label}.nii.gz"
    stem = run_labels(run, targets[:1])[0][0]
    for kind in DICOM_FORMATS:
        if kind in formats:
            paths[kind] = folder / f"{spec.stem}_{stem}_{kind}.dcm"
    return paths


def write_outputs(ct: InputCT, masks: list[np.ndarray], paths: dict[str, Path], targets: Sequence[str],
                  run: str) -> tuple[Path, ...]:
    from ctprep.commands.export import write_nifti

    affine = np.asarray(ct.source_grid.affine_ras, dtype=np.float64).reshape(4, 4)
    for target, mask in zip(targets, masks):
        if f"nifti:{target}" in paths:
            write_nifti(mask, affine, paths[f"nifti:{target}"])
    if "rtstruct" in paths or "seg" in paths:
        from ctprep.formats.dicom_outputs import write_rtstruct, write_seg

        native = {target: mask.transpose(2, 1, 0) for target, mask in zip(targets, masks)}  # (slice, row, col)
        description = f"lesionkit {run}"[:64]
        if "rtstruct" in paths:
            write_rtstruct(ct.files, native, paths["rtstruct"], description=description)
        if "seg" in paths:
            write_seg(ct.files, native, paths["seg"], description=description)
    return tuple(paths.values())


def predict_files(checkpoint: str | Path, input_path: str | Path, *, out: str | Path | None = None,
                  formats: Sequence[str] = ("nifti",), series: str | None = None, threshold: float | None = None,
                  name: str | None = None, device: str = "auto", batch_size: int = 16, overwrite: bool = False,
                  progress: bool = True) -> list[PredictedFile]:
    """Predict every CT under ``input_path`` and write the results; see the module docstring."""
    from tqdm import tqdm

    from ctseg.build import load_model
    from ctseg.preprocessing import checkpoint_preprocessing

    formats = parse_formats(formats)
    checkpoint = Path(checkpoint)
    specs = find_inputs(input_path, series)
    dicom_only = [f for f in formats if f in DICOM_FORMATS]
    nifti_inputs = [s.path.name for s in specs if s.kind == "nifti"]
    if dicom_only and nifti_inputs:
        raise ConfigError(f"--format {','.join(dicom_only)} needs DICOM series inputs (they refer to the series); "
                          f"found NIfTI: {', '.join(nifti_inputs)}")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: expected a folder, found a file")
    model, config, data = load_model(checkpoint, device)
    if model.output_kind != "mask":
        raise ConfigError(f"{checkpoint}: model {config.model} predicts {model.output_kind}s, not masks")
    prep = checkpoint_preprocessing(data, checkpoint)
    check_windows(prep, config, model.in_channels, checkpoint)
    threshold = config.threshold if threshold is None else threshold
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), found {threshold}")
    run = name or checkpoint.resolve().parent.name
    planned = [(spec, output_paths(spec, out_dir, run, config.target, formats)) for spec in specs]
    existing = [str(p) for _, paths in planned for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: output exists ({len(existing)} in all); pass --overwrite to replace")
    done = []
    for spec, paths in tqdm(planned, desc="predicting", unit="input", disable=not progress or None):
        ct = read_input(spec, exact_slices=bool(dicom_only))
        masks = predict_masks(model, config, prep, ct, threshold, batch_size)
        if out_dir is not None:  # only now: a bad input leaves no folder behind
            out_dir.mkdir(parents=True, exist_ok=True)
        written = write_outputs(ct, masks, paths, config.target, run)
        done.append(PredictedFile(input=spec.path, outputs=written, voxels=tuple(int(m.sum()) for m in masks)))
    return done
