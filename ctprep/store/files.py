"""Where a store lives: the file layer under the store, local folder or fsspec URL, and its writer lock.

Convention: a location is a path or an fsspec URL (:func:`is_url`); a local folder (a
plain path or ``file://``) keeps the fast paths (our own chunk files, ``os.replace``,
``flock``, lkbase.atomic writes), anything else goes through the URL's filesystem. Paths
inside a store are ``/``-separated and relative to its root. Errors that mean the store
cannot take writes at all (a full disk; on an object store a refused connection, wrong
credentials, a missing bucket) become one :class:`StoreWriteError` naming the store.

Object stores are configured the way their clients are: for s3://, the AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible
server, or ``~/.aws``), which every process (local workers, dask workers) reads alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from zarr.storage import LocalStore

from ctprep.errors import StoreError, StoreFormatError, StoreUnreachableError, StoreWriteError
from ctprep.store.chunks import array_checksums, chunk_checksum
from lkbase.atomic import write_bytes_atomic
from lkbase.errors import is_storage_failure, storage_reason

# Errors that mean "this store cannot take writes", never "this case's input is bad".
_STORE_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}
_LOCK_NAME = ".lesionkit.lock"  # inside a local store: flock'ed around writes of shared metadata
_PROCESS_LOCAL_PROTOCOLS = {"memory"}  # filesystems that exist only inside one process
# Other processes (workers, other runs) add cases: a cached listing would hide them (s3fs caches
# every listing for the life of the filesystem object, e.g. an empty cases/ from before the run).
_NO_LISTING_CACHE = {"use_listings_cache": False}
# s3fs (max_concurrency > 1, its default) sends a HEAD before every whole-object GET to decide
# whether to split it into ranged GETs; a store's objects (one slice each) are far below its
# block size, so the HEAD only doubles the requests (benchmarks/bench_read.py --s3).
_PROTOCOL_OPTIONS = {"s3": {"max_concurrency": 1}, "s3a": {"max_concurrency": 1}}


def storage_options(url: str) -> dict:
    """The fsspec options every filesystem a store opens at ``url`` is made with."""
    from fsspec.utils import get_protocol

    return {**_NO_LISTING_CACHE, **_PROTOCOL_OPTIONS.get(get_protocol(url), {})}
_REACHED: set[tuple[str, str]] = set()  # (protocol, bucket) this process has already reached


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
                self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options(self.url))
            except ValueError as exc:  # fsspec: "Protocol not known: foo"
                raise StoreError(f"{self.url}: unknown storage protocol ({exc}); use a path or a URL such as "
                                 "file://, memory://, s3:// (pip install s3fs), gs:// (pip install gcsfs)") from None
            except ImportError as exc:  # e.g. s3:// without s3fs: fsspec says what to install
                raise StoreError(f"{self.url}: {exc}") from None
            self.root = self.root.rstrip("/")
            protocol = self.fs.protocol
            self.protocol = protocol if isinstance(protocol, str) else protocol[0]
        self.local: Path | None = Path(self.root) if isinstance(self.fs, LocalFileSystem) else None
        if self.local is None and not self.process_local:
            self._check_reachable()

    def _check_reachable(self) -> None:
        """The bucket answers (once per process): a wrong endpoint, wrong credentials or a missing
        bucket is one StoreUnreachableError naming the URL, before any write."""
        bucket = self.root.split("/", 1)[0]
        if (self.protocol, bucket) in _REACHED:
            return
        try:
            self.fs.ls(bucket, detail=False, refresh=True)
        except Exception as exc:
            if not (is_storage_failure(exc) or isinstance(exc, OSError)):
                raise
            if isinstance(exc, FileNotFoundError):
                raise StoreUnreachableError(errno.ENOENT, f"{self.url}: bucket {bucket!r} not found "
                                                          f"({storage_reason(exc)})") from None
            raise unreachable(exc, self.url, "cannot reach the store") from None
        _REACHED.add((self.protocol, bucket))

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

        return FsspecStore.from_url(self.url, read_only=read_only, storage_options=storage_options(self.url))

    def exists(self, rel: str = "") -> bool:
        try:
            return self.fs.exists(self.path(rel))
        except Exception as exc:  # the first question every open asks: an object store gone is one clear error
            if not is_storage_failure(exc):
                raise
            raise unreachable(exc, self.url, "cannot reach the store") from None

    def is_empty(self) -> bool:
        """No store content (a folder holding only our lock file counts as empty)."""
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return True
        return not [n for n in names if not _is_lock_name(n)]

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def put(self, rel: str, data: bytes) -> None:
        """Write one file (object) below the root whole."""
        self.fs.pipe_file(self.path(rel), data)

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
    def lock(self, name: str = _LOCK_NAME) -> Iterator[None]:
        """Exclusive across processes on a local store (``flock`` on ``STORE/<name>``, the writer lock by default).

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
        with open(self.local / name, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _is_lock_name(name: str) -> bool:
    """The writer lock or a case's lock (layout.case_lock_name): not store content."""
    return name == _LOCK_NAME or (name.startswith(".lesionkit.case.") and name.endswith(".lock"))


def check_shared(location: str | Path, option: str) -> None:
    """Refuse ``option`` (--workers N, --dask) on a store other processes cannot see (``memory://``)."""
    from fsspec.utils import get_protocol

    if is_url(location) and get_protocol(str(location)) in _PROCESS_LOCAL_PROTOCOLS:
        raise StoreError(f"{location}: a memory:// store exists only in this process, so {option} cannot "
                         "write to it from other processes; run with one worker or use a path or file:// URL")


def write_file_atomic(location: str | Path, data: bytes) -> None:
    """Write a small file whole: lkbase.atomic locally, one PUT on object stores.

    Used for the manifest beside a store, which may itself be a URL.
    """
    if not is_url(location):
        write_bytes_atomic(location, data)
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


def unreachable(exc: BaseException, where: str | Path, what: str) -> StoreUnreachableError:
    """A storage failure as one StoreUnreachableError: ``<store>: <what>: <reason>``."""
    code = errno.EACCES if isinstance(exc, PermissionError) else getattr(exc, "errno", None) or errno.EIO
    return StoreUnreachableError(code, f"{where}: {what}: {storage_reason(exc)}")


def write_error(exc: Exception, where: str | Path, what: str) -> Exception:
    """A store that cannot take writes (disk full, an object store refusing or gone) as one clear
    StoreWriteError; other errors as they are."""
    if isinstance(exc, StoreWriteError):
        return exc
    if is_url(where) and is_storage_failure(exc):
        return unreachable(exc, where, f"{what}: the object store refused the write")
    if isinstance(exc, OSError) and not isinstance(exc, StoreError) and exc.errno in _STORE_FULL_ERRNOS:
        detail = f" ({exc.filename})" if exc.filename else ""
        return StoreWriteError(exc.errno, f"{where}: {what}: {_STORE_FULL_ERRNOS[exc.errno]} while writing "
                                          f"the store{detail}")
    return exc
