"""The error root of lesionkit.

Every error any of the three tools raises on purpose derives from :class:`LesionkitError`
*and* from the builtin it refines, so callers may catch either (a missing case is also
a ``FileNotFoundError``, a bad option also a ``ValueError``). Messages name the file,
option or field, what was expected and what was found, and where they can, the fix; the
CLIs print them as one line (:mod:`lkbase.cli`). Each package keeps its own errors in its
``errors.py``, derived from these. Errors of the object-store clients under fsspec
(:func:`is_storage_failure`) are not ours: the store layer and the CLIs turn them into one line.
"""

from __future__ import annotations


class LesionkitError(Exception):
    """Base class of every error lesionkit raises on purpose."""


class ParameterError(LesionkitError, ValueError):
    """An option, argument or configuration value cannot be used as given."""


class FileFormatError(LesionkitError, ValueError):
    """A file lesionkit wrote (or reads) is not in the format it expects."""


# The clients under fsspec's object stores (s3fs: aiobotocore, botocore, aiohttp; gcsfs:
# google-auth, aiohttp): their exceptions are recognised by module, so none is imported here.
_CLIENT_MODULES = {"botocore", "aiobotocore", "aiohttp", "google", "s3fs", "gcsfs", "adlfs", "azure"}


def is_storage_failure(exc: BaseException) -> bool:
    """An error of an object store's client or service (connection, credentials, bucket), not of the data.

    fsspec's filesystems raise the client's own exceptions, or OSErrors translated from
    them (``__cause__`` then is the client's).
    """
    return any(cls.__module__.split(".")[0] in _CLIENT_MODULES
               for e in (exc, exc.__cause__) if e is not None for cls in type(e).__mro__)


def storage_reason(exc: BaseException) -> str:
    """The reason of a storage failure in one line, e.g. ``Could not connect to the endpoint URL: "..."``."""
    code = getattr(getattr(exc, "__cause__", None) or exc, "response", None)
    code = (code or {}).get("Error", {}).get("Code") if isinstance(code, dict) else None
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{code}: {text}" if code and code not in text else text
