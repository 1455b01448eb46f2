"""Paper recipes: one YAML per paper x dataset (``recipes/``), run end to end by ``ctseg recipe run``.

A recipe names the raw layout (``source``), the ``ctprep convert`` arguments (the paper's
windows and slices), optional ``ctlabel`` steps, the ``ctseg train`` model/preset/target,
the ``ctseg evaluate`` split and protocol (ctseg.protocols) and the paper's ``reported``
figures. Each step runs as its own command (the real CLIs, in a subprocess: a failed step
stops the run with its one-line error), in ``WORK/`` (``store.zarr``, ``run/``). At the end
the paper's figures and the measured ones are printed side by side.

``budget: tiny`` shrinks training to a few steps on 32 x 32 inputs (plus the recipe's
``tiny`` overrides, e.g. smaller networks), trains and evaluates on every case: for the
tests on phantoms, so recipes cannot rot. ``budget: paper`` runs the paper's settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ctseg.errors import ConfigError

BUDGETS = ("paper", "tiny")
TINY_TRAIN = ("--epochs", "2", "--max-steps", "4", "--size", "32", "--batch-size", "2",
              "--set", "steps_per_epoch=2", "--set", "train_split=all", "--set", "val_split=all")
KEYS = ("paper", "dataset", "source", "convert", "train", "evaluate", "reported")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A parsed recipe file (see the module docstring)."""

    path: Path
    paper: str
    dataset: str
    source: str
    convert: tuple[str, ...]
    train: dict
    evaluate: dict
    reported: dict
    label: tuple[tuple[str, ...], ...] = ()
    tiny: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("model", "target"):
            if key not in self.train:
                raise ConfigError(f"{self.path}: train must name {key!r}, found keys {sorted(self.train)}")
        if "protocol" not in self.evaluate:
            raise ConfigError(f"{self.path}: evaluate must name a protocol, found keys {sorted(self.evaluate)}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; one clear error naming the file when it is not one."""
    from ctseg.config import load_yaml

    path = Path(path)
    data = load_yaml(path)
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ConfigError(f"{path}: not a recipe: missing {', '.join(missing)}")
    return Recipe(path=path, paper=str(data["paper"]), dataset=str(data["dataset"]), source=str(data["source"]),
                  convert=tuple(str(a) for a in data["convert"]), train=dict(data["train"]),
                  evaluate=dict(data["evaluate"]), reported=dict(data["reported"]),
                  label=tuple(tuple(str(a) for a in step) for step in data.get("label") or ()),
                  tiny=dict(data.get("tiny") or {}))


def steps(recipe: Recipe, raw: Path, work: Path, budget: str) -> list[list[str]]:
    """The commands of a run, in order."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget must be one of {BUDGETS}, found {budget!r}")
    store, run = work / "store.zarr", work / "run"
    py = sys.executable
    out = [[py, "-m", "lesionkit.cli", "convert", "--source", recipe.source, "--input", str(raw),
            "--output", str(store), *recipe.convert]]
    out += [[py, "-m", "ctlabel.cli", *(a.replace("{store}", str(store)) for a in step)] for step in recipe.label]
    train = [py, "-m", "ctseg.cli", "train", "--model", recipe.train["model"], "--store", str(store),
             "--target", recipe.train["target"], "--out", str(run), "--quiet"]
    if recipe.train.get("preset"):
        train += ["--preset", recipe.train["preset"]]
    for key, value in recipe.train.get("set", {}).items():
        train += ["--set", f"{key}={value}"]
    if budget == "tiny":
        train += [*TINY_TRAIN, *[a for k, v in recipe.tiny.items() for a in ("--set", f"{k}={v}")]]
    split = "all" if budget == "tiny" else recipe.evaluate.get("split", "test")
    out += [train, [py, "-m", "ctseg.cli", "evaluate", "--run", str(run), "--store", str(store), "--split", split,
                    "--protocol", recipe.evaluate["protocol"], "--quiet"]]
    return out


def side_by_side(recipe: Recipe, work: Path, split: str) -> list[str]:
    """Paper vs measured, one line per reported figure, from the run's protocol summary."""
    summary_file = work / "run" / "eval" / split / f"protocol_{recipe.evaluate['protocol']}.json"
    measured = json.loads(summary_file.read_text())["summary"]
    lines = [f"{recipe.paper} on {recipe.dataset} ({recipe.path.name}): paper vs measured"]
    for key, paper in recipe.reported.items():
        value = measured.get(key)
        lines.append(f"  {key:12s} {paper:>10g}  {'n/a' if value is None else format(value, '.4g'):>10s}")
    return lines


def run_recipe(path: str | Path, raw: str | Path, work: str | Path, budget: str = "paper",
               echo=print) -> list[str]:
    """Run every step of a recipe; returns (and echoes) the side-by-side lines."""
    recipe = load_recipe(path)
    raw, work = Path(raw), Path(work)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: no such input folder (the raw {recipe.dataset} download)")
    work.mkdir(parents=True, exist_ok=True)
    for command in steps(recipe, raw, work, budget):
        echo(f"$ {' '.join(command[2:])}")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
            raise ConfigError(f"{recipe.path}: step `{' '.join(command[2:5])}` failed: {tail[0]}")
        for line in done.stdout.strip().splitlines()[-12:]:
            echo(f"  {line}")
    lines = side_by_side(recipe, work, "all" if budget == "tiny" else recipe.evaluate.get("split", "test"))
    for line in lines:
        echo(line)
    return lines
