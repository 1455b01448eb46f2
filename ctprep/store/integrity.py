"""Is a stored case whole on disk: the one check behind resuming a conversion and marking a case complete.

Convention: a case is whole when every array its record implies (``image``, ``hu`` with
``has_hu``, ``labels/<name>`` for each of its labels) and every array named in its recorded
checksums has its ``zarr.json`` and every chunk file the checksums list (a slice equal to the
fill value has no file, so the recorded checksums, not the slice count, say which files exist).
"""

from __future__ import annotations

from typing import Callable, Mapping

from ctprep.case import CaseRecord


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
