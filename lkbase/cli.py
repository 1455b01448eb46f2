"""What the command lines (ctprep, ctlabel, ctseg) share: every error as one line."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys

import click

from lkbase.errors import LesionkitError, is_storage_failure, storage_reason

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def fail_cleanly(program: str):
    """Decorate a click command so lesionkit's (and the OS's) errors print one line and exit 1
    (SIGINT: ``program: interrupted``, exit 130).

    ``program: error: <message>`` on stderr; a plain KeyError shows its key's message,
    not its repr; an object store's client error (lkbase.errors.is_storage_failure) its reason.
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except KeyboardInterrupt:  # Ctrl-C / SIGINT: finished cases are whole, the one in flight invisible
                _exit_interrupted(program)
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


def _exit_interrupted(program: str) -> None:
    """One line, then exit 130 at once: a normal interpreter exit would let zarr's event loop log
    every task the interrupt cut short (asyncio "Task was destroyed", "never awaited"). Writes are
    atomic and locks are released by the kernel, so skipping the interpreter's cleanup loses nothing;
    pool workers follow their parent (lkbase.runner)."""
    click.echo(f"{program}: interrupted", err=True)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_INTERRUPTED)


def _message(exc: BaseException) -> str:
    plain_key = isinstance(exc, KeyError) and not isinstance(exc, LesionkitError) and exc.args
    return " ".join(str(exc.args[0] if plain_key else exc).split())  # one line, whatever the message holds
