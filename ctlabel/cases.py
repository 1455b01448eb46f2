"""One case of a labelling run: read it and cut it into lesion jobs, then write its labels.

Convention: :func:`prepare_case` reads what the case's lesions need and makes one
:class:`ctlabel.jobs.LesionJob` per lesion, with a crop around it; :func:`finish_case`
pastes the results (in job order) into whole-case labels written with
``SliceStore.write_label`` (atomic): ``trimap_<name>`` (uint8, 0 / 128 / 255) and
``soft_<name>`` (float32 alpha in [0, 1]). Where crops of lesions on one slice overlap,
the larger value wins; outside every crop a trimap is background and alpha is 0. A
failure of the case itself becomes a ``skipped`` outcome (:func:`prepare_guarded`,
:func:`finish_guarded`, lkbase's :func:`lkbase.runner.run_guarded`).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ctlabel.channels import ChannelChoice, choose_channels
from ctlabel.config import ATTRIBUTE_KEY, LabelConfig, as_stored
from ctlabel.errors import LabelInputError
from ctlabel.jobs import LesionJob, LesionResult, run_lesion_job
from ctlabel.lesions import SliceLesion, component_lesions, crop_box, measured_recist_lesions, recist_lesions
from ctlabel.matting import matting_image
from ctlabel.report import LabelOutcome, LesionOutcome
from ctlabel.trimap import TRIMAP_VALUES, TrimapParams, band_width_mm
from ctprep.lookup import LazySlices
from ctprep.store import SliceStore
from lkbase import __version__
from lkbase.errors import LesionkitError
from lkbase.runner import run_guarded

# A failed write skips the case (a missing label was found before, when the case was read).
WRITE_FAILURES = (LesionkitError, ValueError, OSError, MemoryError)


@dataclass(frozen=True, kw_only=True)
class CaseWork:
    """A case read and cut into lesion jobs; ``problems`` are lesions rejected before any job."""

    case_id: str
    shape: tuple[int, int, int]
    jobs: tuple[LesionJob, ...]
    problems: tuple[LesionOutcome, ...]
    started: float
    channels: ChannelChoice


def prepare_case(store: SliceStore, case_id: str, config: LabelConfig) -> CaseWork:
    """Read what the case's lesions need and build one job per lesion (raises for an unusable case)."""
    started = time.perf_counter()
    record = store.record(case_id)
    spacing = tuple(float(s) for s in record.geometry.spacing[1:])
    shape = (record.num_slices, *record.geometry.shape[1:])
    channels = choose_channels(case_id, [w.name for w in record.windows], record.source, config.channels)
    pick = list(channels.indices)
    problems: list[LesionOutcome] = []
    if config.source == "recist":
        if config.recist_from:
            lesions, errors = _measured_lesions(store, record, config.recist_from, spacing)
        else:
            lesions, errors = recist_lesions(record)
        problems = [LesionOutcome(lesion_id=e.lesion, z=None, status="skipped", reason=e.reason) for e in errors]
        zs = sorted({lesion.z for lesion in lesions})
        batch = store.read_slices([(case_id, z) for z in zs]) if zs else None
        images = {z: batch.image[i][pick] for i, z in enumerate(zs)} if batch is not None else {}
        jobs = [_recist_job(case_id, lesion, images[lesion.z], spacing, config) for lesion in lesions]
    else:
        names = config.evidence_labels
        available = store.label_names(case_id)
        missing = [n for n in names if n not in available]
        if missing:
            raise LookupError(f"case {case_id} has no label {missing[0]!r} (labels: {', '.join(available) or 'none'})")
        zs = _slices_to_read(record, names)
        jobs = []
        if zs:
            batch = store.read_slices([(case_id, z) for z in zs], labels=names)
            for name in names:
                _require_binary(batch.labels[name], case_id, name)
            jobs = _component_jobs(case_id, zs, batch, names, spacing, config, pick)
    return CaseWork(case_id=case_id, shape=shape, jobs=tuple(jobs), problems=tuple(problems), started=started,
                    channels=channels)


