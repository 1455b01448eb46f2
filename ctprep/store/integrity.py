"""Is a stored case sound: the one place that checks its record and arrays against the format, and
that it is whole on disk (behind resuming a conversion and marking a case complete).

Convention: a case record (the case group's marker) and every array's metadata are checked
when the store opens them (:func:`check_record`, :func:`check_array`): types and sizes of the
record's fields, array shapes against the record, dtypes, the one-slice chunk grid and the
``c.<z>.0.0.0`` chunk keys. A tampered or damaged one is refused with one
:class:`StoreFormatError` line naming store, case and field, never read as something else.

Whole on disk: a case is whole when every array its record implies (``image``, ``hu`` with
``has_hu``, ``labels/<name>`` for each of its labels) and every array named in its recorded
checksums has its ``zarr.json`` and every chunk file the checksums list (a slice equal to the
fill value has no file, so the recorded checksums, not the slice count, say which files exist).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ctprep.case import CaseRecord
from ctprep.errors import StoreFormatError
from ctprep.store.layout import _CHUNK_KEYS, LABEL_DTYPES, slice_chunks

# The largest side of a stored grid (voxels): far above any CT (2048), far below what exhausts memory.
MAX_SIDE = 16384


def check_record(where: str, case_id: str, marker: Any) -> CaseRecord:
    """The CaseRecord of a case's marker, or StoreFormatError naming the field that is not as the format says."""
    def bad(field: str, what: str) -> StoreFormatError:
        what = f"record field {field} {what}" if field else f"record {what}"
        return StoreFormatError(f"{where}: case {case_id}: {what}; the store's metadata "
                                "was damaged or edited: reconvert the case")

    if not isinstance(marker, dict) or not isinstance(marker.get("record"), dict):
        raise bad("record", "is not an object")
    data = marker["record"]
    for field in ("geometry", "canonical_geometry"):
        shape = data.get(field, {}).get("shape") if isinstance(data.get(field), dict) else None
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_size(v) for v in shape)):
            raise bad(f"{field}.shape", f"must be 3 whole numbers 1..{MAX_SIDE}, found {shape!r}")
    if data.get("case_id") != case_id:
        raise bad("case_id", f"must be {case_id!r}, found {data.get('case_id')!r}")
    try:
        record = CaseRecord.from_dict(data)
    except KeyError as exc:
        raise bad(str(exc.args[0]), "is missing") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise bad("", f"is malformed ({' '.join(str(exc).split())})") from None
    if not record.windows:
        raise bad("windows", "must list at least one window")
    return record


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIDE


def check_array(where: str, case_id: str, name: str, array, record: CaseRecord) -> None:
    """Refuse an array whose metadata disagree with the format or the case record (``name``: image, hu, labels/x)."""
    nz, (ny, nx) = record.num_slices, record.geometry.shape[1:]
    shape = (nz, len(record.windows), ny, nx) if name == "image" else (nz, ny, nx)
    dtypes = {"image": (np.dtype(np.uint8),), "hu": (np.dtype(np.int16),)}.get(name, LABEL_DTYPES)
    meta = array.metadata
    encoding = meta.chunk_key_encoding
    found = {"shape": tuple(array.shape), "dtype": np.dtype(str(array.dtype)),
             "chunk shape": tuple(getattr(meta.chunk_grid, "chunk_shape", ())),
             "chunk key encoding": (getattr(encoding, "name", None), getattr(encoding, "separator", None))}
    wanted = {"shape": (shape,), "dtype": dtypes, "chunk shape": (slice_chunks(shape),),
              "chunk key encoding": ((_CHUNK_KEYS["name"], _CHUNK_KEYS["separator"]),)}
    for field, allowed in wanted.items():
        if found[field] not in allowed:
            shown = " or ".join(str(a) for a in allowed)
            raise StoreFormatError(f"{where}: case {case_id}: array {name} {field} must be {shown} "
                                   f"(from the case record and the format), found {found[field]}; the store's "
                                   "metadata was damaged or edited: reconvert the case")


def case_problem(files, where: str, record: CaseRecord, recorded: Mapping[str, Mapping[str, str]],
                 array_path: Callable[[str], str]) -> str | None:
    """The first thing missing from the case on disk (one line naming store, case and array), or None.

    ``files`` is the store's file layer, ``array_path(name)`` the array's path in the store.
    """
    names = ["image"] + (["hu"] if record.has_hu else []) + [f"labels/{n}" for n in record.label_names]
    for name in dict.fromkeys([*names, *recorded]):
        problem = missing_chunks(files, where, record.case_id, name, array_path(name), recorded.get(name))
        if problem:
            return problem
    return None


def missing_chunks(files, where: str, case_id: str, name: str, path: str,
                   chunks: Mapping[str, str] | None) -> str | None:
    """Whether the array at ``path`` lacks its metadata or any of the chunk files ``chunks`` lists."""
    present = files.files(path)
    if "zarr.json" not in present:
        return f"{where}: case {case_id}: array {name} is missing"
    lost = sorted(set(chunks or ()) - set(present))
    if lost:
        return f"{where}: case {case_id}: array {name} lacks {len(lost)} of its {len(chunks or ())} chunk files"
    return None
