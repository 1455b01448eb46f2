"""Atomic writes: the one way every lesionkit writer puts a file in place.

A file is written under a temporary name beside its destination (``.lk-tmp-<token>-<name>``:
hidden, the destination's own suffix kept so format libraries such as nibabel accept it),
flushed and fsync'ed, then ``os.replace``'d over the destination. A reader sees the old
file or the new one, never a torn one; a failure (or an interrupt) removes the temporary.
A process killed with SIGKILL can leave a temporary behind: :func:`remove_temporaries`
clears them for the owner of the folder.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".lk-tmp-"


def temporary_name(path: Path) -> Path:
    """The temporary file beside ``path`` that a write goes to first."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (nibabel, OpenCV); put it in place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file handle whose content replaces ``path`` atomically when the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path) as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_atomic(source: str | Path, path: str | Path) -> Path:
    """Copy the file ``source`` to ``path`` atomically; returns the path."""
    import shutil

    with atomic_write(path) as handle, open(source, "rb") as original:
        shutil.copyfileobj(original, handle)
    return Path(path)


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that killed writers left in ``folder``; returns them.

    Only for the process that owns the folder (a resume): a writer running beside it would lose its file.
    """
    stale = sorted(Path(folder).glob(f"{TEMP_PREFIX}*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