def _measured_lesions(store: SliceStore, record, name: str, spacing: tuple[float, float]):
    """``--recist-from``: RECIST axes measured on the label ``name`` (binary), one lesion per 3D component."""
    available = store.label_names(record.case_id)
    if name not in available:
        raise LookupError(f"case {record.case_id} has no label {name!r} for --recist-from "
                          f"(labels: {', '.join(available) or 'none'})")
    zs = _slices_to_read(record, [name])
    if not zs:
        return [], []
    mask = store.read_slices([(record.case_id, z) for z in zs], labels=[name]).labels[name]
    _require_binary(mask, record.case_id, name)
    return measured_recist_lesions(mask, zs, spacing)


def _slices_to_read(record, names: Sequence[str]) -> list[int]:
    """Every stored slice, or only those with lesion pixels when the evidence is the store's lesion label."""
    if record.lesion_label is not None and record.lesion_label == names[-1]:
        return [z for z, n in enumerate(record.lesion_pixels) if n > 0]
    return list(range(record.num_slices))


def _require_binary(label: np.ndarray, case_id: str, name: str) -> None:
    if label.dtype != np.uint8 or label.max(initial=0) > 1:
        values = np.unique(label)[:5].tolist()
        raise LabelInputError(f"case {case_id}: label {name!r} is not a binary 0/1 mask "
                              f"({label.dtype}, values {values}...)")


def _crop_margin_mm(size_mm: float, needed_mm: float, params: TrimapParams) -> float:
    return max(params.min_crop_margin_mm, params.crop_margin_fraction * size_mm, needed_mm)


def _recist_job(case_id: str, lesion: SliceLesion, image: np.ndarray, spacing: tuple[float, float],
                config: LabelConfig) -> LesionJob:
    params = config.trimap
    pixel = float(np.sqrt(spacing[0] * spacing[1]))
    long_mm = lesion.recist.diameters_mm(spacing)[0]
    box_mm = max(params.box_margin * long_mm, params.min_box_margin_mm)
    margin = _crop_margin_mm(lesion.size_px * pixel, box_mm + 3 * pixel, params)
    y0, y1, x0, x1 = crop_box(lesion.box, image.shape[1:], spacing, margin)
    return LesionJob(case_id=case_id, lesion_id=lesion.lesion_id, z=lesion.z, crop=(y0, y1, x0, x1),
                     image=matting_image(image[:, y0:y1, x0:x1]), spacing=spacing, source="recist",
                     recist=lesion.recist.shifted(x0, y0), trimap_params=params,
                     matting_params=config.matting_params if config.matting else None)


def _component_jobs(case_id: str, zs: Sequence[int], batch, names: Sequence[str],
                    spacing: tuple[float, float], config: LabelConfig, pick: list[int]) -> list[LesionJob]:
    """One job per connected component of the (union) mask on each slice."""
    import cv2

    params = config.trimap
    pixel = float(np.sqrt(spacing[0] * spacing[1]))
    outline = batch.labels[names[-1]]  # the mask, or the readers' union
    jobs = []
    for i, z in enumerate(zs):
        lesions = component_lesions(outline[i:i + 1], [z])
        if not lesions:
            continue
        _, components = cv2.connectedComponents((outline[i] != 0).astype(np.uint8), connectivity=8)
        for lesion in lesions:
            target = components == lesion.component
            if config.source == "mask":
                needed = band_width_mm(target, spacing, params)
            else:
                needed = params.readers_margin_mm
            margin = _crop_margin_mm(lesion.size_px * pixel, needed + 3 * pixel, params)
            y0, y1, x0, x1 = crop_box(lesion.box, outline.shape[1:], spacing, margin)
            crops = {name: batch.labels[name][i, y0:y1, x0:x1] for name in names}
            masks = ({"mask": crops[names[0]]} if config.source == "mask"
                     else {"intersection": crops[names[0]], "union": crops[names[1]]})
            masks["target"] = target[y0:y1, x0:x1]
            jobs.append(LesionJob(case_id=case_id, lesion_id=lesion.lesion_id, z=z, crop=(y0, y1, x0, x1),
                                  image=matting_image(batch.image[i][pick, y0:y1, x0:x1]), spacing=spacing,
                                  source=config.source, masks=masks, trimap_params=params,
                                  matting_params=config.matting_params if config.matting else None))
    return jobs


