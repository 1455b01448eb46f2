"""The slice store class: opening, writing cases and labels, reading cases, slices and the index.

Convention: a case is visible only once its completion marker (the case group's
``lesionkit_case`` attribute, written last) says ``complete``; readers ignore other
case groups. Labels are replaced through a staging name (layout.staging_name): renamed
into place on a local store, copied into place behind a marker pointer on an object
store. Every array is written through :meth:`SliceStore._write_array`
(chunks.write_array: labels) or, a slab of slices at a time, :meth:`SliceStore._write_slab`
(chunks.write_slab: cases, streamed by write_case_slabs). The format: docs/store-format.md and :mod:`ctprep.store`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import zarr

from ctprep.case import CaseRecord
from ctprep.errors import CaseInputError, CaseNotFoundError, StoreError, StoreFormatError, StoreParameterError
from ctprep.lookup import LazySlices
from ctprep.store.arrays import CaseData, Slab, check_case_arrays, check_label_array
from ctprep.store.chunks import _ChunkFiles, write_array, write_slab
from ctprep.store.files import _LOCK_NAME, _Files, is_url, write_error
from ctprep.store.reading import SliceReading
from ctprep.store.integrity import case_problem, check_array, check_record
from ctprep.store.index import SliceIndex, read_index, write_index
from ctprep.store.writing import write_case_arrays
from ctprep.store.layout import (_CASE_KEY, _STORE_KEY, DATASET_KIND, FORMAT_NAME, FORMAT_VERSION, case_lock_name,
                                 case_path, is_staged, local_leftover, remote_leftover, staging_name, store_kind,
                                 validate_case_id, validate_label_name, wrong_kind)
from lkbase.choices import unknown
from lkbase.plain import differences
from lkbase.errors import ParameterError

# zarr writes zarr.json through a temporary ``zarr.<hex>.partial`` and warns when a concurrent
# listing (another worker's case, a second run) meets one: expected here, not the user's concern.
warnings.filterwarnings("ignore", message=r"Object at .*\.partial is not recognized as a component",
                        module=r"zarr\.")


class SliceStore(SliceReading):
    """A lesionkit CT slice store in a local folder or at an fsspec URL (``s3://``, ``memory://`` ...).

    Open with :meth:`open` (reading, or ``mode="a"`` to add labels) or :meth:`create`.
    Reading needs numpy and zarr only, never torch. ``path`` is the location as given: a
    Path for a local folder, the URL string otherwise (``str(store.path)`` reopens it).
    """

    # The calls through which every array is written (tests wrap them to interrupt a write): a
    # label's whole array, and a case's arrays one slab at a time.
    _write_array = staticmethod(write_array)
    KIND = DATASET_KIND  # the root attribute's ``kind`` this class opens (layout.store_kind)
    _write_slab = staticmethod(write_slab)

    def __init__(self, path: str | Path, group: zarr.Group, files: _Files | None = None):
        self.path: Path | str = path if is_url(path) else Path(path)
        self._files = files if files is not None else _Files(path)
        self._root = group
        self._records: dict[str, CaseRecord] = {}
        self._chunk_files: dict[tuple[str, str], _ChunkFiles | zarr.Array] = {}

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, parameters: Mapping, created_by: str,
               overwrite: bool = False, info: Mapping | None = None) -> "SliceStore":
        """Create an empty store (``info``: more root fields, same write); ``overwrite`` removes one at ``path``."""
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
            "parameters": dict(parameters), **dict(info or {}),
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
        if store_kind(info) != cls.KIND:
            raise StoreFormatError(wrong_kind(path, info, cls.KIND))
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

    def case_lock(self, case_id: str):
        """Context manager: the one writer of ``case_id`` (flock on a local store; a no-op on object stores).

        Two runs converting the same case into one store take turns; the second finds the
        case complete (:meth:`case_problem` None) and leaves it.
        """
        validate_case_id(case_id)
        return self._files.lock(case_lock_name(case_id))

    def case_problem(self, case_id: str) -> str | None:
        """What a complete case lacks on disk (an array, chunk files its record lists), or None when whole.

        The resume check of ``ctprep convert``: a case is skipped as done only when this is None.
        """
        try:
            record, recorded = self.record(case_id), self.recorded_checksums(case_id)
        except (CaseNotFoundError, StoreFormatError) as exc:
            return str(exc)
        return case_problem(self._files, str(self.path), record, recorded,
                            lambda name: self._array_path(case_id, name))

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
        if stored != wanted:
            raise StoreParameterError(
                f"{self.path}: was created with other parameters ({differences(stored, wanted)}); "
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
            states[name] = isinstance(marker, dict) and bool(marker.get("complete"))
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
            group = self._root[case_path(case_id)]
            marker = group.attrs.get(_CASE_KEY, {})
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise CaseNotFoundError(f"{self.path}: {unknown('case', case_id, self.case_ids())}") from exc
        if not isinstance(marker, dict) or not marker.get("complete"):
            raise CaseNotFoundError(f"{self.path}: case {case_id!r} is incomplete (interrupted write)")
        return group  # type: ignore[return-value]

    def record(self, case_id: str) -> CaseRecord:
        if case_id not in self._records:
            marker = self._case_group(case_id).attrs[_CASE_KEY]
            self._records[case_id] = check_record(str(self.path), case_id, marker)
        return self._records[case_id]

    def check_case(self, case_id: str) -> None:
        """Open the case's record and every array, raising StoreFormatError for metadata against the format."""
        names = ["image"] + (["hu"] if self.record(case_id).has_hu else [])
        for name in names + [f"labels/{n}" for n in self.label_names(case_id)]:
            self._array(case_id, name)

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
        """Write one case from whole arrays (numpy or :class:`~ctprep.lookup.LazySlices`); see write_case_slabs."""
        check_case_arrays(record, image, labels, hu)
        return self.write_case_slabs(record, [Slab(start=0, image=image, labels=labels, hu=hu)])

    def write_case_slabs(self, record: CaseRecord, slabs: Iterable[Slab],
                         final: Callable[[], CaseRecord] | None = None) -> int:
        """Write one case from ``slabs`` that together hold each stored slice once, in any order, pulling
        the next slab only once the previous one is written (peak memory: about two slabs). Returns bytes written.

        The case becomes visible only once everything is on disk. ``record`` gives the arrays'
        shapes; ``final()``, called once every slab is written, gives the record stored with
        them (e.g. holding lesion counts found while writing), on the same grid. A slab that
        cannot be made (CaseInputError: bad input found part way) leaves no trace of the case.
        """
        try:
            self.delete_case(record.case_id)
            self._write_case_arrays(record, slabs, final)
        except Exception as exc:
            error = self._write_error(exc, f"case {record.case_id}")
            if error is exc:
                if isinstance(exc, CaseInputError):
                    self._discard_case(record.case_id)
                raise  # otherwise an incomplete case: invisible to readers, redone by the next run
            # A full disk: the partial case goes at once, giving its space back for the
            # index and manifest at the end of the run.
            self._discard_case(record.case_id)
            raise error from exc
        return self.case_bytes(record.case_id)

    def _write_case_arrays(self, record: CaseRecord, slabs: Iterable[Slab],
                           final: Callable[[], CaseRecord] | None) -> None:
        group = self._cases_group().create_group(record.case_id)
        write_case_arrays(group, self._files, str(self.path), record, slabs, final, self._write_slab)

    def _write(self, group: zarr.Group, name: str, data, dims: tuple[str, ...],
               attributes: Mapping | None = None) -> dict[str, str]:
        """_write_array into this store; its chunk checksums (hashing the stored files where zarr wrote them)."""
        checksums = self._write_array(group, name, data, dims, attributes, put=self._files.put)
        return checksums if checksums is not None else self._files.checksums(f"{group.path}/{name}")

    def _discard_case(self, case_id: str) -> None:
        """Remove what a failed write_case left (never in the stored index: it never was complete)."""
        self._records.pop(case_id, None)
        self._chunk_files = {k: v for k, v in self._chunk_files.items() if k[0] != case_id}
        try:
            self._files.remove(case_path(case_id))
        except Exception:  # best effort: an incomplete case is invisible and redone by the next run anyway
            pass

    def _write_error(self, exc: Exception, what: str) -> Exception:
        return write_error(exc, self.path, what)

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
        validate_label_name(name)
        check_label_array(case_id, name, array, self.record(case_id))
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
        folder = self._files.local / case_path(case_id) / "labels"
        staged, retired = staging_name(name, str(os.getpid())), staging_name(name, f"old.{os.getpid()}")
        leftover = local_leftover(name)
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
        labels_rel = f"{case_path(case_id)}/labels"
        pointed = self._staged_labels(case_id).get(name)
        leftover = remote_leftover(name)
        for old in self._files.list_dir(labels_rel):  # interrupted earlier writes of this label
            if leftover.fullmatch(old) and old != pointed:
                self._files.remove(f"{labels_rel}/{old}")
        staged = staging_name(name, uuid.uuid4().hex[:12])
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

    # ---- reading -------------------------------------------------------------------------
    def label_names(self, case_id: str) -> list[str]:
        group = self._case_group(case_id)
        names = {name for name, _ in group["labels"].arrays() if not is_staged(name)}  # type: ignore[union-attr]
        return sorted(names | set(self._staged_labels(case_id, group)))

    def _array_name(self, case_id: str, name: str, group: zarr.Group | None = None) -> str:
        """Which array of the case holds ``name`` (``image``, ``labels/x`` ...), relative to the case group."""
        if name.startswith("labels/"):
            staged = self._staged_labels(case_id, group).get(name[len("labels/"):])
            if staged:  # an object-store write_label in progress or interrupted: its complete staged copy
                return f"labels/{staged}"
        return name

    def _array_path(self, case_id: str, name: str) -> str:
        return f"{case_path(case_id)}/{self._array_name(case_id, name)}"

    def _array(self, case_id: str, name: str) -> zarr.Array:
        group = self._case_group(case_id)
        try:
            array = group[self._array_name(case_id, name, group)]
        except KeyError as exc:
            raise CaseNotFoundError(f"{self.path}: case {case_id!r} has no array {name!r}") from exc
        except Exception as exc:  # zarr raises several types for unreadable metadata
            raise StoreFormatError(f"{self.path}: case {case_id}: array {name}: unreadable metadata "
                                   f"({' '.join(str(exc).split())})") from exc
        check_array(str(self.path), case_id, name, array, self.record(case_id))
        return array  # type: ignore[return-value]

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

    # ---- slice index ---------------------------------------------------------------------
    def rebuild_index(self) -> SliceIndex:
        """Recompute the slice index from the complete cases and store it."""
        index = SliceIndex.from_records(self.records())
        write_index(self._root, index)
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
            return read_index(self._root)
        except (KeyError, FileNotFoundError, ValueError, IndexError):
            # Torn by a concurrent writer dropping it (docs/store-format.md): as if absent.
            return None

    # ---- sizes ---------------------------------------------------------------------------
    def case_bytes(self, case_id: str) -> int:
        return sum(self._files.files(case_path(case_id)).values())

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

