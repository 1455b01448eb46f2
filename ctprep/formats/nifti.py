"""Fast, checked NIfTI reading for the NIfTI sources (LiTS, KiTS19).

nibabel parses the header (sform/qform, scaling, NIfTI-1 and -2); the voxel
data are then viewed straight out of the decompressed bytes instead of going
through ``get_fdata`` (which builds a float64 copy eight times the size of
an int16 volume). ``.gz`` files are inflated with ISA-L (``isal``), the
fastest gzip decoder we measured (benchmarks/bench_convert.py).
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from isal import igzip

from ctprep.errors import CaseInputError, MissingInputError

if TYPE_CHECKING:  # nibabel is imported where a header is parsed: `import ctprep.convert` stays light
    import nibabel as nib

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGIC = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = b"n+2\x00"


@dataclass(frozen=True, kw_only=True, eq=False)
class NiftiVolume:
    """A NIfTI file's voxels (source layout, stored dtype, unscaled) with its affine and scaling."""

    path: Path
    array: np.ndarray
    affine: np.ndarray
    slope: float
    inter: float
    size: int
    sha256: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


@dataclass(frozen=True, kw_only=True, eq=False)
class NiftiHeader:
    """What a NIfTI header says, no voxels read: the file, its 3-D shape, voxel type and affine."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    affine: np.ndarray


def read_nifti(path: str | Path) -> NiftiVolume:
    """Read a .nii or .nii.gz file, raising :class:`CaseInputError` with the reason when it is unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise MissingInputError(path, "file not found") from exc
    except OSError as exc:
        raise CaseInputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise CaseInputError(path, "file is empty")
    # The manifest's sha256 of the file costs ~0.05 s per 70 MB; hashlib and ISA-L both
    # release the GIL, so the hash runs in a thread while the file inflates.
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        raw = _inflate(path, data) if data[:2] == _GZIP_MAGIC else data
        digest = hashing.result()
    image = _parse_header(path, bytes(raw[:_HEADER_BYTES]))
    proxy = image.dataobj
    dtype, volume = _checked_layout(path, image, len(raw))
    array = np.ndarray(volume, dtype=dtype, buffer=raw, offset=int(proxy.offset), order=proxy.order)
    slope, inter = proxy.slope, proxy.inter
    affine = _affine(path, image)
    return NiftiVolume(path=path, array=array, affine=affine, slope=float(slope), inter=float(inter),
                       size=len(data), sha256=digest)


