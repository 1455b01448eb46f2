"""ctseg's errors, each a :class:`lkbase.errors.LesionkitError` and a ``ValueError``.

Convention (lkbase.errors): a message names the key, file or option, what was expected
and what was found; the CLI prints it as one line. Other bad arguments inside ctseg
raise :class:`lkbase.errors.ParameterError` itself. No imports beyond lkbase: every
ctseg module may import this one.
"""

from __future__ import annotations

from lkbase.errors import FileFormatError, LesionkitError, ParameterError


class ConfigError(ParameterError):
    """A configuration value or file that cannot be used (names the key and what was expected)."""


class CheckpointError(FileFormatError):
    """A file that is not a usable ctseg checkpoint (names the file and what is wrong)."""


class EvaluationError(LesionkitError, ValueError):
    """Nothing could be evaluated as asked (no cases, no prediction label, bad threshold)."""
