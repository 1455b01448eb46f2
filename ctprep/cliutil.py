"""What the three command lines (ctprep, ctlabel, ctseg) share: turning errors into one line."""

from __future__ import annotations

import functools
import sys

import click

EXIT_FAILED = 1


def fail_cleanly(program: str):
    """Decorate a click command so lesionkit's (and the OS's) errors print one line and exit 1.

    ``program: error: <message>`` on stderr; a plain KeyError shows its key's message,
    not its repr.
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            from ctprep.errors import LesionkitError

            try:
                return func(*args, **kwargs)
            except (LesionkitError, OSError, ValueError, LookupError) as exc:
                plain_key = isinstance(exc, KeyError) and not isinstance(exc, LesionkitError) and exc.args
                click.echo(f"{program}: error: {exc.args[0] if plain_key else exc}", err=True)
                sys.exit(EXIT_FAILED)

        return wrapper

    return decorate
