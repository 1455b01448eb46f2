"""The CT slice store: the one module that knows the on-disk format (docs/store-format.md).

A store is a Zarr v3 hierarchy, in a local folder or at an fsspec URL (s3://, gs://,
memory:// ...; local folders and file:// keep the fast paths, see _Files)::

    STORE.zarr/
      zarr.json                   format, version, parameters, manifest (attributes)
      cases/<case_id>/            one group per case; attributes hold its CaseRecord
        image                     uint8 (z, channel, y, x), one channel per window
        hu                        int16 (z, y, x), only with --keep-hu
        labels/<name>             uint8 (z, y, x), 0/1 (later: trimaps, soft masks ...)
      index/                      the slice index: case, z, z_mm, lesion_pixels, split

Every array is chunked one slice per chunk and compressed with zstd level 1
(benchmarks/bench_store.py chose it). A case becomes visible only when its
attributes say ``complete``; that write comes last, so an interrupted
conversion leaves an incomplete case that readers ignore and the next run redoes.

No other module imports zarr.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore

from ctprep.case import SPLITS, CaseRecord
from ctprep.errors import (CaseNotFoundError, StoreError, StoreFormatError, StoreParameterError,
                           StoreWriteError)
from ctprep.lookup import LazySlices

FORMAT_NAME = "lesionkit-ct-slice-store"
FORMAT_VERSION = 1
ZSTD_LEVEL = 1
_STORE_KEY = "lesionkit"
_CASE_KEY = "lesionkit_case"
_STAGING = "_staging."  # prefix of a label being written; never listed as a label
LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


@dataclass(frozen=True, kw_only=True)
class CaseData:
    """A whole case read back: image (z, channel, y, x) uint8, labels (z, y, x), optional HU."""

    record: CaseRecord
    image: np.ndarray
    labels: Mapping[str, np.ndarray]
    hu: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class SliceBatch:
    """Slices from any cases: image (n, channel, y, x) uint8, labels name -> (n, y, x)."""

    keys: tuple[tuple[str, int], ...]
    image: np.ndarray
    labels: Mapping[str, np.ndarray]


INDEX_DTYPE = np.dtype([("case", "U64"), ("z", "i4"), ("z_mm", "f4"),
                        ("lesion_pixels", "i8"), ("split", "U5")])


class SliceIndex:
    """The store-level slice table (case, z, z_mm, lesion_pixels, split); ``z`` is the stored slice row."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.keys())

    @property
    def has_lesion(self) -> np.ndarray:
        return self.rows["lesion_pixels"] > 0

    def keys(self) -> list[tuple[str, int]]:
        return [(str(c), int(z)) for c, z in zip(self.rows["case"], self.rows["z"])]

    def filter(self, *, split: str | None = None, lesion_only: bool = False,
               cases: Iterable[str] | None = None) -> "SliceIndex":
        mask = np.ones(len(self.rows), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, found {split!r}")
            mask &= self.rows["split"] == split
        if lesion_only:
            mask &= self.has_lesion
        if cases is not None:
            mask &= np.isin(self.rows["case"], list(cases))
        return SliceIndex(self.rows[mask])

    @classmethod
    def from_records(cls, records: Iterable[CaseRecord]) -> "SliceIndex":
        parts = []
        for rec in records:
            part = np.zeros(rec.num_slices, dtype=INDEX_DTYPE)
            part["case"] = rec.case_id
            part["z"] = np.arange(rec.num_slices)
            part["z_mm"] = rec.z_positions
            part["lesion_pixels"] = rec.lesion_pixels
            part["split"] = rec.split
            parts.append(part)
        return cls(np.concatenate(parts) if parts else np.zeros(0, dtype=INDEX_DTYPE))


class _ChunkFiles:
    """Reads and writes one-slice chunks of a local array straight from and to their files.

    zarr-python spends ~1 ms of per-call overhead on a single-chunk read; decoding
    the chunk file ourselves is several times faster (benchmarks/bench_read.py).
    Writing is the same story: zarr's whole-array write spends most of its time in
    per-chunk Python work that holds the GIL, so it barely uses a second core;
    encoding the slices ourselves in threads (zstd and file I/O release the GIL) is
    about twice as fast (benchmarks/bench_convert.py, "where the time goes"). The
    files are exactly those zarr writes: the zstd frame of the slice's little-endian
    bytes under the array's chunk key, slices equal to the fill value left out.
    Used only when the array's codecs are exactly bytes + zstd, which is what this
    module writes; anything else goes through zarr.
    """

    def __init__(self, array: zarr.Array, folder: Path):
        self.folder = folder
        self.array = array
        self.chunk_shape = tuple(array.metadata.chunk_grid.chunk_shape)
        self.dtype = array.dtype
        self.fill_value = array.metadata.fill_value
        self._encoding = array.metadata.chunk_key_encoding
        self._zeros = (0,) * (array.ndim - 1)
        self._zstd = Zstd()
        self._paths: dict[int, str] = {}  # z -> chunk file; a str join is cheaper than a Path per read

    @staticmethod
    def usable(array: zarr.Array) -> bool:
        codecs = array.metadata.codecs
        return (len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
                and isinstance(codecs[1], ZstdCodec) and array.metadata.chunk_grid.chunk_shape[0] == 1
                and tuple(array.metadata.chunk_grid.chunk_shape[1:]) == tuple(array.shape[1:]))

    def _path(self, z: int) -> str:
        path = self._paths.get(z)
        if path is None:
            path = self._paths[z] = os.path.join(self.folder, self._encoding.encode_chunk_key((z, *self._zeros)))
        return path

    def read_into(self, z: int, out: np.ndarray) -> None:
        try:
            with open(self._path(z), "rb", buffering=0) as handle:  # unbuffered: one read of the whole file
                payload = handle.readall()
        except FileNotFoundError:  # zarr does not write chunks that equal the fill value
            out[...] = self.fill_value
            return
        try:
            self._zstd.decode(payload, out=out.reshape(-1).view(np.uint8))
        except (RuntimeError, ValueError) as exc:  # numcodecs reports corrupt frames as RuntimeError
            raise StoreError(f"{self._path(z)}: corrupt chunk, slice {z} ({exc}); `ctprep verify` the store") from exc
        if self.dtype.byteorder == ">" or (self.dtype.byteorder == "=" and np.little_endian is False):
            out.byteswap(inplace=True)  # pragma: no cover - we only write little-endian

    def write_all(self, data: np.ndarray | LazySlices) -> dict[str, str]:
        """Write every slice of ``data`` (the array's full shape) as one chunk file each.

        Returns the checksum of every chunk file written, by chunk key (see chunk_checksum).

        Slices are pulled with ``data[z]`` from the writer threads, so a LazySlices
        volume is computed in parallel, slice by slice, and never held whole.
        """
        if data.shape != tuple(self.array.shape):
            raise ValueError(f"expected shape {tuple(self.array.shape)}, found {data.shape}")
        zstd_codec = self.array.metadata.codecs[1]
        zstd = Zstd(level=zstd_codec.level, checksum=zstd_codec.checksum)
        little = self.dtype.newbyteorder("<")
        fill = self.dtype.type(self.fill_value)
        os.makedirs(self.folder, exist_ok=True)
        flat = os.path.dirname(self._path(0)) == os.fspath(self.folder)  # our "." chunk keys

        def write(z: int) -> tuple[str, str] | None:
            chunk = data[z]
            empty = not chunk.any() if fill == 0 else bool(np.all(chunk == fill))
            if empty:
                return None  # as zarr (write_empty_chunks=False): a missing chunk reads as the fill value
            payload = zstd.encode(np.ascontiguousarray(chunk, dtype=little))
            path = self._path(z)
            if not flat:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            # Written in place, not to a temporary name renamed into place as zarr does: a
            # case is invisible until write_case marks it complete, so a torn chunk is never
            # read, and on slow disks the rename was a third of the time of a chunk.
            with open(path, "wb") as handle:
                handle.write(payload)
            return os.path.relpath(path, self.folder), chunk_checksum(payload)

        with ThreadPoolExecutor(max_workers=_WRITE_THREADS) as pool:
            written = [item for item in pool.map(write, range(data.shape[0])) if item]  # re-raises errors
        return dict(sorted(written))


def chunk_checksum(payload: bytes) -> str:
    """The recorded checksum of a chunk file: the first 16 hex digits of its sha256."""
    return hashlib.sha256(payload).hexdigest()[:16]


def array_checksums(folder: Path) -> dict[str, str]:
    """Checksums of the chunk files of the array stored in ``folder``, by chunk key."""
    sums = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name != "zarr.json":
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    sums[os.path.relpath(path, folder)] = chunk_checksum(handle.read())
    return dict(sorted(sums.items()))


def _write_chunks_through(files: "_Files", array: zarr.Array, data: np.ndarray | LazySlices) -> dict[str, str]:
    """Write every slice of ``data`` as one chunk object through fsspec: the files _ChunkFiles writes locally.

    Ours rather than zarr's ``array[...] = data`` for three reasons: a LazySlices
    volume is computed slice by slice in the threads, never held whole; the checksums
    come from the bytes sent, with no second download; and a failure (disk full) returns
    only once no write is in flight, so the caller's clean-up is not undone by a
    straggler (zarr leaves its other puts running when one fails).
    """
    if data.shape != tuple(array.shape):
        raise ValueError(f"expected shape {tuple(array.shape)}, found {data.shape}")
    codec = array.metadata.codecs[1]
    zstd = Zstd(level=codec.level, checksum=codec.checksum)
    little, fill = array.dtype.newbyteorder("<"), array.dtype.type(array.metadata.fill_value)
    encoding, zeros = array.metadata.chunk_key_encoding, (0,) * (array.ndim - 1)

    def write(z: int) -> tuple[str, str] | None:
        chunk = np.asarray(data[z])
        if not chunk.any() if fill == 0 else bool(np.all(chunk == fill)):
            return None  # as zarr (write_empty_chunks=False): a missing chunk reads as the fill value
        payload = zstd.encode(np.ascontiguousarray(chunk, dtype=little))
        key = encoding.encode_chunk_key((z, *zeros))
        files.fs.pipe_file(files.path(f"{array.path}/{key}"), payload)
        return key, chunk_checksum(payload)

    pool = ThreadPoolExecutor(max_workers=_REMOTE_THREADS)
    try:
        futures = [pool.submit(write, z) for z in range(data.shape[0])]
        written = [item for item in (f.result() for f in futures) if item]
    finally:  # on failure: slices not started are dropped, those in flight finish before we return
        pool.shutdown(wait=True, cancel_futures=True)
    return dict(sorted(written))


def checksums_digest(checksums: Mapping[str, Mapping[str, str]]) -> str:
    """One sha256 over a case's chunk checksums: what a manifest records for the case."""
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()


# Threads encoding and writing chunks; more than the cores buys nothing (zstd is CPU-bound).
_WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))


