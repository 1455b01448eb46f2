"""The ``ctseg`` command line (its commands are being built; see README)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesionkit")
def main() -> None:
    """Train, evaluate and run GAN tumour segmentors on ctprep stores.

    Not available yet in this version: `train`, `evaluate` and `predict` are planned.
    """
