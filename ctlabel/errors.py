"""ctlabel's exceptions, under lesionkit's one root (:class:`lkbase.errors.LesionkitError`).

A lesion that cannot be labelled is skipped and reported, never fatal (:class:`LesionError`);
a case whose stored evidence is unusable is skipped (:class:`LabelInputError`). Each also
subclasses ``ValueError`` (so callers may catch the builtin); the CLI prints them as one
line. Bad options and arguments raise :class:`lkbase.errors.ParameterError`.
"""

from __future__ import annotations

from lkbase.errors import LesionkitError


class LabelInputError(LesionkitError, ValueError):
    """A stored label or annotation cannot serve as ctlabel's input (not binary, wrong dtype, malformed, absent)."""


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
