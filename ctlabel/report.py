"""What a labelling run reports: per lesion, per case (:class:`LabelOutcome`), per run (:class:`LabelReport`).

Convention: a case's outcome is lkbase's per-case :class:`lkbase.runner.CaseOutcome`
(status ``labelled``, ``existing`` or ``skipped``) with its lesions; each lesion's entry
(:class:`LesionOutcome`) is also what the labels' attributes list; the report's
:meth:`LabelReport.lines` are the end-of-run summary.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from ctlabel.jobs import LESION_STATUSES, LesionResult, check_status
from ctlabel.recist_check import RECIST_PATHS
from lkbase.runner import CaseOutcome

CASE_STATUSES = ("labelled", "existing", "skipped")
MAX_REPORTED = 20  # skipped lesions listed one per line in the summary; all are in the attributes


@dataclass(frozen=True, kw_only=True)
class LesionOutcome:
    """One lesion in the report and in the labels' attributes."""

    lesion_id: str
    z: int | None
    status: str  # done | skipped
    reason: str = ""
    crop: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1)
    trimap_ms: float = 0.0
    matting_ms: float = 0.0
    path: str = ""  # --from recist: grabcut | ellipse (ctlabel/recist_check.py)
    path_why: str = ""
    recist: dict | None = None  # --from recist: the axes on the slice (what `ctlabel evaluate` scores as baseline)

    def __post_init__(self) -> None:
        check_status(self.status, LESION_STATUSES, "lesion")

    def to_dict(self) -> dict:
        entry = {"lesion_id": self.lesion_id, "z": self.z, "status": self.status, "reason": self.reason,
                 "crop": list(self.crop) if self.crop else None}
        if self.recist is not None:
            entry.update(path=self.path, path_why=self.path_why, recist=self.recist)
        return entry

    @classmethod
    def from_result(cls, result: LesionResult) -> "LesionOutcome":
        return cls(lesion_id=result.lesion_id, z=result.z, status=result.status, reason=result.reason,
                   crop=result.crop, trimap_ms=result.trimap_ms, matting_ms=result.matting_ms, path=result.path,
                   path_why=result.path_why, recist=None if result.recist is None else result.recist.to_dict())


@dataclass(frozen=True, kw_only=True)
class LabelOutcome(CaseOutcome):
    """One case of a labelling run: labelled | existing | skipped, with its lesions."""

    lesions: tuple[LesionOutcome, ...] = ()

    def __post_init__(self) -> None:
        check_status(self.status, CASE_STATUSES, "case")


@dataclass(frozen=True, kw_only=True)
class LabelReport:
    """The end-of-run summary."""

    store: str
    labels: tuple[str, ...]
    outcomes: tuple[LabelOutcome, ...]
    seconds: float

    def with_status(self, status: str) -> list[LabelOutcome]:
        return [o for o in self.outcomes if o.status == status]

    def lesions(self, status: str) -> list[tuple[str, LesionOutcome]]:
        return [(o.case_id, lesion) for o in self.outcomes for lesion in o.lesions if lesion.status == status]

    def lines(self) -> list[str]:
        labelled, existing, skipped = (self.with_status(s) for s in CASE_STATUSES)
        done, failed = self.lesions("done"), self.lesions("skipped")
        rate = len(done) / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.store}: {len(labelled)} cases labelled, {len(existing)} already done, {len(skipped)} "
                 f"skipped; {len(done)} lesions labelled, {len(failed)} skipped in {self.seconds:.1f} s "
                 f"({rate:.1f} lesions/s); labels {', '.join(self.labels)}"]
        if done:
            trimap = float(np.median([lesion.trimap_ms for _, lesion in done]))
            matting = float(np.median([lesion.matting_ms for _, lesion in done]))
            lines.append(f"  per lesion (median): trimap {trimap:.1f} ms, matting {matting:.1f} ms")
            paths = collections.Counter(lesion.path for _, lesion in done if lesion.path)
            if paths:
                lines.append("  RECIST trimaps from: " + ", ".join(f"{paths[p]} {p}" for p in RECIST_PATHS))
        lines += [f"  skipped case {o.case_id}: {o.reason}" for o in skipped]
        lines += [f"  skipped lesion {case}/{lesion.lesion_id}"
                  f"{'' if lesion.z is None else f' (z={lesion.z})'}: {lesion.reason}"
                  for case, lesion in failed[:MAX_REPORTED]]
        if len(failed) > MAX_REPORTED:
            lines.append(f"  ... and {len(failed) - MAX_REPORTED} more skipped lesions "
                         f"(listed in the labels' attributes)")
        return lines
