"""recipes/*.yaml run end to end on phantom downloads with a tiny budget (so recipes cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ctprep.phantoms.nifti import write_kits19_case, write_lits_case
from ctseg.cli import main
from ctseg.errors import ConfigError
from ctseg.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PHANTOMS = {"lits": lambda raw: [write_lits_case(raw, n, shape=(8, 48, 48)) for n in range(2)],
            "kits19": lambda raw: [write_kits19_case(raw, n, shape=(8, 48, 48)) for n in range(2)]}


def test_every_recipe_parses_and_has_a_phantom():
    files = sorted(RECIPES.glob("*.yaml"))
    assert files
    for path in files:
        assert load_recipe(path).source in PHANTOMS, path.name


def test_a_file_that_is_not_a_recipe_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("paper: x\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a recipe: missing dataset"):
        load_recipe(bad)


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_runs_end_to_end_on_phantoms(path, tmp_path):
    recipe = load_recipe(path)
    raw = tmp_path / "raw"
    PHANTOMS[recipe.source](raw)
    done = CliRunner().invoke(main, ["recipe", "run", str(path), "--input", str(raw), "--work", str(tmp_path / "w"),
                                     "--budget", "tiny"])
    assert done.exit_code == 0, done.output
    assert f"{recipe.paper} on {recipe.dataset} ({path.name}): paper vs measured" in done.output
    for key, value in recipe.reported.items():
        assert any(line.split()[:2] == [key, f"{value:g}"] for line in done.output.splitlines()), key
