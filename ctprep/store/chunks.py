"""Chunk files: the fast path that reads and writes one-slice chunks ourselves, and their checksums.

Convention: every array is chunked one slice per chunk, bytes + zstd (level ZSTD_LEVEL),
chunk keys ``c.<z>.0.0.0`` (layout._CHUNK_KEYS); a slice equal to the fill value has no
file. What this module writes is byte for byte what zarr writes. A chunk's checksum is
the first 16 hex digits of the sha256 of its file; a case's digest is one sha256 over them.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore

from ctprep.errors import StoreError
from ctprep.lookup import LazySlices
from ctprep.store.layout import _CHUNK_KEYS, ZSTD_LEVEL, slice_chunks
from lkbase.errors import ParameterError

# Threads encoding and writing chunks; more than the cores buys nothing (zstd is CPU-bound).
_WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))

# Chunk uploads in flight on non-local stores (I/O-bound: more than the cores).
_REMOTE_THREADS = 8

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

    def __init__(self, array: zarr.Array, folder: Path, stored: frozenset[str] | None = None):
        self.folder = folder
        # Chunk keys the case record lists for this array (None: not recorded, old stores). Reads
        # through an object store request only these: a slice equal to the fill value has no
        # object, and asking for it costs a round trip that answers 404.
        self.stored = stored
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
            payload = None
        self.decode_into(z, payload, out)

    def decode_into(self, z: int, payload: bytes | None, out: np.ndarray) -> None:
        """Slice ``z`` from its chunk file's bytes (None: no file, the fill value)."""
        if payload is None:
            out[...] = self.fill_value
            return
        try:
            self._zstd.decode(payload, out=out.reshape(-1).view(np.uint8))
        except (RuntimeError, ValueError) as exc:  # numcodecs reports corrupt frames as RuntimeError
            raise StoreError(f"{self._path(z)}: corrupt chunk, slice {z} ({exc}); `ctprep verify` the store") from exc
        if self.dtype.byteorder == ">" or (self.dtype.byteorder == "=" and np.little_endian is False):
            out.byteswap(inplace=True)  # pragma: no cover - we only write little-endian

    def has_chunk(self, z: int) -> bool:
        """Whether slice ``z`` may have a chunk (False: recorded as the fill value, no object)."""
        return self.stored is None or self._encoding.encode_chunk_key((z, *self._zeros)) in self.stored

    def chunk_path(self, z: int) -> str:
        """Where slice ``z``'s chunk is, ``/``-joined (an fsspec path when ``folder`` is one)."""
        return f"{self.folder}/{self._encoding.encode_chunk_key((z, *self._zeros))}"

    def write_slices(self, start: int, data: np.ndarray | LazySlices, pool: Executor) -> dict[str, str]:
        """Write slices ``start .. start + len(data)`` of the array, one chunk file each, in ``pool``'s threads.

        Returns the checksum of every chunk file written, by chunk key (see chunk_checksum).
        Slices are pulled with ``data[i]`` from the threads, so a LazySlices slab is
        computed in parallel, slice by slice, and never held whole.
        """
        _check_slab(self.array, start, data)
        zstd_codec = self.array.metadata.codecs[1]
        zstd = Zstd(level=zstd_codec.level, checksum=zstd_codec.checksum)
        little = self.dtype.newbyteorder("<")
        fill = self.dtype.type(self.fill_value)
        os.makedirs(self.folder, exist_ok=True)
        flat = os.path.dirname(self._path(0)) == os.fspath(self.folder)  # our "." chunk keys

        def write(i: int) -> tuple[str, str] | None:
            chunk = data[i]
            empty = not chunk.any() if fill == 0 else bool(np.all(chunk == fill))
            if empty:
                return None  # as zarr (write_empty_chunks=False): a missing chunk reads as the fill value
            payload = zstd.encode(np.ascontiguousarray(chunk, dtype=little))
            path = self._path(start + i)
            if not flat:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            # Written in place, not to a temporary name renamed into place as zarr does: a
            # case is invisible until write_case marks it complete, so a torn chunk is never
            # read, and on slow disks the rename was a third of the time of a chunk.
            with open(path, "wb") as handle:
                handle.write(payload)
            return os.path.relpath(path, self.folder), chunk_checksum(payload)

        return _gathered(pool, write, data.shape[0])


def _check_slab(array: zarr.Array, start: int, data) -> None:
    if tuple(data.shape[1:]) != tuple(array.shape[1:]) or not 0 <= start <= start + data.shape[0] <= array.shape[0]:
        raise ParameterError(f"slices {start}..{start + data.shape[0]} of shape {tuple(data.shape[1:])} do not fit "
                             f"an array of shape {tuple(array.shape)}")


def _gathered(pool: Executor, write: Callable[[int], tuple[str, str] | None], count: int) -> dict[str, str]:
    """``write(i)`` for every i < count in ``pool``; the (key, checksum) pairs written, sorted.

    A failure (disk full) is raised only once no write of this call is in flight, so the
    caller's clean-up is not undone by a straggler; slices not started are dropped.
    """
    futures = [pool.submit(write, i) for i in range(count)]
    try:
        written = [item for item in (f.result() for f in futures) if item]
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise
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