def read_nifti_header(path: str | Path) -> NiftiHeader:
    """Only the header of a .nii or .nii.gz file (``ctprep check``): the same rules as :func:`read_nifti`
    (gzip told by its magic bytes, not the name; real voxel types; an uncompressed file long enough),
    without reading or inflating the voxels. Raises :class:`CaseInputError` with the reason."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
            size = handle.seek(0, 2)
    except FileNotFoundError as exc:
        raise MissingInputError(path, "file not found") from exc
    except OSError as exc:
        raise CaseInputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not head:
        raise CaseInputError(path, "file is empty")
    gz = head[:2] == _GZIP_MAGIC
    if gz:
        try:
            with igzip.open(path, "rb") as stream:
                head = stream.read(_HEADER_BYTES)
        except (OSError, EOFError, ValueError) as exc:
            raise CaseInputError(path, f"truncated or corrupt gzip stream ({exc})") from exc
    image = _parse_header(path, head)
    dtype, volume = _checked_layout(path, image, None if gz else size)
    return NiftiHeader(path=path, shape=volume, dtype=dtype, affine=_affine(path, image))


def _checked_layout(path: Path, image: nib.Nifti1Image, available: int | None) -> tuple[np.dtype, tuple[int, ...]]:
    """The voxel dtype and 3-D shape (trailing singleton axes dropped), refusing other voxel
    types, other dimensions and, when ``available`` (uncompressed bytes) is known, truncation."""
    dtype = _real_dtype(path, image)
    shape = tuple(int(s) for s in image.dataobj.shape)
    needed = int(image.dataobj.offset) + int(np.prod(shape)) * dtype.itemsize
    if available is not None and available < needed:
        raise CaseInputError(path, f"truncated: header promises {needed} bytes of voxel data "
                                   f"(shape {shape}, {dtype}), file holds {available}")
    volume = shape
    while len(volume) > 3 and volume[-1] == 1:
        volume = volume[:-1]
    if len(volume) != 3:
        raise CaseInputError(path, f"expected a 3-D volume, found shape {shape}")
    if min(volume) < 1:
        raise CaseInputError(path, f"header gives a zero-size dimension: shape {shape} holds no voxel")
    return dtype, volume


# Bytes read for a header: the NIfTI-2 header (540), its extension flag and any extensions.
_HEADER_BYTES = 1 << 16


def _affine(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CaseInputError(path, f"affine is singular or not finite: {affine.round(4).tolist()}")
    return affine


def _real_dtype(path: Path, image: nib.Nifti1Image) -> np.dtype:
    """The voxel dtype, refusing what is not a real number (RGB, complex): no HU can come of it."""
    import nibabel as nib

    dtype = np.dtype(image.dataobj.dtype)
    if dtype.kind not in "iuf":
        code = int(image.header["datatype"])
        name = nib.nifti1.data_type_codes.label.get(code, str(dtype))
        raise CaseInputError(path, f"voxel type {name} (NIfTI datatype {code}) is not a real number; "
                                   "expected integer or float voxels")
    return dtype


# Bytes a gzip stream may hold past the voxel data its header promises (some writers pad) before
# the file counts as a decompression bomb and is refused, unread.
_INFLATE_TOLERANCE = 1 << 20
_DEFLATE_MAX_RATIO = 1032


def _inflate(path: Path, data: bytes) -> memoryview:
    """The inflated file, streamed and stopped at the size its NIfTI header implies (plus
    :data:`_INFLATE_TOLERANCE`): a small file inflating to gigabytes is refused, not held in memory."""
    try:
        with igzip.IGzipFile(fileobj=io.BytesIO(data)) as stream:
            head = stream.read(_HEADER_BYTES)
            image = _parse_header(path, head)
            proxy = image.dataobj
            needed = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
            limit = max(needed, len(head)) + _INFLATE_TOLERANCE
            # deflate inflates at most ~1032:1, which bounds the buffer when a header promises terabytes
            buffer = bytearray(min(limit, _DEFLATE_MAX_RATIO * len(data) + len(head)) + 1)
            buffer[:len(head)] = head
            view, filled = memoryview(buffer), len(head)
            while filled < len(buffer) and (got := stream.readinto(view[filled:])):
                filled += got
    except CaseInputError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise CaseInputError(path, f"truncated or corrupt gzip stream ({exc})") from exc
    if filled > limit:
        raise CaseInputError(path, f"gzip stream inflates past the {needed} bytes its NIfTI header promises "
                                   f"(more than {_INFLATE_TOLERANCE} bytes beyond them); refusing to inflate "
                                   "the rest (decompression bomb?)")
    return view[:filled]


def _parse_header(path: Path, raw: bytes) -> nib.Nifti1Image:
    import nibabel as nib

    if raw[344:348] not in _NIFTI1_MAGIC and raw[4:8] != _NIFTI2_MAGIC:
        # Checked first: nibabel would log its attempted fixes of such a header to stderr.
        raise CaseInputError(path, "not a NIfTI-1/2 file (no NIfTI magic string at byte 344 or 4)")
    kind = nib.Nifti2Image if raw[4:8] == _NIFTI2_MAGIC else nib.Nifti1Image
    try:
        return kind.from_bytes(raw)
    except Exception as exc:  # nibabel raises several types for a bad header
        raise CaseInputError(path, f"not a NIfTI-1/2 file ({exc})") from exc


def hu_int16(volume: NiftiVolume) -> np.ndarray:
    """The volume in integer HU as int16, without a copy when the file already stores that.

    Scaled or float data are converted in float32, checked for NaN/inf and rounded.
    """
    array = volume.array
    exact = volume.slope == 1.0 and volume.inter == 0.0
    if exact and array.dtype == np.int16:
        return array if array.dtype.isnative else array.astype(np.int16)
    if array.dtype.kind in "iu" and volume.slope == 1.0 and float(volume.inter).is_integer():
        wide = array.astype(np.int32) + int(volume.inter)
        return _clip_int16(volume.path, wide)
    scaled = array.astype(np.float32) * np.float32(volume.slope) + np.float32(volume.inter)
    if not np.isfinite(scaled).all():
        bad = int(np.size(scaled) - np.count_nonzero(np.isfinite(scaled)))
        raise CaseInputError(volume.path, f"{bad} voxels are NaN or infinite")
    return _clip_int16(volume.path, np.rint(scaled, out=scaled))


def _clip_int16(path: Path, values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(), values.max()
    if lo < -32768 or hi > 32767:
        raise CaseInputError(path, f"HU range [{lo}, {hi}] does not fit int16; is this a CT?")
    return values.astype(np.int16)


def label_uint8(volume: NiftiVolume) -> np.ndarray:
    """Segmentation values as uint8, refusing non-integral, negative or >255 values.

    NIfTI scaling (``value = stored * scl_slope + scl_inter``) applies to a segmentation as to any
    volume: it is applied when it maps every stored code to an integer, refused otherwise."""
    array = volume.array if (volume.slope, volume.inter) == (1.0, 0.0) else _scaled_labels(volume)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise CaseInputError(volume.path, "segmentation holds NaN or infinite values")
        if not np.array_equal(array, np.rint(array)):
            raise CaseInputError(volume.path, "segmentation holds non-integer values")
    lo, hi = array.min(), array.max()
    if lo < 0 or hi > 255:
        raise CaseInputError(volume.path, f"segmentation values range [{lo}, {hi}], expected 0..255 labels")
    return array.astype(np.uint8)


def _scaled_labels(volume: NiftiVolume) -> np.ndarray:
    """The label codes a scaled segmentation stands for (uint8), code by code: a segmentation holds
    few distinct codes, and a float multiply of the whole volume would round silently."""
    codes = np.unique(volume.array)
    mapped = codes.astype(np.float64) * volume.slope + volume.inter
    scaling = f"scl_slope {volume.slope:g}, scl_inter {volume.inter:g}"
    off = ~np.isfinite(mapped) | (mapped != np.rint(mapped))
    if off.any():
        pairs = ", ".join(f"{c:g} -> {m:g}" for c, m in zip(codes[off][:4].tolist(), mapped[off][:4].tolist()))
        raise CaseInputError(volume.path, f"segmentation scaling ({scaling}) maps stored codes to non-integer "
                                          f"labels ({pairs}); labels must be integers")
    if mapped.min() < 0 or mapped.max() > 255:
        raise CaseInputError(volume.path, f"segmentation values range [{mapped.min():g}, {mapped.max():g}] "
                                          f"after scaling ({scaling}), expected 0..255 labels")
    out = np.zeros(volume.array.shape, dtype=np.uint8)
    for code, value in zip(codes.tolist(), mapped.astype(np.uint8).tolist()):
        if value:
            out[volume.array == code] = value
    return out
