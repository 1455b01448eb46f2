"""ctprep's exceptions, under lesionkit's one root (:class:`lkbase.errors.LesionkitError`).

Each one also subclasses the builtin it refines, so callers may catch either
(a missing case is also a ``FileNotFoundError``). Messages name the file or
field, what was expected and what was found; the CLI prints them as one line.
"""

from __future__ import annotations

from pathlib import Path

from lkbase.errors import LesionkitError


class CaseInputError(LesionkitError, ValueError):
    """A case's input files are unusable (corrupt, inconsistent, out of range).

    The converter skips such a case, reports it and converts the others.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingInputError(CaseInputError, FileNotFoundError):
    """A file a case needs does not exist."""


class StoreError(LesionkitError):
    """A slice store cannot be used as asked."""


class StoreFormatError(StoreError, ValueError):
    """The folder is not a lesionkit store, or has a format version we cannot read."""


class StoreParameterError(StoreError, ValueError):
    """A conversion into an existing store asked for different parameters."""


class PredictionsMismatchError(StoreError, ValueError):
    """A predictions store was not predicted from the dataset store it is used with (another store,
    or the same one re-converted, or a case rewritten since)."""


class StoreWriteError(StoreError, OSError):
    """The store cannot take the write at all (no space left, quota, read-only file system).

    Not a problem of one case's input: ``ctprep convert`` stops the run on it instead of
    skipping every following case. Built as ``StoreWriteError(errno, message)``; prints the message.
    """

    def __str__(self) -> str:
        return str(self.strerror if self.strerror is not None else super().__str__())


class StoreUnreachableError(StoreWriteError):
    """An object store that cannot be reached or refuses us (connection refused, wrong
    credentials, missing bucket, writes refused): fatal to a run like a full disk."""


class CaseNotFoundError(StoreError, FileNotFoundError, KeyError):
    """A case id is not (completely) in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ManifestError(LesionkitError, ValueError):
    """A dataset manifest in data_manifests/ is malformed or unknown."""


class RecistAxesError(LesionkitError, ValueError):
    """RECIST axes that span no region (a long axis under a pixel, a short axis of zero length)."""


class GeometryError(LesionkitError, ValueError):
    """A voxel grid or affine that describes no usable volume (zero, non-finite or singular)."""