def pasted(shape: tuple[int, int, int], dtype, results: Sequence[LesionResult], attribute: str) -> LazySlices:
    """The whole-case volume of the results' crops (``trimap`` or ``alpha``), built slice by slice.

    Overlapping crops keep the larger value: foreground over unknown over background, and
    the higher alpha.
    """
    by_slice: dict[int, list[LesionResult]] = collections.defaultdict(list)
    for result in results:
        if getattr(result, attribute) is not None:
            by_slice[result.z].append(result)

    def make(z: int) -> np.ndarray:
        plane = np.zeros(shape[1:], dtype=dtype)
        for result in by_slice.get(z, ()):
            y0, y1, x0, x1 = result.crop
            np.maximum(plane[y0:y1, x0:x1], getattr(result, attribute), out=plane[y0:y1, x0:x1])
        return plane

    return LazySlices(shape, dtype, make)


def finish_case(store: SliceStore, work: CaseWork, results: Sequence[LesionResult],
                config: LabelConfig) -> LabelOutcome:
    """Write the case's labels (trimap, then soft mask) and return its outcome."""
    lesions = tuple(LesionOutcome.from_result(r) for r in results) + work.problems
    listed = [lesion.to_dict() for lesion in lesions]
    done = [r for r in results if r.status == "done"]
    common = {"lesionkit_version": __version__, "lesions": listed, "channels": work.channels.to_dict()}
    store.write_label(work.case_id, config.trimap_label, pasted(work.shape, np.uint8, done, "trimap"),
                      attributes={ATTRIBUTE_KEY: {"kind": "trimap", "values": TRIMAP_VALUES,
                                                  "parameters": as_stored(config.trimap_parameters()), **common}})
    if config.matting:
        store.write_label(work.case_id, config.soft_label, pasted(work.shape, np.float32, done, "alpha"),
                          attributes={ATTRIBUTE_KEY: {"kind": "soft", "trimap": config.trimap_label,
                                                      "parameters": as_stored(config.soft_parameters()), **common}})
    return LabelOutcome(case_id=work.case_id, status="labelled", lesions=lesions,
                        seconds=time.perf_counter() - work.started)


def label_case(store: SliceStore, case_id: str, config: LabelConfig) -> LabelOutcome:
    """Label one case: read it, run its lesion jobs one after the other, write its labels.

    Failures of the case itself (unreadable, no annotations, missing label) become a
    'skipped' outcome; failures of single lesions are listed in a 'labelled' one.
    """
    work = prepare_guarded(store, case_id, config)
    if isinstance(work, LabelOutcome):
        return work
    return finish_guarded(store, work, [run_lesion_job(job) for job in work.jobs], config)


def prepare_guarded(store: SliceStore, case_id: str, config: LabelConfig) -> CaseWork | LabelOutcome:
    """prepare_case, with a failure of the case (unreadable, no annotations, missing label) as a 'skipped' outcome."""
    return run_guarded(lambda: prepare_case(store, case_id, config),
                       lambda reason: LabelOutcome(case_id=case_id, status="skipped", reason=reason))


def finish_guarded(store: SliceStore, work: CaseWork, results: Sequence[LesionResult],
                   config: LabelConfig) -> LabelOutcome:
    """finish_case, with a failed write as a 'skipped' outcome."""
    return run_guarded(lambda: finish_case(store, work, results, config),
                       lambda reason: LabelOutcome(case_id=work.case_id, status="skipped",
                                                   reason=f"writing labels failed: {reason}"),
                       skip=WRITE_FAILURES)
