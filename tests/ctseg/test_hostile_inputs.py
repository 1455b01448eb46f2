"""Issue 17 D: a malicious checkpoint and a YAML tag safe_load refuses are one short line naming the
file and the reason (no torch or PyYAML prose), exit status 1."""

from __future__ import annotations

import os

import torch
from click.testing import CliRunner

from ctseg.cli import main


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


def test_malicious_checkpoint_is_one_short_line(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode()}, evil)
    line = _one_line_error(CliRunner().invoke(main, ["predict", "--checkpoint", str(evil), "--store", str(tmp_path / "s.zarr")]))
    assert str(evil) in line and "posix.system" in line and "weights-only loading refuses" in line, line
    assert "PyTorch 2.6" not in line and len(line) < 250, line


def test_refused_yaml_tag_is_one_short_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text('model: !!python/object/apply:os.system ["echo hi"]\n')
    line = _one_line_error(CliRunner().invoke(main, ["train", "--config", str(config), "--model", "unet", "--store",
                                                     str(tmp_path / "s.zarr"), "--target", "tumour", "--out",
                                                     str(tmp_path / "run")]))
    assert str(config) in line and "line 1, column 8" in line and "is not allowed" in line, line
    assert "<unicode string>" not in line, line
