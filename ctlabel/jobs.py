"""One lesion's work: its trimap and, for soft masks, its alpha (:func:`run_lesion_job`).

Convention: a :class:`LesionJob` holds everything the lesion needs (its crop of the
stored windows, its evidence cut to the crop, the parameters): small, picklable, what a
worker process or a dask task receives; it never touches the store. Any failure of the
lesion becomes a ``skipped`` :class:`LesionResult` with its reason; the run goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ctlabel.errors import LesionError
from ctlabel.matting import MattingParams, estimate_alpha
from ctlabel.trimap import (
    Recist,
    TrimapParams,
    band_width_mm,
    require_foreground_and_background,
    trimap_from_mask,
    trimap_from_readers,
)
from ctlabel.recist_check import checked_recist_trimap
from lkbase.errors import ParameterError

LESION_STATUSES = ("done", "skipped")


@dataclass(frozen=True, kw_only=True)
class LesionJob:
    """Everything one lesion's trimap and alpha need (small, picklable: what a worker receives)."""

    case_id: str
    lesion_id: str
    z: int
    crop: tuple[int, int, int, int]  # (y0, y1, x0, x1) on the stored slice
    image: np.ndarray  # (h, w, 3) uint8, matting_image of the crop
    spacing: tuple[float, float]  # in-plane (y, x) mm
    source: str
    recist: Recist | None = None  # crop coordinates
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)  # crops: mask | intersection, union; target
    trimap_params: TrimapParams = field(default_factory=TrimapParams)
    matting_params: MattingParams | None = None  # None: trimap only


@dataclass(frozen=True, kw_only=True)
class LesionResult:
    """A job's outcome: the crop's trimap and alpha when done, the reason when skipped."""

    case_id: str
    lesion_id: str
    z: int
    crop: tuple[int, int, int, int]
    status: str  # done | skipped
    reason: str = ""
    trimap: np.ndarray | None = None
    alpha: np.ndarray | None = None
    trimap_ms: float = 0.0
    matting_ms: float = 0.0
    path: str = ""  # --from recist: the trimap's mask, grabcut | ellipse (ctlabel/recist_check.py)
    path_why: str = ""  # why GrabCut was not kept
    recist: Recist | None = None  # --from recist: the axes, in slice coordinates

    def __post_init__(self) -> None:
        check_status(self.status, LESION_STATUSES, "lesion")

    @classmethod
    def skipped(cls, job: LesionJob, reason: str) -> "LesionResult":
        return cls(case_id=job.case_id, lesion_id=job.lesion_id, z=job.z, crop=job.crop, status="skipped",
                   reason=reason, recist=_slice_recist(job))


def _slice_recist(job: LesionJob) -> Recist | None:
    return None if job.recist is None else job.recist.shifted(-job.crop[2], -job.crop[0])


def check_status(status: str, allowed: tuple[str, ...], what: str) -> None:
    """The outcome dataclasses' self-check: ``status`` is one of ``allowed``."""
    if status not in allowed:
        raise ParameterError(f"{what} status must be one of {', '.join(allowed)}, found {status!r}")


def lesion_trimap(job: LesionJob) -> tuple[np.ndarray, str, str]:
    """The job's trimap from its evidence, checked to have foreground (in the lesion) and background,
    with the RECIST path taken and why ('' for other evidence)."""
    params, name = job.trimap_params, f"{job.case_id}/{job.lesion_id}"
    target = job.masks.get("target")
    path = why = ""
    if job.source == "recist":
        if job.recist is None:
            raise LesionError(name, "no RECIST axes")
        checked = checked_recist_trimap(job.image, job.recist, job.spacing, params, name)
        trimap, path, why = checked.trimap, checked.path, checked.why
    elif job.source == "mask":
        band = band_width_mm(target, job.spacing, params)
        trimap = trimap_from_mask(job.masks["mask"], job.spacing, band_mm=band, params=params)
    else:
        trimap = trimap_from_readers(job.masks["intersection"], job.masks["union"], job.spacing,
                                     margin_mm=params.readers_margin_mm)
    require_foreground_and_background(trimap, name, region=target)
    return trimap, path, why


def run_lesion_job(job: LesionJob) -> LesionResult:
    """Trimap (and alpha) of one lesion; any failure of this lesion becomes a 'skipped' result."""
    started = time.perf_counter()
    try:
        trimap, path, why = lesion_trimap(job)
        built = time.perf_counter()
        alpha = None
        if job.matting_params is not None:
            alpha = estimate_alpha(job.image, trimap, params=job.matting_params,
                                   lesion=f"{job.case_id}/{job.lesion_id}")
        solved = time.perf_counter()
    except LesionError as exc:
        return LesionResult.skipped(job, exc.reason)
    except (ValueError, ArithmeticError, MemoryError) as exc:
        return LesionResult.skipped(job, f"{type(exc).__name__}: {exc}")
    return LesionResult(case_id=job.case_id, lesion_id=job.lesion_id, z=job.z, crop=job.crop, status="done",
                        trimap=trimap, alpha=alpha, trimap_ms=(built - started) * 1e3,
                        matting_ms=(solved - built) * 1e3, path=path, path_why=why, recist=_slice_recist(job))
