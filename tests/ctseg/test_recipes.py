"""recipes/*.yaml run end to end on phantom downloads with a tiny budget (so recipes cannot rot).

The runner parses each step with its command's own click parameters and runs it in this
process (ctseg.recipe), so torch is imported once for all recipes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ctprep.phantoms.lidc import write_lidc_case
from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctprep.phantoms.nsclc import write_nsclc_case
from ctseg.cli import main
from ctseg.errors import ConfigError
from ctseg.recipe import load_recipe, steps

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHAPE = (8, 48, 48)
PHANTOMS = {"lits": lambda raw: [write_lits_case(raw, n, shape=SHAPE) for n in range(2)],
            "kits19": lambda raw: [write_kits19_case(raw, n, shape=SHAPE) for n in range(2)],
            "nsclc": lambda raw: [write_nsclc_case(raw, n, shape=SHAPE) for n in (1, 2)],
            "lidc": lambda raw: [write_lidc_case(raw, n, shape=SHAPE) for n in (1, 2)]}


def test_every_recipe_parses_and_has_a_phantom():
    files = sorted(RECIPES.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        assert load_recipe(path).source in PHANTOMS, path.name


def test_a_file_that_is_not_a_recipe_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("paper: x\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a recipe: missing dataset"):
        load_recipe(bad)


def test_label_steps_run_after_convert_with_the_store_filled_in(tmp_path):
    recipe = load_recipe(RECIPES / "softgan-lidc.yaml")
    plan = steps(recipe, tmp_path / "raw", tmp_path / "w", "paper")
    store = str(tmp_path / "w" / "store.zarr")
    assert [(program, args[0]) for program, args in plan] == [
        ("ctprep", "convert"), ("ctlabel", "softmask"), ("ctlabel", "soften"), ("ctseg", "train"), ("ctseg", "evaluate")]
    assert plan[1][1][:4] == ("softmask", store, "--from", "readers")
    assert plan[-1][1][plan[-1][1].index("--split") + 1] == "test"


def test_a_failing_step_is_one_line_naming_the_recipe_and_the_step(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text((RECIPES / "ctumorgan-lits.yaml").read_text().replace('"liver"', '"no-such-window"'))
    (tmp_path / "raw").mkdir()
    done = CliRunner().invoke(main, ["recipe", "run", str(recipe), "--input", str(tmp_path / "raw"),
                                     "--work", str(tmp_path / "w"), "--budget", "tiny"])
    assert done.exit_code == 1
    error = done.output.strip().splitlines()[-1]
    assert error.startswith(f"ctseg: error: {recipe}: step `ctprep convert` failed: ") and "no-such-window" in error


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_runs_end_to_end_on_phantoms(path, tmp_path):
    recipe = load_recipe(path)
    raw = tmp_path / "raw"
    PHANTOMS[recipe.source](raw)
    done = CliRunner().invoke(main, ["recipe", "run", str(path), "--input", str(raw), "--work", str(tmp_path / "w"),
                                     "--budget", "tiny"])
    print(done.output)  # paper vs measured, side by side (pytest -s)
    assert done.exit_code == 0, done.output
    assert f"{recipe.paper} on {recipe.dataset} ({path.name}): paper vs measured" in done.output
    for key, value in recipe.reported.items():
        assert any(line.split()[:2] == [key, f"{value:g}"] for line in done.output.splitlines()), key
