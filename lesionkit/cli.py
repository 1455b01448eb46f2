"""The ``ctprep`` program: ctprep's commands plus ``ctprep demo``, which uses all three tools.

The entry point lives here, above ctprep, ctlabel and ctseg, so that the demo's imports
of ctlabel and ctseg never make ctprep depend on them (docs/architecture.md).
"""

from __future__ import annotations

import click

from ctprep.cli import main as ctprep
from lkbase.cli import fail_cleanly


@ctprep.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Cases converted in parallel (processes).")
@click.option("--no-train", is_flag=True, help="Skip the short training run at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars (each step's summary is still printed).")
@fail_cleanly("ctprep")
def demo(out_dir, workers, no_train, quiet) -> None:
    """The whole product on phantom data, no download: fabricate LiTS, KiTS19, NSCLC, LIDC and
    DeepLesion downloads in OUT_DIR, convert them, make soft masks (ctlabel), train a small
    U-Net on the CPU and evaluate it on held-out cases (ctseg, when torch is installed).

    Each step's summary is printed as soon as it finishes; OUT_DIR/index.html links every
    output with a sentence on what it shows. About 45 s on 2 idle cores (the pip venv's
    first run adds a one-off ~15 s numba compile), several minutes when the cores are busy.
    """
    from lesionkit.demo import run_demo

    run_demo(out_dir, workers=workers, train=not no_train, progress=not quiet, say=click.echo)


if __name__ == "__main__":  # pragma: no cover
    ctprep()
