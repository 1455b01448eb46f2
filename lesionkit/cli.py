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
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--no-train", is_flag=True, help="Skip the short training run at the end.")
@fail_cleanly("ctprep")
def demo(out_dir, workers, no_train) -> None:
    """The whole product on phantom data, no download: fabricate LiTS, KiTS19, NSCLC, LIDC and
    DeepLesion downloads in OUT_DIR, convert them, make soft masks (ctlabel), train a small
    U-Net on the CPU and evaluate it (ctseg, when torch is installed).

    About a minute on a laptop; everything lands in OUT_DIR.
    """
    from lesionkit.demo import run_demo

    result = run_demo(out_dir, workers=workers, train=not no_train)
    for source, report in result.reports.items():
        click.echo("")
        for line in report.lines():
            click.echo(line)
        for line in result.infos[source].lines():
            click.echo(f"  {line}")
    for line in ["", *result.labelling, "", *result.training, ""]:
        click.echo(line)
    for path in result.previews:
        click.echo(f"preview: {path}")


if __name__ == "__main__":  # pragma: no cover
    ctprep()
