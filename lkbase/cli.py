"""What the command lines (ctprep, ctlabel, ctseg) share: every error as one line."""

from __future__ import annotations

import functools
import sys

import click

from lkbase.errors import LesionkitError, is_storage_failure, storage_reason

EXIT_FAILED = 1


def fail_cleanly(program: str):
    """Decorate a click command so lesionkit's (and the OS's) errors print one line and exit 1.

    ``program: error: <message>`` on stderr; a plain KeyError shows its key's message,
    not its repr; an object store's client error (lkbase.errors.is_storage_failure) its reason.
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except (LesionkitError, OSError, ValueError, LookupError) as exc:
                click.echo(f"{program}: error: {_message(exc)}", err=True)
                sys.exit(EXIT_FAILED)
            except Exception as exc:  # an object store's client (botocore ...) failing where no layer named the store
                if not is_storage_failure(exc):
                    raise
                click.echo(f"{program}: error: object store: {storage_reason(exc)}", err=True)
                sys.exit(EXIT_FAILED)

        return wrapper

    return decorate


def _message(exc: BaseException) -> str:
    plain_key = isinstance(exc, KeyError) and not isinstance(exc, LesionkitError) and exc.args
    return " ".join(str(exc.args[0] if plain_key else exc).split())  # one line, whatever the message holds
