"""Paper recipes: one YAML per paper x dataset (``recipes/``), run end to end by ``ctseg recipe run``.

A recipe names the raw layout (``source``), the ``ctprep convert`` arguments (the paper's
windows and slices), optional ``ctlabel`` steps, the ``ctseg train`` model/preset/target,
the ``ctseg evaluate`` split and protocol (ctseg.protocols) and the paper's ``reported``
figures. Each step is a command line of ``ctprep``, ``ctlabel`` or ``ctseg`` (echoed as ``$ ...``,
so it can be copied), run in this process: the command's own click parsing makes its
arguments and its body (undecorated, so errors arrive as exceptions) calls the library, so a
step does exactly what the command does, without a new interpreter importing torch per step.
A failed step stops the run with one line naming the recipe, the step and the reason. The
programs (click groups) are handed in by the caller (``ctseg recipe run``), which keeps this
module below ctseg.cli. Outputs go to ``WORK/`` (``store.zarr``, ``run/``). At the end the
paper's figures and the measured ones are printed side by side.

``label:`` is a list of ``ctlabel`` command lines (``{store}`` stands for the store), run in
order after ``convert``, e.g. soft masks from the LIDC readers then softened labels.

``budget: tiny`` shrinks training to a few steps on 32 x 32 inputs (plus the recipe's
``tiny`` overrides, e.g. smaller networks), trains and evaluates on every case: for the
tests on phantoms, so recipes cannot rot. ``budget: paper`` runs the paper's settings.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import click

from ctseg.errors import ConfigError
from lkbase.errors import LesionkitError

BUDGETS = ("paper", "tiny")
TINY_TRAIN = ("--epochs", "2", "--max-steps", "4", "--size", "32", "--batch-size", "2",
              "--set", "steps_per_epoch=2", "--set", "train_split=all", "--set", "val_split=all")
KEYS = ("paper", "dataset", "source", "convert", "train", "evaluate", "reported")
PROGRAMS = ("ctprep", "ctlabel", "ctseg")
Step = tuple[str, tuple[str, ...]]  # (program, its arguments: command name first)


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


def steps(recipe: Recipe, raw: Path, work: Path, budget: str) -> list[Step]:
    """The command lines of a run, in order, as (program, arguments)."""
    if budget not in BUDGETS:
        raise ConfigError(f"budget must be one of {BUDGETS}, found {budget!r}")
    store, run = work / "store.zarr", work / "run"
    out: list[Step] = [("ctprep", ("convert", "--source", recipe.source, "--input", str(raw), "--output", str(store),
                                   *recipe.convert))]
    out += [("ctlabel", tuple(a.replace("{store}", str(store)) for a in step)) for step in recipe.label]
    train = ["train", "--model", recipe.train["model"], "--store", str(store), "--target", recipe.train["target"],
             "--out", str(run), "--quiet"]
    if recipe.train.get("preset"):
        train += ["--preset", recipe.train["preset"]]
    for key, value in recipe.train.get("set", {}).items():
        train += ["--set", f"{key}={value}"]
    if budget == "tiny":
        train += [*TINY_TRAIN, *[a for k, v in recipe.tiny.items() for a in ("--set", f"{k}={v}")]]
    out += [("ctseg", tuple(train)),
            ("ctseg", ("evaluate", "--run", str(run), "--store", str(store), "--split", eval_split(recipe, budget),
                       "--protocol", recipe.evaluate["protocol"], "--quiet"))]
    return out


def eval_split(recipe: Recipe, budget: str) -> str:
    """The split scored: the recipe's (the paper's test set), every case with the tiny budget."""
    return "all" if budget == "tiny" else recipe.evaluate.get("split", "test")


def run_step(recipe: Recipe, step: Step, programs: Mapping[str, click.Group]) -> None:
    """Parse a step with its command's click parameters and run the command's body here.

    The body is the undecorated callback (lkbase.cli.fail_cleanly would print and exit), so
    a failure is an exception: re-raised as one line naming the recipe and the step.
    """
    program, (name, *args) = step
    command = programs[program].commands.get(name) if program in programs else None
    if command is None:
        raise ConfigError(f"{recipe.path}: no command `{program} {name}`")
    where = f"{recipe.path}: step `{program} {name}` failed"
    try:
        with command.make_context(f"{program} {name}", list(args)) as ctx:
            inspect.unwrap(command.callback)(**ctx.params)
    except click.ClickException as exc:
        raise ConfigError(f"{where}: {exc.format_message()}") from exc
    except SystemExit as exc:  # a command that reports its failure by its exit status (nothing converted/labelled)
        if exc.code not in (0, None):
            raise ConfigError(f"{where}: exit status {exc.code} (its report is above)") from exc
    except (LesionkitError, OSError, ValueError, LookupError) as exc:
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from exc


def side_by_side(recipe: Recipe, work: Path, split: str) -> list[str]:
    """Paper vs measured, one line per reported figure, from the run's protocol summary."""
    summary_file = work / "run" / "eval" / split / f"protocol_{recipe.evaluate['protocol']}.json"
    measured = json.loads(summary_file.read_text())["summary"]
    lines = [f"{recipe.paper} on {recipe.dataset} ({recipe.path.name}): paper vs measured"]
    for key, paper in recipe.reported.items():
        value = measured.get(key)
        lines.append(f"  {key:12s} {paper:>10g}  {'n/a' if value is None else format(value, '.4g'):>10s}")
    return lines


def run_recipe(path: str | Path, raw: str | Path, work: str | Path, budget: str = "paper", *,
               programs: Mapping[str, click.Group], echo=print) -> list[str]:
    """Run every step of a recipe with ``programs`` (name -> click group: ctprep, ctlabel, ctseg);
    returns (and echoes) the side-by-side lines."""
    recipe = load_recipe(path)
    raw, work = Path(raw), Path(work)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: no such input folder (the raw {recipe.dataset} download)")
    missing = [name for name in PROGRAMS if name not in programs]
    if missing:
        raise ConfigError(f"run_recipe needs the programs {', '.join(missing)}")
    work.mkdir(parents=True, exist_ok=True)
    for step in steps(recipe, raw, work, budget):
        echo(f"$ {step[0]} {' '.join(step[1])}")
        run_step(recipe, step, programs)
    lines = side_by_side(recipe, work, eval_split(recipe, budget))
    for line in lines:
        echo(line)
    return lines
