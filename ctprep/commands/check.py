"""``ctprep check``: compare a download with its dataset manifest before converting it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.sources import get_source
from ctprep.sources.base import refuse_duplicate_ids, refuse_long_ids


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    source: str
    found: tuple[str, ...]
    missing: tuple[str, ...]  # in the manifest, not in the download
    unexpected: tuple[str, ...]  # in the download, not in the manifest
    unreadable: tuple[tuple[str, str], ...]  # (case id, reason)
    looked_for: str = ""  # the source's layout, said when nothing was found
    duplicates: tuple[tuple[str, str], ...] = ()  # (case id, reason naming every file): refused by convert

    @property
    def ok(self) -> bool:
        return bool(self.found) and not (self.missing or self.unexpected or self.unreadable or self.duplicates)

    def lines(self) -> list[str]:
        out = [f"{self.source}: {len(self.found)} cases found, {len(self.missing)} missing, "
               f"{len(self.unexpected)} unexpected, {len(self.unreadable)} unreadable"]
        out += [f"  missing     {_compact(self.missing)}"] if self.missing else []
        out += [f"  unexpected  {_compact(self.unexpected)}"] if self.unexpected else []
        out += [f"  unreadable  {case}: {reason}" for case, reason in self.unreadable]
        out += [f"  duplicate   {case}: {reason}" for case, reason in self.duplicates]
        out += [f"  nothing found; expected {self.looked_for}"] if not self.found else []
        return out


def _compact(ids: tuple[str, ...], limit: int = 12) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def check_download(source_name: str, root: str | Path) -> CheckReport:
    source = get_source(source_name)
    refs, duplicated = refuse_duplicate_ids(source.discover(Path(root)))
    duplicates = tuple(sorted(duplicated.items()))
    found = tuple(r.case_id for r in refs)
    official = set(source.manifest.case_ids)
    # By patient: a patient's second scan (LIDC-IDRI-0001_2) is an official patient, not unexpected.
    present = set(found) | {r.patient_id for r in refs} | set(duplicated)
    refs, too_long = refuse_long_ids(refs)
    unreadable = tuple(too_long.items()) + tuple((r.case_id, problem) for r in refs
                                                 if (problem := source.header_problem(r)))
    if not official:  # the manifest cannot list the ids (DeepLesion: 32,120 key slices): readability only
        return CheckReport(source=source_name, found=found, missing=(), unexpected=(), unreadable=unreadable,
                           looked_for=source.description, duplicates=duplicates)
    return CheckReport(source=source_name, found=found, looked_for=source.description,
                       missing=tuple(c for c in source.manifest.case_ids if c not in present),
                       unexpected=tuple(r.case_id for r in refs if not {r.case_id, r.patient_id} & official),
                       unreadable=unreadable, duplicates=duplicates)
