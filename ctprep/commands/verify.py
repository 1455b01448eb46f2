"""Verifying a store against what was recorded when it was written: the library behind ``ctprep verify``.

Every array's chunk files are hashed when written (``SliceStore.write_case`` and
``write_label`` record them in the case), and the conversion manifest records one
digest of each case's checksums. Verification recomputes the chunks' checksums and
compares them with the case's record and the record with the manifest, then checks
the slice index against the cases and the labels against the label map. Problems
are reported per case; nothing is modified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctprep.errors import StoreFormatError
from ctprep.store import SliceIndex, SliceStore, checksums_digest

_CHUNK_Z = re.compile(r"^c[./](\d+)")


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    store: str
    cases_checked: int
    chunks_checked: int
    problems: tuple[tuple[str, str], ...]  # (case id or "store", what is wrong)
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def corrupt_cases(self) -> list[str]:
        return sorted({case for case, _ in self.problems if case != "store"})

    def lines(self) -> list[str]:
        lines = [f"{case}: {problem}" for case, problem in self.problems]
        lines += [f"note: {note}" for note in self.notes]
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s) in {len(self.corrupt_cases())} case(s)"
        lines.append(f"{self.store}: {self.cases_checked} cases, {self.chunks_checked} chunks checked: {verdict}")
        return lines


def _slice_of(chunk_key: str) -> str:
    match = _CHUNK_Z.match(chunk_key)
    return f"slice {match.group(1)}" if match else f"chunk {chunk_key}"


def compare_checksums(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> list[str]:
    """What differs between recorded and current chunk checksums, per array and slice."""
    problems = []
    for array in sorted(set(recorded) | set(current)):
        if array not in current:
            problems.append(f"{array}: array missing")
            continue
        if array not in recorded:
            problems.append(f"{array}: array not recorded when the case was written")
            continue
        before, now = recorded[array], current[array]
        changed = [_slice_of(k) for k in sorted(before) if k in now and now[k] != before[k]]
        missing = [_slice_of(k) for k in sorted(before) if k not in now]
        extra = [_slice_of(k) for k in sorted(now) if k not in before]
        for what, where in (("checksum mismatch", changed), ("chunk file missing", missing),
                            ("unexpected chunk file", extra)):
            if where:
                shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
                problems.append(f"{array}: {what} at {shown}")
    return problems


def _label_problems(store: SliceStore, case_id: str) -> list[str]:
    """Labels made by ctprep from the label map must be binary masks."""
    record = store.record(case_id)
    data = store.read_case(case_id, labels=list(record.label_names))
    problems = []
    for name, values in data.labels.items():
        found = np.unique(values)
        if not set(found.tolist()) <= {0, 1}:
            problems.append(f"labels/{name}: values {found.tolist()[:8]} outside the label map's {{0, 1}}")
    return problems


def _manifest_problems(manifest: dict, case_id: str, recorded: dict) -> list[str]:
    entry = manifest.get("cases", {}).get(case_id)
    if entry is None:
        return ["not listed in the store's manifest"]
    if "checksum" not in entry:
        return []  # manifests of older lesionkit versions: noted once for the store
    covered = {k: v for k, v in recorded.items() if k in set(entry.get("arrays", recorded))}
    if checksums_digest(covered) != entry["checksum"]:
        return ["checksums differ from those the manifest recorded at conversion"]
    return []


def _index_problems(store: SliceStore) -> list[str]:
    stored = store.stored_index()
    if stored is None:
        return ["no consolidated slice index (readers fall back to the case records)"]
    try:
        expected = SliceIndex.from_records(store.records())
    except StoreFormatError:  # a case whose metadata are refused: reported with that case
        return []
    if len(stored) != len(expected) or not np.array_equal(stored.rows, expected.rows):
        return [f"slice index ({len(stored)} rows) disagrees with the cases ({len(expected)} slices)"]
    return []


def verify_store(path: str | Path, *, progress: bool = False) -> VerifyReport:
    """Check every case of the store at ``path``; see the module docstring."""
    store = SliceStore.open(path)  # checks the format name and version
    manifest = store.manifest()
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    chunks = 0
    if not manifest.get("cases"):
        notes.append("the store has no conversion manifest: chunks are checked against the cases' own records")
    elif not any("checksum" in e for e in manifest["cases"].values()):
        notes.append("the manifest predates recorded checksums: cases checked against their own records only")
    case_ids = store.case_ids()
    for case_id in tqdm(case_ids, unit="case", desc="verifying", disable=not progress or None):
        try:
            store.check_case(case_id)  # record and array metadata against the format
        except StoreFormatError as exc:
            problems.append((case_id, str(exc)))
            continue
        recorded = store.recorded_checksums(case_id)
        if not recorded:
            problems.append((case_id, "no checksums recorded (written by an older lesionkit): reconvert to verify"))
            continue
        current = store.current_checksums(case_id)
        chunks += sum(len(v) for v in current.values())
        found = compare_checksums(recorded, current)
        if not found:  # reading labels of a corrupt case would only repeat the problem
            found += _label_problems(store, case_id)
        if manifest.get("cases"):
            found += _manifest_problems(manifest, case_id, recorded)
        problems += [(case_id, p) for p in found]
    listed = {k for k, e in manifest.get("cases", {}).items() if e.get("status") == "converted"}
    problems += [(c, "listed as converted in the manifest but not in the store") for c in sorted(listed - set(case_ids))]
    problems += [("store", p) for p in _index_problems(store)]
    if incomplete := store.incomplete_case_ids():
        notes.append(f"{len(incomplete)} incomplete case(s) from an interrupted write, invisible to readers "
                     f"and redone by the next convert: {', '.join(incomplete[:5])}")
    return VerifyReport(store=str(path), cases_checked=len(case_ids), chunks_checked=chunks,
                        problems=tuple(problems), notes=tuple(notes))
