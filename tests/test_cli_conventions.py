"""The conventions the three command lines share, checked on every command of ctprep, ctlabel and ctseg.

* every command and every option has help text;
* the progress switch is called ``--quiet`` everywhere (no ``--quiet``);
* an option with a default shows it in ``--help``;
* required options say so in ``--help`` (click's ``[required]``, or "required" in the text
  for options a config file or a resumed run may give instead);
* ``-h`` works like ``--help``.
"""

from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

PROGRAMS = {"ctprep": ("lesionkit.cli", "ctprep"), "ctlabel": ("ctlabel.cli", "main"), "ctseg": ("ctseg.cli", "main")}


def _group(program: str) -> click.Group:
    module, name = PROGRAMS[program]
    return getattr(importlib.import_module(module), name)


def _commands():
    return [(program, name, command) for program in PROGRAMS
            for name, command in sorted(_group(program).commands.items())]


def _has_default(option: click.Option) -> bool:
    default = option.default
    return not (option.is_flag or default is None or default == () or callable(default)
                or type(default).__name__ == "Sentinel" or repr(default).endswith("UNSET"))


@pytest.mark.parametrize("program, name, command", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_command_follows_the_conventions(program, name, command):
    assert (command.help or "").strip(), f"{program} {name}: no help text"
    options = [p for p in command.params if isinstance(p, click.Option)]
    for option in options:
        where = f"{program} {name} {'/'.join(option.opts)}"
        assert (option.help or "").strip(), f"{where}: no help text"
        assert not any("progress" in o for o in option.opts), f"{where}: the progress switch is --quiet"
        if _has_default(option):
            assert option.show_default, f"{where}: default {option.default!r} not shown in --help"
    if any(o.name == "progress" or "quiet" in o.opts or "--quiet" in o.opts for o in options):
        assert any("--quiet" in o.opts for o in options)
    text = CliRunner().invoke(_group(program), [name, "--help"]).stdout
    for option in options:
        if option.required:
            assert "[required]" in text, f"{program} {name}: required options not marked"
    assert CliRunner().invoke(_group(program), [name, "-h"]).stdout == text


def test_long_commands_offer_quiet():
    for program, name in (("ctprep", "convert"), ("ctprep", "verify"), ("ctprep", "demo"), ("ctprep", "report"),
                          ("ctlabel", "softmask"), ("ctlabel", "trimap"), ("ctseg", "train"), ("ctseg", "predict"),
                          ("ctseg", "evaluate")):
        command = _group(program).commands[name]
        assert any("--quiet" in p.opts for p in command.params if isinstance(p, click.Option)), f"{program} {name}"