def _write_chunks_through(put: Callable[[str, bytes], None], array: zarr.Array, start: int,
                          data: np.ndarray | LazySlices, pool: Executor) -> dict[str, str]:
    """Write slices ``start ..`` of ``data`` as one chunk object each with ``put(path, bytes)``: the files
    _ChunkFiles writes locally.

    Ours rather than zarr's ``array[...] = data`` for three reasons: a LazySlices
    volume is computed slice by slice in the threads, never held whole; the checksums
    come from the bytes sent, with no second download; and a failure (disk full) returns
    only once no write is in flight, so the caller's clean-up is not undone by a
    straggler (zarr leaves its other puts running when one fails).
    """
    _check_slab(array, start, data)
    codec = array.metadata.codecs[1]
    zstd = Zstd(level=codec.level, checksum=codec.checksum)
    little, fill = array.dtype.newbyteorder("<"), array.dtype.type(array.metadata.fill_value)
    encoding, zeros = array.metadata.chunk_key_encoding, (0,) * (array.ndim - 1)

    def write(i: int) -> tuple[str, str] | None:
        chunk = np.asarray(data[i])
        if not chunk.any() if fill == 0 else bool(np.all(chunk == fill)):
            return None  # as zarr (write_empty_chunks=False): a missing chunk reads as the fill value
        payload = zstd.encode(np.ascontiguousarray(chunk, dtype=little))
        key = encoding.encode_chunk_key((start + i, *zeros))
        put(f"{array.path}/{key}", payload)
        return key, chunk_checksum(payload)

    return _gathered(pool, write, data.shape[0])


def checksums_digest(checksums: Mapping[str, Mapping[str, str]]) -> str:
    """One sha256 over a case's chunk checksums: what a manifest records for the case."""
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()



def create_slice_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype, dims: tuple[str, ...],
                       attributes: Mapping | None = None) -> zarr.Array:
    """Create the (empty) array ``name`` in ``group`` in the store's one layout: a slice per chunk, bytes + zstd."""
    return group.create_array(
        name, shape=tuple(shape), dtype=np.dtype(dtype), chunks=slice_chunks(tuple(shape)),
        serializer=BytesCodec(), compressors=ZstdCodec(level=ZSTD_LEVEL), fill_value=0,
        chunk_key_encoding=_CHUNK_KEYS, attributes=dict(attributes or {}),
        dimension_names=dims, overwrite=True)


def write_slab(array: zarr.Array, start: int, data: np.ndarray | LazySlices,
               put: Callable[[str, bytes], None] | None = None, pool: Executor | None = None) -> dict[str, str] | None:
    """Write slices ``start .. start + len(data)`` of ``array`` (made by create_slice_array).

    Returns the chunk checksums written, or None where zarr wrote the chunks itself (the
    caller then hashes the stored files). ``put(path, bytes)``: writes one object of a
    non-local store (path relative to its root), for writing chunks through fsspec.
    ``pool``: the threads that encode and write the chunks (one made for the call if None).
    """
    store = array.store
    folder = Path(store.root) / array.path if isinstance(store, LocalStore) else None
    usable = _ChunkFiles.usable(array)
    if not usable or (folder is None and put is None):
        _check_slab(array, start, data)
        array[start:start + data.shape[0]] = np.asarray(data)
        return None
    if pool is None:
        threads = _WRITE_THREADS if folder is not None else _REMOTE_THREADS
        with ThreadPoolExecutor(max_workers=threads) as own:
            return write_slab(array, start, data, put, own)
    if folder is not None:
        # Our own threaded chunk writer: several times zarr's speed (see _ChunkFiles).
        return _ChunkFiles(array, folder).write_slices(start, data, pool)
    return _write_chunks_through(put, array, start, data, pool)


def write_array(group: zarr.Group, name: str, data: np.ndarray | LazySlices, dims: tuple[str, ...],
                attributes: Mapping | None = None,
                put: Callable[[str, bytes], None] | None = None) -> dict[str, str] | None:
    """Create the array ``name`` in ``group`` holding ``data``: create_slice_array, then one write_slab."""
    array = create_slice_array(group, name, data.shape, data.dtype, dims, attributes)
    return write_slab(array, 0, data, put)


def read_slices_into(jobs: list[tuple[object, int, np.ndarray]], fs=None) -> None:
    """Fill each ``out`` of ``(reader, z, out)`` with slice ``z``: a _ChunkFiles reader from its chunk.

    With ``fs`` (an object store) every chunk of the batch is requested at once (fsspec
    ``cat`` of many paths: concurrent on async filesystems such as s3fs), so the batch
    waits for about one round trip instead of one per chunk; only chunks the case record
    lists are requested (``reader.stored``), and one it lists but the store lacks is a
    StoreError. Other readers (zarr arrays in a layout _ChunkFiles does not handle) read
    ``reader[z]``.
    """
    fetched: dict[str, object] = {}
    if fs is not None:
        paths = {r.chunk_path(z) for r, z, _ in jobs if isinstance(r, _ChunkFiles) and r.has_chunk(z)}
        fetched = fs.cat(sorted(paths), on_error="return") if paths else {}
    for reader, z, out in jobs:
        if not isinstance(reader, _ChunkFiles):
            out[...] = reader[z]
        elif fs is None:
            reader.read_into(z, out)
        else:
            reader.decode_into(z, _fetched_payload(reader, z, fetched), out)


def _fetched_payload(reader: _ChunkFiles, z: int, fetched: Mapping[str, object]) -> bytes | None:
    """Slice ``z``'s chunk bytes from a batch fetch (None: the fill value); a recorded chunk missing is an error."""
    if not reader.has_chunk(z):
        return None
    payload = fetched.get(reader.chunk_path(z))
    if isinstance(payload, FileNotFoundError):
        if reader.stored is None:
            return None
        raise StoreError(f"{reader.chunk_path(z)}: missing chunk, slice {z} (the case record lists it); "
                         "`ctprep verify` the store")
    if isinstance(payload, BaseException):
        raise payload
    return payload  # type: ignore[return-value]