# Chunk files named c.<z>.0.0.0 side by side in the array's folder: with the default "/"
# separator every slice costs three directories, most of a chunk's write time on slow disks.
_CHUNK_KEYS = {"name": "default", "separator": "."}


# Chunk uploads in flight on non-local stores (I/O-bound: more than the cores).
_REMOTE_THREADS = 8


def _slice_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape[1:])


def _case_path(case_id: str) -> str:
    return f"cases/{case_id}"


def _validate_case_id(case_id: str) -> None:
    if not case_id or "/" in case_id or case_id.startswith(".") or case_id != case_id.strip():
        raise ValueError(f"case id {case_id!r} cannot name a store group")


def _validate_label_name(name: str) -> None:
    if not name or "/" in name or name.startswith((".", "_")) or name != name.strip():
        raise ValueError(f"label name {name!r} cannot name a store array (no '/', no leading '.' or '_')")


# Errors that mean "this store cannot take writes", never "this case's input is bad".
_STORE_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}
_LOCK_NAME = ".lesionkit.lock"  # inside a local store: flock'ed around writes of shared metadata
_PROCESS_LOCAL_PROTOCOLS = {"memory"}  # filesystems that exist only inside one process


def is_url(location: str | Path) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://...``, ``memory://...``, ``file://...``) rather than a path."""
    return isinstance(location, str) and "://" in location


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:  # removed meanwhile (another writer)
        return None


