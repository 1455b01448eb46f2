"""ctlabel's exceptions: a lesion that cannot be labelled is skipped and reported, never fatal.

Both subclass :class:`ctprep.errors.LesionkitError` (so the CLI prints them as one line)
and ``ValueError`` (so callers may catch the builtin).
"""

from __future__ import annotations

from ctprep.errors import LesionkitError


class LesionError(LesionkitError, ValueError):
    """One lesion's evidence is unusable (RECIST outside the slice, empty mask, ...)."""

    def __init__(self, lesion: str, reason: str):
        self.lesion = lesion
        self.reason = reason
        super().__init__(f"{lesion}: {reason}")


class TrimapError(LesionError):
    """A trimap has no foreground or no background: the matting solver would be ill-posed.

    Such a lesion is reported and skipped, never passed to the solver.
    """
