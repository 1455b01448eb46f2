"""The ``ctlabel`` command line (its commands are being built; see README)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesionkit")
def main() -> None:
    """Build trimaps and soft masks for the lesions of a ctprep store.

    Not available yet in this version: `trimap`, `softmask` and `soften` are planned.
    """
