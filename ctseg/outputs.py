"""A model's other outputs scored next to its final one (crgan: G alone vs the refined output).

Models name extra outputs in ``SegModel.validation_outputs()`` (name -> model options to
set; crgan: ``{"g": {"predict": "g"}}``). ``ctseg evaluate`` predicts each of them in
memory for the evaluated cases (no label is written, so the standard report is unchanged)
and writes ``eval/<split>/outputs.csv`` (per case: ``dice`` of the final output and
``dice_<name>`` of each other one) and ``outputs.json`` (their means), and prints them side
by side: the refinement GAN's Table 4 compares cGAN with cGAN+Refinement this way.
Thresholds and truth labels are those of the evaluation; metrics are ctseg.metrics'.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctseg import metrics as m
from lkbase.atomic import write_text_atomic


def _checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path | None:
    if checkpoint:
        return Path(checkpoint)
    return next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()), None)


def output_rows(model, config, store, evaluation) -> list[dict]:
    """Per evaluated case: the final output's Dice (from the evaluation) and each other output's."""
    from ctseg.predict import predict_volume

    target_index = 0  # the evaluation scores one label; a multi-target run's first is the one compared
    rows = []
    outputs = model.validation_outputs()
    for row in evaluation.per_case:
        image = store.read_case(row["case"], labels=[]).image
        truth = m.truth_mask(store.read_label(row["case"], row["truth_label"]))
        out = {"case": row["case"], "dice": row["dice"]}
        for name, options in outputs.items():
            with model.options_set(options):
                prob = predict_volume(model, image, config)[target_index]
            out[f"dice_{name}"] = float(m.dice(m.confusion(prob >= evaluation.threshold, truth)))
        rows.append(out)
    return rows


def compare_run_outputs(run_dir: str | Path, output, *, checkpoint: str | Path | None = None,
                        device: str = "auto") -> list[str]:
    """Write outputs.csv/.json for a run whose model has other outputs; the lines to print (none if not)."""
    from ctprep.store import SliceStore
    from ctseg.build import load_model
    from ctseg.evaluate import _csv_text, _json_ready

    ckpt = _checkpoint(Path(run_dir), checkpoint)
    if ckpt is None:
        return []
    model, config, _ = load_model(ckpt, device)
    names = list(model.validation_outputs())
    if not names:
        return []
    rows = output_rows(model, config, SliceStore.open(output.evaluation.store), output.evaluation)
    columns = ("case", "dice", *[f"dice_{n}" for n in names])
    means = {c: float(np.mean([r[c] for r in rows])) for c in columns[1:]}
    folder = Path(output.folder)
    write_text_atomic(folder / "outputs.csv", _csv_text(rows, columns))
    write_text_atomic(folder / "outputs.json", json.dumps(_json_ready({"model": config.model, "mean": means,
                                                                       "cases": rows}), indent=1) + "\n")
    side = ", ".join(f"{c} {v:.4f}" for c, v in means.items())
    return [f"  outputs of {config.model} (per-case mean Dice): {side}  [final = dice]"]
