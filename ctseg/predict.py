"""Prediction: a trained model over whole cases, slice by slice, written back into the store.

:func:`predict_volume` is shared with validation during training: each stored slice
gets the inputs the model was trained on (windows, ``context`` neighbours clamped at
the ends), is padded to a multiple of the model's down-sampling (or resized to the
model size when the run trained on resized slices), and the probabilities are put
back on the stored grid (models are built and loaded by ctseg.build). :func:`predict_store`
writes ``pred_<run>`` (float32 probabilities) and ``pred_<run>_mask`` (uint8, probabilities
>= threshold; the names are ctprep.store.layout.prediction_labels') per case, with
attributes saying how they were made: into a separate predictions store
(``output``; ctprep.store.predictions, one case at a time, marker last) or into the
dataset store itself (``SliceStore.write_label``, atomic per label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctseg.config import TrainConfig
from ctseg.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class PredictedCase:
    case_id: str
    labels: tuple[str, ...]  # label arrays written
    slices: int  # slices predicted (0 when kept)
    kept: bool = False  # already in the predictions store, made the same way (a resumed run)


def case_inputs(image: np.ndarray, rows: Sequence[int], channels: Sequence[int] | None, context: int) -> np.ndarray:
    """Model inputs (n, C', y, x) uint8 for stored rows of a case image (z, window, y, x)."""
    from ctseg.data import context_rows, stack_inputs

    nz = image.shape[0]
    return np.stack([stack_inputs(image[context_rows(z, nz, context)], channels) for z in rows])


def predict_volume(model, image: np.ndarray, config: TrainConfig, *, batch_size: int = 16, amp=None,
                   rows: Sequence[int] | None = None, options=None) -> np.ndarray:
    """Probabilities float32 (labels, len(rows), y, x) for stored ``rows`` (all) of a case image (z, window, y, x).

    ``options`` (ctseg.inference.InferenceOptions; default: plain, ``batch_size``) adds flip
    TTA, sliding windows (crop-trained models) and batch size by memory.
    """
    import torch

    from ctseg.inference import InferenceOptions, auto_batch_size

    options = options or InferenceOptions(batch_size=batch_size)
    device = model.device
    nz, _, h, w = image.shape
    rows = list(range(nz)) if rows is None else list(rows)
    out = np.zeros((model.out_channels, len(rows), h, w), dtype=np.float32)
    model.eval()
    step = options.batch_size or auto_batch_size(model, model.in_channels, h, w, device)
    with torch.no_grad():
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            x = torch.from_numpy(case_inputs(image, part, config.channels, config.context)).to(device).float() / 255
            with amp.autocast() if amp is not None else _null():
                prob = _forward_slices(model, x, config, options)
            out[:, start:start + len(part)] = prob.clamp(0, 1).permute(1, 0, 2, 3).cpu().numpy()
    return out


def _forward_slices(model, x, config: TrainConfig, options):
    """(n, C, H, W) whole slices -> (n, labels, H, W): resized, windowed or padded as the model was trained."""
    import torch.nn.functional as F

    from ctseg.inference import sliding_window, with_flips

    h, w = x.shape[-2:]
    forward = (lambda t: with_flips(model.predict, t)) if options.tta else (lambda t: model.predict(t).float())
    if config.crop == "resize":
        x = F.interpolate(x, size=(config.size, config.size), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(forward(x), size=(h, w), mode="bilinear", align_corners=False)
    if options.window:
        return sliding_window(forward, x, config.size, options.overlap)
    multiple = model.size_multiple  # fully convolutional: the whole slice, zero-padded as training crops are
    ph, pw = -h % multiple, -w % multiple
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return forward(x)[:, :, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


def _null():
    import contextlib

    return contextlib.nullcontext()


def run_labels(run: str, targets: Sequence[str]) -> list[tuple[str, str]]:
    """(probabilities, mask) label names per target of run ``run``: ctprep.store.layout's rule, with
    ``_<target>`` after the run when there are several targets."""
    from ctprep.store.layout import prediction_labels, run_label_stem

    stem = run_label_stem(run)
    if not stem:
        raise ConfigError(f"run name {run!r} gives an empty label name; pass --name")
    if len(targets) == 1:
        return [prediction_labels(stem)]
    return [prediction_labels(f"{stem}_{target}") for target in targets]


def predict_store(checkpoint: str | Path, store_path: str | Path, *, cases: Sequence[str] | None = None,
                  name: str | None = None, threshold: float | None = None, device: str = "auto",
                  batch_size: int = 16, progress: bool = True, export_nifti: str | Path | None = None,
                  inference=None, post=None, output: str | Path | None = None) -> list[PredictedCase]:
    """Predict every (or the named) case of a store and write the results as labels; see the module doc.

    With ``output``, the labels go into that predictions store (ctprep.store.predictions;
    created if absent) and the dataset store is only read; a case already there with this
    prediction (same checkpoint, step and settings) is kept, so an interrupted run resumes.
    With ``export_nifti``, every written label is also exported to
    ``<dir>/<case>_<label>.nii.gz`` on the case's original grid (ctprep.commands.export).
    ``inference`` (ctseg.inference.InferenceOptions) adds flip TTA, sliding windows, batch
    size by memory; ``post`` (ctseg.postprocess.PostProcess; None: the run's own, PostProcess.of_run,
    by default the largest 3D component) cleans each mask in 3D, and the
    probabilities outside what it keeps are set to 0 (so both labels say the same).
    """
    from tqdm import tqdm

    from ctprep.store import PredictionStore, SliceStore, WithPredictions
    from ctseg.build import load_model

    checkpoint = Path(checkpoint)
    model, config, data = load_model(checkpoint, device)
    if model.output_kind != "mask":
        raise ConfigError(f"{checkpoint}: model {config.model} predicts {model.output_kind}s, not masks; "
                          "score it with `ctseg evaluate` (PSNR/SSIM) instead of writing labels")
    threshold = config.threshold if threshold is None else threshold
    if post is None:
        from ctseg.postprocess import PostProcess

        post = PostProcess.of_run(config)
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), found {threshold}")
    store = SliceStore.open(store_path, mode="a" if output is None else "r")
    wanted = list(cases) if cases else store.case_ids()
    unknown = sorted(set(wanted) - set(store.case_ids()))
    if unknown:
        raise ConfigError(f"{store_path}: cases not in the store: {', '.join(unknown)}")
    target = None if output is None else PredictionStore.open_or_create(
        output, store, created_by=f"ctseg predict --checkpoint {checkpoint}")
    names = run_labels(name or checkpoint.resolve().parent.name, config.target)
    made = {"model": config.model, "checkpoint": str(checkpoint), "run": str(Path(config.out)),
            "step": int(data["step"]), "epoch": int(data["epoch"]), "threshold": threshold,
            "postprocess": post.to_dict(), "tta": bool(inference and inference.tta),
            "window": bool(inference and inference.window)}
    attributes = {}
    for target_name, (stem, mask_label) in zip(config.target, names):
        common = {"kind": "prediction", **made, "target": target_name}
        attributes[stem] = {**common, "values": "probability"}
        attributes[mask_label] = {**common, "values": "binary"}
    written = []
    for case_id in tqdm(wanted, desc="predicting", unit="case", disable=not progress or None):
        if target is not None and _already_predicted(target, store, case_id, attributes):
            written.append(PredictedCase(case_id=case_id, labels=tuple(attributes), slices=0, kept=True))
            continue
        image = store.read_case(case_id, labels=[]).image
        expected = model.in_channels // (2 * config.context + 1)
        have = len(config.channels) if config.channels is not None else image.shape[1]
        if have != expected:
            raise ConfigError(f"{store_path}: case {case_id} has {image.shape[1]} window channels, "
                              f"the model was trained on {expected}")
        prob = predict_volume(model, image, config, batch_size=batch_size, options=inference)
        if post.active:
            prob = _post_processed(store, case_id, prob, threshold, post, progress)
        labels = {}
        for i, (stem, mask_label) in enumerate(names):
            labels[stem] = np.ascontiguousarray(prob[i])
            labels[mask_label] = (prob[i] >= threshold).astype(np.uint8)
        if target is None:
            for label, array in labels.items():
                store.write_label(case_id, label, array, attributes=attributes[label])
        else:
            target.write_case_predictions(store, case_id, labels, attributes)
        written.append(PredictedCase(case_id=case_id, labels=tuple(labels), slices=image.shape[0]))
        if export_nifti is not None:
            from ctprep.commands.export import export_label_nifti

            source = store if target is None else WithPredictions(store, target)
            for label in labels:
                export_label_nifti(source, case_id, label, Path(export_nifti) / f"{case_id}_{label}.nii.gz")
    return written


def _already_predicted(target, store, case_id: str, attributes: dict) -> bool:
    """Whether the predictions store holds these labels of the case, whole, made as they would be now."""
    import json

    if not target.is_current(store, case_id):
        return False
    have = target.label_names(case_id)
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    return all(label in have and same(target.label_attributes(case_id, label), wanted)
               for label, wanted in attributes.items())


def _post_processed(store, case_id: str, prob: np.ndarray, threshold: float, post, progress: bool) -> np.ndarray:
    """Probabilities kept only where the post-processed mask (ctseg.postprocess) is."""
    import sys

    from ctseg.postprocess import postprocess

    organ = None
    if post.organ:
        if post.organ in store.label_names(case_id):
            organ = store.read_label(case_id, post.organ)
        elif progress:
            print(f"{store.path}: case {case_id} has no {post.organ!r} label; not restricted to it", file=sys.stderr)
    spacing = store.record(case_id).geometry.spacing
    kept = np.stack([postprocess(p >= threshold, spacing, post, organ) for p in prob])
    return np.where(kept, prob, 0).astype(np.float32)


def evaluate_checkpoint_run(run_dir: str | Path, store_path: str | Path | None, split: str = "test", *,
                            checkpoint: str | None = None, device: str = "auto", threshold: float | None = None,
                            progress: bool = True, inference=None, post=None, predictions: str | Path | None = None):
    """``ctseg evaluate``: predict the split's cases with the run's best checkpoint (unless the store, or the
    predictions store ``predictions``, already holds this run's predictions for them), then evaluate and
    write ``RUN_DIR/eval/<split>/``. With ``predictions``, ``store_path`` None means the dataset store it names."""
    from ctprep.store import PredictionStore, SliceStore
    from ctseg.evaluate import evaluate_run, open_evaluated, run_prediction_labels, split_cases

    run_dir = Path(run_dir)
    ckpt = Path(checkpoint) if checkpoint else next((run_dir / n for n in ("best.pt", "last.pt")
                                                    if (run_dir / n).is_file()), None)
    if ckpt is None or not ckpt.is_file():
        raise FileNotFoundError(f"{run_dir}: no best.pt or last.pt (train first, or give --checkpoint)")
    if predictions is not None and store_path is not None and not SliceStore.exists(predictions):
        PredictionStore.open_or_create(predictions, SliceStore.open(store_path), created_by=f"ctseg evaluate --run {run_dir}")
    store = open_evaluated(store_path, predictions)
    dataset_path = store.path if predictions is None else store.dataset.path
    cases = split_cases(store, split)
    if progress:
        import sys

        what = "the run's own post-processing" if post is None else f"post-processing {post.to_dict()}"
        print(f"evaluating {run_dir} on whole slices of the {len(cases)} {split!r} case(s) of {store.path} "
              f"({ckpt.name}, {what})", file=sys.stderr)
    fresh = (inference is not None and (inference.tta or inference.window)) or (post is not None and post.active)
    missing = [c for c in cases if fresh or not run_prediction_labels(store, c, run_dir)]
    if missing:
        predict_store(ckpt, dataset_path, cases=missing, name=run_dir.resolve().name, threshold=threshold,
                      device=device, progress=progress, inference=inference, post=post, output=predictions)
    return evaluate_run(run_dir, dataset_path, split, threshold=threshold, progress=progress,
                        predictions=predictions)