class _Files:
    """Where a store lives and the few file operations it needs beyond zarr, local or through fsspec.

    One object for both, so the store's code never asks which: a local folder (a plain
    path, or a ``file://`` URL) keeps the fast paths (our own chunk files, ``os.replace``,
    ``flock``); any other fsspec URL goes through the URL's filesystem, and zarr reaches
    it through zarr's own ``FsspecStore`` (which wraps synchronous filesystems such as
    ``memory://`` in fsspec's ``AsyncFileSystemWrapper``).
    """

    def __init__(self, location: str | Path):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = str(location)
        if not is_url(location):
            self.fs, self.root, self.protocol = LocalFileSystem(), os.path.abspath(location), "file"
        else:
            try:
                self.fs, self.root = fsspec.core.url_to_fs(self.url)
            except ValueError as exc:  # fsspec: "Protocol not known: foo"
                raise StoreError(f"{self.url}: unknown storage protocol ({exc}); use a path or a URL such as "
                                 "file://, memory://, s3:// (pip install s3fs), gs:// (pip install gcsfs)") from None
            except ImportError as exc:  # e.g. s3:// without s3fs: fsspec says what to install
                raise StoreError(f"{self.url}: {exc}") from None
            self.root = self.root.rstrip("/")
            protocol = self.fs.protocol
            self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        self.local: Path | None = Path(self.root) if isinstance(self.fs, LocalFileSystem) else None

    @property
    def process_local(self) -> bool:
        """True for filesystems that other processes cannot see (``memory://``)."""
        return self.protocol in _PROCESS_LOCAL_PROTOCOLS

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def zarr_store(self, read_only: bool):
        if self.local is not None:
            return LocalStore(self.local, read_only=read_only)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, read_only=read_only)

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path(rel))

    def is_empty(self) -> bool:
        """No store content (a folder holding only our lock file counts as empty)."""
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return True
        return not [n for n in names if n != _LOCK_NAME]

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def files(self, rel: str = "") -> dict[str, int]:
        """Every file below ``rel``: path relative to it -> size in bytes."""
        base = self.path(rel)
        if self.local is not None:  # os.walk: several times fewer system calls than fsspec's find
            return {os.path.relpath(path, base): size for d, _, names in os.walk(base) for n in names
                    if (size := _file_size(path := os.path.join(d, n))) is not None}
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(base) + 1:]: int(info.get("size") or 0) for name, info in found.items()
                if info.get("type") != "directory" and name.startswith(base + "/")}

    def checksums(self, rel: str) -> dict[str, str]:
        """Checksums of the chunk files of the array at ``rel``, by chunk key."""
        if self.local is not None:
            return array_checksums(self.local / rel)
        base = self.path(rel)
        names = sorted(n for n in self.files(rel) if n.rsplit("/", 1)[-1] != "zarr.json")
        payloads = self.fs.cat([f"{base}/{n}" for n in names]) if names else {}
        return {n: chunk_checksum(payloads[f"{base}/{n}"]) for n in names}

    def remove(self, rel: str) -> None:
        """Delete a file or folder below the root; a missing one is fine."""
        if self.local is not None:
            shutil.rmtree(self.local / rel, ignore_errors=True)
            return
        try:
            self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            pass

    def copy_tree(self, src: str, dst: str) -> None:
        """Copy every file below ``src`` to the same place below ``dst`` (server-side on object stores)."""
        # Metadata first: a partial copy is then a (sparse) array, not a stray folder zarr warns about.
        names = sorted(self.files(src), key=lambda n: (n != "zarr.json", n))
        if names:
            self.fs.copy([self.path(f"{src}/{n}") for n in names], [self.path(f"{dst}/{n}") for n in names])

    def list_dir(self, rel: str) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False)]
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes on a local store (``flock`` on ``STORE/.lesionkit.lock``).

        Object stores have no lock primitive: there it does nothing, and what concurrent
        writers may see is documented in docs/store-format.md ("Concurrent writers").
        """
        if self.local is None:
            yield
            return
        import fcntl

        if not self.is_empty() and not (self.local / "zarr.json").exists():
            # Never leave our lock file in someone else's folder.
            raise StoreFormatError(f"{self.url}: exists and is not a lesionkit store; refusing to write into it")
        self.local.mkdir(parents=True, exist_ok=True)
        with open(self.local / _LOCK_NAME, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_shared(location: str | Path, option: str) -> None:
    """Refuse ``option`` (--workers N, --dask) on a store other processes cannot see (``memory://``)."""
    from fsspec.utils import get_protocol

    if is_url(location) and get_protocol(str(location)) in _PROCESS_LOCAL_PROTOCOLS:
        raise StoreError(f"{location}: a memory:// store exists only in this process, so {option} cannot "
                         "write to it from other processes; run with one worker or use a path or file:// URL")


def write_file_atomic(location: str | Path, data: bytes) -> None:
    """Write a small file whole: a temporary file renamed into place locally, one PUT on object stores.

    Used for the manifest beside a store, which may itself be a URL.
    """
    if not is_url(location):
        path = Path(location)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    files = _Files(location)
    if files.local is not None:
        write_file_atomic(files.root, data)
    else:
        files.fs.pipe_file(files.root, data)  # an object is replaced whole: readers see old or new


@contextlib.contextmanager
def store_lock(location: str | Path) -> Iterator[None]:
    """Hold the store's writer lock (local stores; a no-op on object stores), even before the store exists.

    ``ctprep convert`` creates or opens the store, and consolidates index and manifest,
    under it: concurrent runs writing different cases into one store keep each other's.
    """
    with _Files(location).lock():
        yield


class SliceStore:
    """A lesionkit CT slice store in a local folder or at an fsspec URL (``s3://``, ``memory://`` ...).

    Open with :meth:`open` (reading, or ``mode="a"`` to add labels) or :meth:`create`.
    Reading needs numpy and zarr only, never torch. ``path`` is the location as given: a
    Path for a local folder, the URL string otherwise (``str(store.path)`` reopens it).
    """

    def __init__(self, path: str | Path, group: zarr.Group, files: _Files | None = None):
        self.path: Path | str = path if is_url(path) else Path(path)
        self._files = files if files is not None else _Files(path)
        self._root = group
        self._records: dict[str, CaseRecord] = {}
        self._chunk_files: dict[tuple[str, str], _ChunkFiles | zarr.Array] = {}

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, parameters: Mapping, created_by: str,
               overwrite: bool = False) -> "SliceStore":
        """Create an empty store; with ``overwrite`` an existing one at ``path`` is removed first."""
        from lkbase import __version__

        files = _Files(path)
        if not files.is_empty():
            if not overwrite:
                raise StoreError(f"{path}: already exists (use overwrite to replace it)")
            if not cls.is_store(path):
                raise StoreError(f"{path}: exists and is not a lesionkit store; refusing to delete it")
            for name in files.list_dir(""):
                if name != _LOCK_NAME:  # kept: another process may be waiting on it
                    files.remove(name)
        group = zarr.open_group(files.zarr_store(read_only=False), mode="a")
        group.attrs.update({_STORE_KEY: {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "lesionkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_by": created_by,
            "parameters": dict(parameters),
        }})
        group.create_group("cases")
        return cls(path, group, files)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "SliceStore":
        """Open an existing store (``mode`` "r" or "a"), checking its format and version."""
        files = _Files(path)
        if not files.exists("zarr.json"):
            what = "no zarr.json" if files.exists() else "nothing there"
            raise StoreFormatError(f"{path}: not a lesionkit store ({what})")
        try:
            group = zarr.open_group(files.zarr_store(read_only=mode == "r"), mode="r" if mode == "r" else "r+")
        except Exception as exc:  # zarr raises several types for unreadable metadata
            raise StoreFormatError(f"{path}: cannot open as Zarr v3 group ({exc})") from exc
        info = group.attrs.get(_STORE_KEY)
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{path}: not a lesionkit store (attribute {_STORE_KEY!r}.format "
                                   f"is not {FORMAT_NAME!r})")
        version = info.get("format_version")
        if version != FORMAT_VERSION:
            # A hand-edited version may be any JSON value; only compare real numbers.
            newer = isinstance(version, (int, float)) and not isinstance(version, bool) and version > FORMAT_VERSION
            raise StoreFormatError(
                f"{path}: store format version {version}, this lesionkit reads version "
                f"{FORMAT_VERSION}; {'upgrade lesionkit' if newer else 'reconvert the data'}")
        return cls(path, group, files)

    @staticmethod
    def is_store(path: str | Path) -> bool:
        try:
            meta = json.loads(_Files(path).read_bytes("zarr.json"))
        except (OSError, ValueError, StoreError):
            return False
        return (meta.get("attributes", {}).get(_STORE_KEY, {}) or {}).get("format") == FORMAT_NAME

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether anything is at ``path`` (a store or not; a folder holding only the writer lock is nothing)."""
        return not _Files(path).is_empty()

    def lock(self):
        """Context manager: this store's writer lock (see :func:`store_lock`)."""
        return self._files.lock()

    # ---- store attributes ----------------------------------------------------------------
    @property
    def info(self) -> dict:
        return dict(self._root.attrs[_STORE_KEY])

    @property
    def parameters(self) -> dict:
        return dict(self.info.get("parameters", {}))

    def check_parameters(self, parameters: Mapping) -> None:
        """Raise if ``parameters`` differ from those the store was created with."""
        stored = self.parameters
        wanted = json.loads(json.dumps(dict(parameters)))  # normalise tuples to lists
        differing = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if differing:
            detail = "; ".join(f"{k}: store has {stored.get(k)!r}, asked {wanted.get(k)!r}" for k in differing)
            raise StoreParameterError(
                f"{self.path}: was created with other parameters ({detail}); "
                "use --overwrite to rebuild it or choose another output")

    def manifest(self) -> dict:
        return dict(self.info.get("manifest", {}))

    def set_manifest(self, manifest: Mapping) -> None:
        info = self.info
        info["manifest"] = json.loads(json.dumps(dict(manifest)))
        self._root.attrs.update({_STORE_KEY: info})

    # ---- cases ---------------------------------------------------------------------------
    def _cases_group(self) -> zarr.Group:
        return self._root["cases"]  # type: ignore[return-value]

    def _case_states(self) -> dict[str, bool]:
        states = {}
        for name, group in self._cases_group().groups():
            try:
                marker = group.attrs.get(_CASE_KEY, {})
            except Exception:  # unreadable metadata: an interrupted write
                marker = {}
            states[name] = bool(marker.get("complete"))
        return states

    def case_ids(self) -> list[str]:
        """Ids of the complete cases, sorted."""
        return sorted(name for name, done in self._case_states().items() if done)

    def incomplete_case_ids(self) -> list[str]:
        """Case groups left by an interrupted write; readers ignore them."""
        return sorted(name for name, done in self._case_states().items() if not done)

    def __contains__(self, case_id: str) -> bool:
        try:
            self.record(case_id)
        except CaseNotFoundError:
            return False
        return True

    def _case_group(self, case_id: str) -> zarr.Group:
        try:
            group = self._root[_case_path(case_id)]
            marker = group.attrs.get(_CASE_KEY, {})
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise CaseNotFoundError(f"{self.path}: no case {case_id!r}") from exc
        if not marker.get("complete"):
            raise CaseNotFoundError(f"{self.path}: case {case_id!r} is incomplete (interrupted write)")
        return group  # type: ignore[return-value]

    def record(self, case_id: str) -> CaseRecord:
        if case_id not in self._records:
            marker = self._case_group(case_id).attrs[_CASE_KEY]
            self._records[case_id] = CaseRecord.from_dict(marker["record"])
        return self._records[case_id]

    def records(self) -> list[CaseRecord]:
        return [self.record(c) for c in self.case_ids()]

    def delete_case(self, case_id: str) -> None:
        cases = self._cases_group()
        if case_id in cases:
            del cases[case_id]
            self._drop_stored_index()
        self._records.pop(case_id, None)
        self._chunk_files = {k: v for k, v in self._chunk_files.items() if k[0] != case_id}

    def write_case(self, record: CaseRecord, image: np.ndarray, labels: Mapping[str, np.ndarray],
                   hu: np.ndarray | None = None) -> int:
        """Write one case; it becomes visible only once everything is on disk. Returns bytes written.

        ``image`` and ``labels`` may be numpy arrays or :class:`~ctprep.lookup.LazySlices`.
        """
        _validate_case_id(record.case_id)
        n = record.num_slices
        ny, nx = record.geometry.shape[1:]
        if image.dtype != np.uint8 or image.shape != (n, len(record.windows), ny, nx):
            raise ValueError(f"case {record.case_id}: image must be uint8 (z={n}, channel={len(record.windows)}, "
                             f"y={ny}, x={nx}), found {image.dtype} {image.shape}")
        if set(labels) != set(record.label_names):
            raise ValueError(f"case {record.case_id}: labels {sorted(labels)} differ from the record's "
                             f"{sorted(record.label_names)}")
        # Readers size their buffers from the record, so every array must lie on its grid.
        for name, array in labels.items():
            if array.dtype != np.uint8 or tuple(array.shape) != (n, ny, nx):
                raise ValueError(f"case {record.case_id}: label {name!r} must be uint8 (z={n}, y={ny}, x={nx}), "
                                 f"found {array.dtype} {tuple(array.shape)}")
        if (hu is not None) != record.has_hu:
            raise ValueError(f"case {record.case_id}: record.has_hu is {record.has_hu} but hu "
                             f"{'was' if hu is not None else 'was not'} given")
        if hu is not None and (hu.dtype != np.int16 or hu.shape != (n, ny, nx)):
            raise ValueError(f"case {record.case_id}: hu must be int16 (z={n}, y={ny}, x={nx}), "
                             f"found {hu.dtype} {hu.shape}")
        self.delete_case(record.case_id)
        try:
            self._write_case_arrays(record, image, labels, hu)
        except Exception as exc:
            error = self._write_error(exc, f"case {record.case_id}")
            if error is exc:
                raise  # an incomplete case: invisible to readers, redone by the next run
            # A full disk: the partial case goes at once, giving its space back for the
            # index and manifest at the end of the run.
            self._discard_case(record.case_id)
            raise error from exc
        return self.case_bytes(record.case_id)

    def _write_case_arrays(self, record: CaseRecord, image, labels: Mapping, hu) -> None:
        group = self._cases_group().create_group(record.case_id)
        group.attrs.update({_CASE_KEY: {"complete": False}})
        checksums = {"image": self._write(group, "image", image, ("z", "channel", "y", "x"))}
        if hu is not None:
            checksums["hu"] = self._write(group, "hu", hu, ("z", "y", "x"))
        label_group = group.create_group("labels")
        for name, array in labels.items():
            checksums[f"labels/{name}"] = self._write(label_group, name, array, ("z", "y", "x"))
        # The completion marker is the last write: before it the case does not exist for readers.
        group.attrs.update({_CASE_KEY: {"complete": True, "record": record.to_dict(), "checksums": checksums}})

    def _write(self, group: zarr.Group, name: str, data, dims: tuple[str, ...],
               attributes: Mapping | None = None) -> dict[str, str]:
        """_write_array into this store; its chunk checksums (hashing the stored files where zarr wrote them)."""
        checksums = self._write_array(group, name, data, dims, attributes, files=self._files)
        return checksums if checksums is not None else self._files.checksums(f"{group.path}/{name}")

    def _discard_case(self, case_id: str) -> None:
        """Remove what a failed write_case left (never in the stored index: it never was complete)."""
        self._records.pop(case_id, None)
        self._chunk_files = {k: v for k, v in self._chunk_files.items() if k[0] != case_id}
        try:
            self._files.remove(_case_path(case_id))
        except Exception:  # best effort: an incomplete case is invisible and redone by the next run anyway
            pass

    def _write_error(self, exc: Exception, what: str) -> Exception:
        """A store that cannot take writes (disk full ...) as one clear StoreWriteError; other errors as they are."""
        if isinstance(exc, OSError) and not isinstance(exc, StoreError) and exc.errno in _STORE_FULL_ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            return StoreWriteError(exc.errno, f"{self.path}: {what}: {_STORE_FULL_ERRNOS[exc.errno]} while writing "
                                              f"the store{where}")
        return exc

    def write_label(self, case_id: str, name: str, array: np.ndarray | LazySlices,
                    attributes: Mapping | None = None) -> None:
        """Add or replace ``labels/<name>`` of a complete case (used by ctlabel and ctseg).

        ``array`` is uint8 (masks, trimaps) or float32 (soft masks, probabilities) on the
        case's stored grid. ``attributes`` (JSON) describe how it was made. The label is
        written under a staging name first, so an interrupted write leaves the previous
        label (or none), never a partial one: on a local store it is then renamed into
        place; on an object store (no rename) the case marker points readers at the staged
        copy while it is copied into place (docs/store-format.md, "Object stores").
        """
        _validate_label_name(name)
        record = self.record(case_id)
        expected = (record.num_slices, *record.geometry.shape[1:])
        if tuple(array.shape) != expected or np.dtype(array.dtype) not in LABEL_DTYPES:
            raise ValueError(f"case {case_id}: label {name!r} must be uint8 or float32 with shape {expected}, "
                             f"found {array.dtype} {tuple(array.shape)}")
        self._chunk_files = {k: v for k, v in self._chunk_files.items() if k[:2] != (case_id, f"labels/{name}")}
        try:
            if self._files.local is not None:
                sums = self._replace_label_locally(case_id, name, array, attributes)
                self._update_marker(case_id, checksums={f"labels/{name}": sums})
            else:
                self._replace_label_by_copy(case_id, name, array, attributes)  # records its checksums itself
        except Exception as exc:
            error = self._write_error(exc, f"case {case_id} label {name!r}")
            if error is exc:
                raise
            raise error from exc

    def _replace_label_locally(self, case_id: str, name: str, array, attributes: Mapping | None) -> dict[str, str]:
        labels = self._case_group(case_id)["labels"]
        folder = self._files.local / _case_path(case_id) / "labels"
        staged, retired = f"{_STAGING}{name}.{os.getpid()}", f"{_STAGING}{name}.old.{os.getpid()}"
        leftover = re.compile(rf"{re.escape(_STAGING + name)}\.(old\.)?[0-9]+")
        for old in os.listdir(folder):  # this label's staging folders left by killed writers
            if leftover.fullmatch(old):
                shutil.rmtree(folder / old, ignore_errors=True)
        sums = self._write(labels, staged, array, ("z", "y", "x"), attributes)  # type: ignore[arg-type]
        if (folder / name).exists():
            os.replace(folder / name, folder / retired)
        os.replace(folder / staged, folder / name)
        shutil.rmtree(folder / retired, ignore_errors=True)
        return sums

    def _replace_label_by_copy(self, case_id: str, name: str, array, attributes: Mapping | None) -> dict[str, str]:
        """write_label where there is no atomic rename (object stores); see docs/store-format.md.

        1. write the label as ``labels/_staging.<name>.<token>`` (invisible: readers skip the prefix);
        2. one marker write records it under ``staged``: readers of ``<name>`` now read the staged copy;
        3. replace ``labels/<name>`` by a copy of it (server-side); 4. the marker drops the pointer;
        5. the staged copy is deleted. An interruption before 2 leaves the old label; after 2,
        readers see the new one whole; the next write_label of ``<name>`` cleans up.
        """
        labels_rel = f"{_case_path(case_id)}/labels"
        pointed = self._staged_labels(case_id).get(name)
        leftover = re.compile(rf"{re.escape(_STAGING + name)}\.[0-9a-f]{{12}}")
        for old in self._files.list_dir(labels_rel):  # interrupted earlier writes of this label
            if leftover.fullmatch(old) and old != pointed:
                self._files.remove(f"{labels_rel}/{old}")
        staged = f"{_STAGING}{name}.{uuid.uuid4().hex[:12]}"
        labels = self._case_group(case_id)["labels"]
        sums = self._write(labels, staged, array, ("z", "y", "x"), attributes)  # type: ignore[arg-type]
        self._update_marker(case_id, checksums={f"labels/{name}": sums}, staged={name: staged})
        self._files.remove(f"{labels_rel}/{name}")
        self._files.copy_tree(f"{labels_rel}/{staged}", f"{labels_rel}/{name}")
        self._update_marker(case_id, staged={name: None})
        for old in (staged, pointed):
            if old:
                self._files.remove(f"{labels_rel}/{old}")
        return sums

    def _update_marker(self, case_id: str, *, checksums: Mapping | None = None, staged: Mapping | None = None) -> None:
        """One metadata write of the case marker: merge ``checksums``; set or (None) drop ``staged`` pointers."""
        group = self._case_group(case_id)
        marker = dict(group.attrs[_CASE_KEY])
        if checksums:
            marker["checksums"] = {**marker.get("checksums", {}), **checksums}
        if staged:
            pointers = {**marker.get("staged", {}), **staged}
            pointers = {k: v for k, v in pointers.items() if v}
            if pointers:
                marker["staged"] = pointers
            else:
                marker.pop("staged", None)
        group.attrs.update({_CASE_KEY: marker})

    def _staged_labels(self, case_id: str, group: zarr.Group | None = None) -> dict[str, str]:
        """Labels being replaced on an object store: name -> the staged array readers use meanwhile."""
        group = group if group is not None else self._case_group(case_id)
        return dict(group.attrs[_CASE_KEY].get("staged", {}))

    def recorded_checksums(self, case_id: str) -> dict[str, dict[str, str]]:
        """The chunk checksums recorded when each array of the case was written ({} for old stores)."""
        return dict(self._case_group(case_id).attrs[_CASE_KEY].get("checksums", {}))

    def current_checksums(self, case_id: str) -> dict[str, dict[str, str]]:
        """The chunk checksums of the case's arrays as they are stored now."""
        names = ["image"] + (["hu"] if self.record(case_id).has_hu else [])
        names += [f"labels/{n}" for n in self.label_names(case_id)]
        return {name: self._files.checksums(self._array_path(case_id, name)) for name in names}

    def label_attributes(self, case_id: str, name: str) -> dict:
        """The attributes stored with ``labels/<name>`` (empty for labels written by ctprep)."""
        return dict(self._array(case_id, f"labels/{name}").attrs)

    @staticmethod
    def _write_array(group: zarr.Group, name: str, data: np.ndarray, dims: tuple[str, ...],
                     attributes: Mapping | None = None, files: _Files | None = None) -> dict[str, str] | None:
        """Create the array ``name`` in ``group`` holding ``data``.

        Returns its chunk checksums, or None where zarr wrote the chunks itself (the
        caller then hashes the stored files). ``files``: the store's file access, for
        writing chunks through fsspec on non-local stores.
        """
        array = group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=_slice_chunks(data.shape),
            serializer=BytesCodec(), compressors=ZstdCodec(level=ZSTD_LEVEL), fill_value=0,
            chunk_key_encoding=_CHUNK_KEYS, attributes=dict(attributes or {}),
            dimension_names=dims, overwrite=True)
        store = group.store
        folder = Path(store.root) / array.path if isinstance(store, LocalStore) else None
        if folder is not None and _ChunkFiles.usable(array):
            # Our own threaded chunk writer: several times zarr's speed (see _ChunkFiles).
            return _ChunkFiles(array, folder).write_all(data)
        if folder is None and files is not None and _ChunkFiles.usable(array):
            return _write_chunks_through(files, array, data)
        array[...] = np.asarray(data)
        return array_checksums(folder) if folder is not None else None

    # ---- reading -------------------------------------------------------------------------
    def label_names(self, case_id: str) -> list[str]:
        group = self._case_group(case_id)
        names = {name for name, _ in group["labels"].arrays() if not name.startswith(_STAGING)}  # type: ignore[union-attr]
        return sorted(names | set(self._staged_labels(case_id, group)))

    def _array_name(self, case_id: str, name: str, group: zarr.Group | None = None) -> str:
        """Which array of the case holds ``name`` (``image``, ``labels/x`` ...), relative to the case group."""
        if name.startswith("labels/"):
            staged = self._staged_labels(case_id, group).get(name[len("labels/"):])
            if staged:  # an object-store write_label in progress or interrupted: its complete staged copy
                return f"labels/{staged}"
        return name

    def _array_path(self, case_id: str, name: str) -> str:
        return f"{_case_path(case_id)}/{self._array_name(case_id, name)}"

    def _array(self, case_id: str, name: str) -> zarr.Array:
        group = self._case_group(case_id)
        try:
            return group[self._array_name(case_id, name, group)]  # type: ignore[return-value]
        except KeyError as exc:
            raise CaseNotFoundError(f"{self.path}: case {case_id!r} has no array {name!r}") from exc

    def read_case(self, case_id: str, labels: Sequence[str] | None = None, hu: bool = False) -> CaseData:
        record = self.record(case_id)
        names = self.label_names(case_id) if labels is None else list(labels)
        return CaseData(
            record=record,
            image=self._array(case_id, "image")[...],
            labels={n: self._array(case_id, f"labels/{n}")[...] for n in names},
            hu=self._array(case_id, "hu")[...] if hu else None,
        )

    def read_label(self, case_id: str, name: str) -> np.ndarray:
        """One label of a case, (z, y, x) uint8 or float32 as stored, without reading the image."""
        if name not in self.label_names(case_id):
            raise CaseNotFoundError(f"{self.path}: case {case_id!r} has no label {name!r} "
                                    f"(it has: {', '.join(self.label_names(case_id)) or 'none'})")
        return self._array(case_id, f"labels/{name}")[...]

    def _reader(self, case_id: str, name: str) -> _ChunkFiles | zarr.Array:
        key = (case_id, name)
        if key not in self._chunk_files:
            array = self._array(case_id, name)
            local = self._files.local
            # Local chunk files are read directly (fast path); other filesystems through zarr.
            self._chunk_files[key] = (_ChunkFiles(array, local / array.path) if local is not None
                                      and _ChunkFiles.usable(array) else array)
        return self._chunk_files[key]

    def _read_slice_into(self, case_id: str, name: str, z: int, out: np.ndarray) -> None:
        reader = self._reader(case_id, name)
        if isinstance(reader, _ChunkFiles):
            reader.read_into(z, out)
        else:
            out[...] = reader[z]

    def read_slices(self, keys: Sequence[tuple[str, int]], labels: Sequence[str] = ()) -> SliceBatch:
        """Read stored slices ``(case_id, z)`` with the named labels into one batch.

        All slices must share one in-plane size (convert with ``--size`` for mixed datasets).
        """
        keys = tuple((str(c), int(z)) for c, z in keys)
        if not keys:
            raise ValueError("read_slices needs at least one (case_id, z) key")
        shapes = set()
        for case_id, z in keys:
            record = self.record(case_id)
            if not 0 <= z < record.num_slices:
                raise IndexError(f"case {case_id!r} has {record.num_slices} stored slices, asked z={z}")
            shapes.add((len(record.windows), *record.geometry.shape[1:]))
        if len(shapes) != 1:
            raise ValueError(f"slices of different shapes in one batch: {sorted(shapes)}; convert with --size")
        channels, height, width = shapes.pop()
        image = np.empty((len(keys), channels, height, width), dtype=np.uint8)
        dtypes = {name: self._label_dtype(keys[0][0], name) for name in labels}
        out_labels = {name: np.empty((len(keys), height, width), dtype=dtypes[name]) for name in labels}
        for i, (case_id, z) in enumerate(keys):
            self._read_slice_into(case_id, "image", z, image[i])
            for name, target in out_labels.items():
                self._read_slice_into(case_id, f"labels/{name}", z, target[i])
        return SliceBatch(keys=keys, image=image, labels=out_labels)

    def _label_dtype(self, case_id: str, name: str) -> np.dtype:
        reader = self._reader(case_id, f"labels/{name}")
        return np.dtype(reader.dtype if isinstance(reader, _ChunkFiles) else reader.dtype)

    # ---- slice index ---------------------------------------------------------------------
    def rebuild_index(self) -> SliceIndex:
        """Recompute the slice index from the complete cases and store it."""
        index = SliceIndex.from_records(self.records())
        group = self._root.require_group("index")
        rows = index.rows
        case_ids = sorted(set(rows["case"].tolist()))
        codes = np.searchsorted(np.asarray(case_ids, dtype=INDEX_DTYPE["case"]), rows["case"]).astype(np.int32)
        columns = {
            "case": codes,
            "z": rows["z"],
            "z_mm": rows["z_mm"],
            "lesion_pixels": rows["lesion_pixels"],
            "split": np.asarray([SPLITS.index(s) for s in rows["split"]], dtype=np.uint8),
        }
        for name, values in columns.items():
            array = group.create_array(name, shape=values.shape, dtype=values.dtype,
                                       chunks=(max(len(values), 1),), compressors=ZstdCodec(level=3),
                                       fill_value=0, overwrite=True)
            if len(values):
                array[...] = values
        group.attrs.update({"case_ids": case_ids, "splits": list(SPLITS), "num_slices": int(len(rows))})
        return index

    def _drop_stored_index(self) -> None:
        # A case changed: the stored index may now be wrong about it. Readers fall back to
        # the case records until the next rebuild_index (every conversion ends with one).
        try:
            if "index" in self._root:
                del self._root["index"]
        except (KeyError, FileNotFoundError):  # another writer removed it first
            pass

    def index(self, *, split: str | None = None, lesion_only: bool = False) -> SliceIndex:
        """The slice index, filtered. Falls back to the case records if the stored index is stale."""
        index = self.stored_index()
        if index is None or set(index.rows["case"].tolist()) != set(self.case_ids()):
            index = SliceIndex.from_records(self.records())
        return index.filter(split=split, lesion_only=lesion_only)

    def stored_index(self) -> SliceIndex | None:
        """The index as last consolidated (None if absent); ``index()`` checks it against the cases."""
        try:
            return self._read_stored_index()
        except (KeyError, FileNotFoundError, ValueError, IndexError):
            # Torn by a concurrent writer dropping it (docs/store-format.md): as if absent.
            return None

    def _read_stored_index(self) -> SliceIndex | None:
        if "index" not in self._root:
            return None
        group = self._root["index"]
        case_ids = list(group.attrs.get("case_ids", []))
        n = int(group.attrs.get("num_slices", 0))
        rows = np.zeros(n, dtype=INDEX_DTYPE)
        if n:
            rows["case"] = np.asarray(case_ids, dtype=INDEX_DTYPE["case"])[group["case"][...]]
            rows["z"] = group["z"][...]
            rows["z_mm"] = group["z_mm"][...]
            rows["lesion_pixels"] = group["lesion_pixels"][...]
            rows["split"] = np.asarray(SPLITS)[group["split"][...]]
        return SliceIndex(rows)

    # ---- sizes ---------------------------------------------------------------------------
    def case_bytes(self, case_id: str) -> int:
        return sum(self._files.files(_case_path(case_id)).values())

    def bytes_on_disk(self) -> int:
        return sum(self._files.files().values())

    def uncompressed_bytes(self) -> int:
        total = 0
        for case_id in self.case_ids():
            group = self._case_group(case_id)
            for _, array in group.arrays():
                total += array.nbytes
            for _, array in group["labels"].arrays():  # type: ignore[union-attr]
                total += array.nbytes
        return total

