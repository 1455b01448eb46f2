"""Reading a NIfTI file's voxels a slab of slices (the file's last axis) at a time, or one range of slices
along another axis per pass over the file, for conversions whose memory must not grow with the case.

Convention: one pass over the file from its start, through one open stream: a ``.gz`` file is
inflated once, sequentially, by ISA-L (never re-inflated from the start per slab, as a seek in
a gzip stream would), and the file's sha256 is computed from the bytes as they are read. The
checks are those of :func:`ctprep.formats.nifti.read_nifti` (header, voxel type, truncation,
decompression bombs), made as the bytes arrive; a problem raises :class:`CaseInputError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from isal import igzip

from ctprep.errors import CaseInputError, MissingInputError
from ctprep.formats.nifti import (_GZIP_MAGIC, _HEADER_BYTES, _INFLATE_TOLERANCE, _affine, _checked_layout,
                                  _parse_header)

_COPY_BLOCK = 1 << 20  # bytes hashed per read of a file's remainder
_RANGE_READ_BYTES = 16 << 20  # voxel bytes inflated per read by read_range


class _HashingFile:
    """A binary file read through this object: every byte read is counted and hashed."""

    def __init__(self, handle, hashing: bool = True):
        self._handle = handle
        self.sha256 = hashlib.sha256() if hashing else None
        self.size = 0

    def readinto(self, buffer) -> int:
        got = self._handle.readinto(buffer)
        if got:
            if self.sha256 is not None:
                self.sha256.update(memoryview(buffer)[:got])
            self.size += got
        return got

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if self.sha256 is not None:
            self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        while self.read(_COPY_BLOCK):
            pass


class NiftiSlabReader:
    """A NIfTI file opened for reading its 3-D voxels slab by slab along the file's last axis, in file order
    (or, with :meth:`read_range`, one range of another axis).

    ``shape`` is the file's (x, y, z) (trailing singleton axes dropped), ``dtype`` the stored
    voxel type, ``slope``/``inter`` its scaling; :meth:`read` returns the next slices unscaled, as
    an (x, y, n) Fortran-ordered array; :meth:`finish` reads the rest of the file, checks it and
    gives its (size, sha256). Close it (or use it as a context manager) when done.
    """

    def __init__(self, path: str | Path, hashing: bool = True):
        self.path = Path(path)
        self._hashing = hashing
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError as exc:
            raise MissingInputError(self.path, "file not found") from exc
        except OSError as exc:
            raise CaseInputError(self.path, f"cannot read file ({exc.strerror or exc})") from exc
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        self._raw = _HashingFile(self._file, self._hashing)
        size = self._file.seek(0, 2)
        self._file.seek(0)
        magic = self._file.read(2)
        self._file.seek(0)
        if size == 0:
            raise CaseInputError(self.path, "file is empty")
        self.gz = magic == _GZIP_MAGIC
        self._stream = igzip.IGzipFile(fileobj=self._raw, mode="rb") if self.gz else self._raw
        head = self._read_up_to(_HEADER_BYTES)
        image = _parse_header(self.path, head)
        self.dtype, shape = _checked_layout(self.path, image, None if self.gz else size)
        proxy = image.dataobj
        if proxy.order != "F" or len(shape) != 3:
            raise CaseInputError(self.path, f"voxel order {proxy.order!r} is not NIfTI's")
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.affine = _affine(self.path, image)
        self.slope, self.inter = float(proxy.slope), float(proxy.inter)
        offset = int(proxy.offset)
        self._pending = memoryview(head)[offset:] if offset < len(head) else memoryview(b"")
        if offset > len(head):
            self._read_up_to(offset - len(head))  # extensions past our header read: skipped
        self._offset = offset
        self._needed = offset + int(np.prod(shape)) * self.dtype.itemsize
        self._slice_bytes = shape[0] * shape[1] * self.dtype.itemsize
        self._next = 0

    def _read_up_to(self, size: int) -> bytes:
        """Up to ``size`` inflated bytes (fewer only at the end of the stream)."""
        buffer = bytearray(size)
        view, filled = memoryview(buffer), 0
        try:
            while filled < size and (got := self._stream.readinto(view[filled:])):
                filled += got
        except (OSError, EOFError, ValueError) as exc:
            raise CaseInputError(self.path, f"truncated or corrupt gzip stream ({exc})") from exc
        return bytes(buffer[:filled]) if filled < size else bytes(buffer)

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` slices (x, y, count), unscaled, in the stored dtype."""
        if count < 1 or self._next + count > self.shape[2]:
            raise ValueError(f"{self.path}: cannot read {count} slices after slice {self._next} of {self.shape[2]}")
        buffer = bytearray(count * self._slice_bytes)
        view = memoryview(buffer)
        first = min(len(self._pending), len(buffer))
        view[:first] = self._pending[:first]
        self._pending = self._pending[first:]
        filled = first
        try:
            while filled < len(buffer) and (got := self._stream.readinto(view[filled:])):
                filled += got
        except (OSError, EOFError, ValueError) as exc:
            raise CaseInputError(self.path, f"truncated or corrupt gzip stream ({exc})") from exc
        if filled < len(buffer):
            held = self._offset + self._next * self._slice_bytes + filled
            raise CaseInputError(self.path, f"truncated: header promises {self._needed} bytes of voxel data "
                                            f"(shape {self.shape}, {self.dtype}), file holds {held}")
        self._next += count
        return np.ndarray((*self.shape[:2], count), dtype=self.dtype, buffer=buffer, order="F")

    def read_range(self, axis: int, first: int, last: int) -> np.ndarray:
        """All the file's voxels whose index along ``axis`` (0 or 1) lies in ``first .. last``, unscaled, in
        the stored dtype (Fortran order): the whole file read, :data:`_RANGE_READ_BYTES` at a time."""
        if axis not in (0, 1) or not 0 <= first < last <= self.shape[axis] or self._next:
            raise ValueError(f"{self.path}: cannot read slices {first}..{last} of axis {axis} of {self.shape}")
        shape = list(self.shape)
        shape[axis] = last - first
        out = np.empty(shape, dtype=self.dtype, order="F")
        kept = (slice(None),) * axis + (slice(first, last),)
        step = max(1, _RANGE_READ_BYTES // self._slice_bytes)
        for done in range(0, self.shape[2], step):
            count = min(step, self.shape[2] - done)
            out[..., done:done + count] = self.read(count)[kept]
        return out

    def finish(self) -> tuple[int, str | None]:
        """After the last slice: the file's size and sha256 (None when opened without ``hashing``), refusing
        a gzip stream that inflates more than :data:`_INFLATE_TOLERANCE` bytes past the voxel data its
        header promises (a decompression bomb)."""
        if self.gz:
            extra = len(self._pending) + len(self._read_up_to(_INFLATE_TOLERANCE + 1 - len(self._pending)))
            if extra > _INFLATE_TOLERANCE:
                raise CaseInputError(self.path, f"gzip stream inflates past the {self._needed} bytes its NIfTI "
                                                f"header promises (more than {_INFLATE_TOLERANCE} bytes beyond "
                                                "them); refusing to inflate the rest (decompression bomb?)")
        self._raw.drain()
        return self._raw.size, self._raw.sha256.hexdigest() if self._raw.sha256 is not None else None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "NiftiSlabReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
