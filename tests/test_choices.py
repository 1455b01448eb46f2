"""lkbase.choices: one rule for naming valid choices in errors (did you mean, the list shortened)."""

from __future__ import annotations

from click.testing import CliRunner

from lkbase.choices import MAX_LISTED, closest, listed, unknown


def test_closest_is_case_insensitive_and_refuses_far_guesses():
    assert closest("livr", ["lung", "liver", "kidney"]) == "liver"
    assert closest("LUNG", ["lung", "liver"]) == "lung"
    assert closest("xyzzy", ["lung", "liver"]) is None


def test_listed_shortens_long_lists():
    many = [f"case-{i}" for i in range(MAX_LISTED + 5)]
    assert listed(many).endswith(f"case-{MAX_LISTED - 1}, ... (and 5 more)")
    assert listed([]) == "none" and listed(["a", "b"]) == "a, b"


def test_unknown_message():
    assert unknown("model", "unett", ["segan", "unet"]) == "unknown model 'unett'; did you mean 'unet'? (valid: segan, unet)"
    assert unknown("model", "zzz", ["unet"]) == "unknown model 'zzz' (valid: unet)"


def test_the_clis_suggest(tmp_path):
    from ctprep.cli import main

    result = CliRunner().invoke(main, ["convert", "--source", "litz", "--input", str(tmp_path), "--output",
                                       str(tmp_path / "x.zarr")])
    assert result.exit_code == 1 and "did you mean 'lits'?" in result.stderr
    result = CliRunner().invoke(main, ["convert", "--source", "lits", "--input", str(tmp_path), "--output",
                                       str(tmp_path / "x.zarr"), "--window", "livr"])
    assert result.exit_code != 0 and "did you mean 'liver'?" in result.output
