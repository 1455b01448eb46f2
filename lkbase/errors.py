"""The error root of lesionkit.

Every error any of the three tools raises on purpose derives from :class:`LesionkitError`
*and* from the builtin it refines, so callers may catch either (a missing case is also
a ``FileNotFoundError``, a bad option also a ``ValueError``). Messages name the file,
option or field, what was expected and what was found, and where they can, the fix; the
CLIs print them as one line (:mod:`lkbase.cli`). Each package keeps its own errors in its
``errors.py``, derived from these.
"""

from __future__ import annotations


class LesionkitError(Exception):
    """Base class of every error lesionkit raises on purpose."""


class ParameterError(LesionkitError, ValueError):
    """An option, argument or configuration value cannot be used as given."""


class FileFormatError(LesionkitError, ValueError):
    """A file lesionkit wrote (or reads) is not in the format it expects."""
