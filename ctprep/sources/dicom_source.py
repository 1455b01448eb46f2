"""What the DICOM sources (``nsclc``, ``lidc``) share: cases in a TCIA download, inputs, header checks.

A TCIA download is ``<patient>/<study>/<series>/*.dcm`` with meaningless file
names; each case is one CT series plus the annotation file that names it by
SeriesInstanceUID (an RTSTRUCT for NSCLC-Radiomics, an XML for LIDC-IDRI).
:func:`find_cases` pairs them; the rules, shared by both sources:

* **Patient** (and the public case id): the path component (below the input
  folder) that has the dataset's id format (``LUNG1-001``, ``LIDC-IDRI-0001``);
  else the header's PatientID when *it* has that format; else ``unnamed-<hash>``,
  the first 12 hex digits of the sha256 of the first folder below the input folder
  (logged as a warning): a folder named after the patient never becomes an id.
  Apart from the format-checked ones, no header value or folder name becomes an id.
* **Pairing**: by SeriesInstanceUID, across the whole input. An annotation
  without a referenced series is paired with its patient's only CT series.
* **Cases**: one per CT series that an annotation names; one per annotation
  whose series is absent (its load says so); one per patient that has CT
  series but no annotation (its load says so, naming the largest series).
  A CT series of a patient who has a case already is not a case (a scout,
  a second reconstruction). A patient with several cases gets the ids
  ``<patient>``, ``<patient>_2``, ... in SeriesInstanceUID order.
* **Unreadable files** that look like DICOM (``.dcm`` or the ``DICM`` preamble)
  in a folder of the case's CT series (or anywhere in the patient's folder for
  a case with no annotation) make the case fail: they may be slices of it.

Inputs recorded per case (:func:`series_input`): the CT series as one entry
(``path`` = its folder relative to the input folder, ``size`` = total bytes,
``sha256`` = the sha256 of its ``sha256sum`` listing, names relative to the series'
own folder), so that a 1000-scan manifest lists 1000 series rather than 250 000 files;
verify one with ``cd SERIES_FOLDER && sha256sum FILES... | LC_ALL=C sort -k2 | sha256sum``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, ClassVar, Sequence

import numpy as np

from ctprep.case import CaseRef, InputFile
from ctprep.errors import CaseInputError
from ctprep.geometry import reorient
from ctprep.lookup import LazySlices
from ctprep.sources.base import Source

log = logging.getLogger(__name__)

ROLE_CT = "ct"
ROLE_UNREADABLE = "unreadable"
_HASH_BLOCK = 1 << 20


# --------------------------------------------------------------------------- finding cases


@dataclass(frozen=True, kw_only=True)
class Annotation:
    """An annotation file of a series: its path, the SeriesInstanceUID it names, its patient."""

    path: Path
    series_uid: str | None
    patient_id: str


@dataclass(frozen=True, kw_only=True)
class FoundCase:
    """A case found by :func:`find_cases`: the CT files (maybe none) and the annotations naming them."""

    case_id: str
    patient_id: str
    series_uid: str | None
    ct_files: tuple[Path, ...]
    annotations: tuple[Annotation, ...]
    unreadable: tuple[Path, ...]


def patient_of(path: Path, root: Path, pattern: re.Pattern, header_patient_id: str = "") -> str:
    """The patient of a file (module docstring): folder with the id format, PatientID, first folder."""
    parts = path.relative_to(root).parts[:-1]
    for part in parts:
        if pattern.fullmatch(part):
            return part
    if header_patient_id and pattern.fullmatch(header_patient_id):
        return header_patient_id
    return _unnamed_patient(parts[0] if parts else root.name, pattern.pattern)


@functools.lru_cache(maxsize=4096)
def _unnamed_patient(folder: str, pattern: str) -> str:
    """The id of a patient whose folder and PatientID lack the dataset's id format (logged once)."""
    case_id = "unnamed-" + hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    log.warning("a patient folder and its PatientID do not have the id format %s: case id %s (a hash of the "
                "folder name, which is not stored)", pattern, case_id)
    return case_id


def looks_like_dicom(path: Path) -> bool:
    """A ``.dcm`` file, or one with the ``DICM`` preamble: unreadable, it is a broken DICOM file."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def find_cases(root: Path, inventory, annotations: Sequence[Annotation], pattern: re.Pattern) -> list[FoundCase]:
    """Pair the CT series of ``inventory`` (ctprep.formats.dicom_scan.DicomInventory) with ``annotations``; see the module doc."""
    root = Path(root)
    series_patient = {uid: _series_patient(s.files, root, pattern, s.patient_id)
                      for uid, s in inventory.series.items()}
    by_patient: dict[str, list[str]] = {}
    for uid, patient in series_patient.items():
        by_patient.setdefault(patient, []).append(uid)
    paired, orphans = _pair(annotations, inventory.series, by_patient)
    unreadable = [p for p, _ in inventory.unreadable if looks_like_dicom(p)]

    found: dict[str, list[tuple[str, FoundCase]]] = {}  # patient -> [(sort key, case without its id)]

    def add(patient: str, key: str, series_uid, files, anns, bad) -> None:
        found.setdefault(patient, []).append((key, FoundCase(
            case_id="", patient_id=patient, series_uid=series_uid, ct_files=tuple(files),
            annotations=tuple(sorted(anns, key=lambda a: a.path)), unreadable=tuple(sorted(bad)))))

    for uid, anns in paired.items():
        files = inventory.series[uid].files
        folders = {f.parent for f in files}
        add(series_patient[uid], uid, uid, files, anns, [p for p in unreadable if p.parent in folders])
    for (patient, uid), anns in orphans.items():
        folders = {a.path.parent for a in anns}
        add(patient, f"~{anns[0].path}", uid, (), anns, [p for p in unreadable if p.parent in folders])
    for patient, uids in by_patient.items():
        if patient not in found:  # CT but no annotation: the largest series, to be reported
            uid = max(uids, key=lambda u: (len(inventory.series[u].files), u))
            bad = [p for p in unreadable if patient_of(p, root, pattern) == patient]
            add(patient, uid, uid, inventory.series[uid].files, (), bad)
    return _numbered(found)


def _pair(annotations: Sequence[Annotation], series: dict, by_patient: dict[str, list[str]]):
    """Annotations by the series they name ({uid: [...]}), and those whose series is absent."""
    paired: dict[str, list[Annotation]] = {}
    orphans: dict[tuple[str, str | None], list[Annotation]] = {}
    for ann in annotations:
        uid = ann.series_uid
        if uid is None and len(by_patient.get(ann.patient_id, [])) == 1:
            uid = by_patient[ann.patient_id][0]
        if uid is not None and uid in series:
            paired.setdefault(uid, []).append(ann)
        else:
            orphans.setdefault((ann.patient_id, uid), []).append(ann)
    return paired, orphans


def _numbered(found: dict[str, list[tuple[str, FoundCase]]]) -> list[FoundCase]:
    """Case ids: the patient, then ``<patient>_2``, ... in sort-key order; all cases sorted by id."""
    cases = []
    for patient, items in found.items():
        items.sort(key=lambda item: item[0])
        for n, (_, case) in enumerate(items, start=1):
            cases.append(dataclasses.replace(case, case_id=patient if n == 1 else f"{patient}_{n}"))
    return sorted(cases, key=lambda c: c.case_id)


def _series_patient(files: Sequence[Path], root: Path, pattern: re.Pattern, header_patient_id: str) -> str:
    votes = Counter(patient_of(f, root, pattern, header_patient_id) for f in files)
    return max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0]


def case_ref(source: str, case, root: Path, annotations: Sequence[tuple[str, Path]]) -> CaseRef:
    """A paired case as a CaseRef: its CT slices, the ``(role, path)`` annotations, its unreadable files."""
    files = [(ROLE_CT, relative(f, root)) for f in case.ct_files]
    files += [(role, relative(path, root)) for role, path in annotations]
    files += [(ROLE_UNREADABLE, relative(p, root)) for p in case.unreadable]
    return CaseRef(source=source, case_id=case.case_id, patient_id=case.patient_id, root=str(root),
                   files=tuple(files))


def relative(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


# --------------------------------------------------------------------------- inputs


def file_input(role: str, path: Path, root: Path) -> InputFile:
    """One raw file as recorded in the manifest: relative path, size, sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return InputFile(role=role, path=relative(path, root), size=Path(path).stat().st_size,
                     sha256=digest.hexdigest())


def series_input(role: str, files: Sequence[Path], root: Path) -> InputFile:
    """A CT series as one manifest entry (module docstring): folder, total size, digest of its listing."""
    names = [relative(f, root) for f in files]
    folder = os.path.commonpath([PurePosixPath(rel).parent.as_posix() for rel in names]) if names else ""
    size, digest = series_digest(files)
    return InputFile(role=role, path=folder or ".", size=size, sha256=digest)


def series_digest(files: Sequence[Path]) -> tuple[int, str]:
    """Total size and digest of a series, its files named relative to the series' own folder: the
    digest does not depend on where the series lies (the manifest may keep only a hashed path)."""
    if not files:
        return 0, hashlib.sha256().hexdigest()
    common = Path(os.path.commonpath([str(f.parent) for f in files]))
    return listing_digest(sorted((f.relative_to(common).as_posix(), f) for f in files), common)


def listing_digest(entries: Sequence[tuple[str, Path]], root: Path) -> tuple[int, str]:
    """Total size and the sha256 of the ``sha256sum`` listing of ``(relative name, file)`` entries (sorted)."""
    listing = hashlib.sha256()
    size = 0
    for rel, path in entries:
        one = file_input("", path, root)
        listing.update(f"{one.sha256}  {rel}\n".encode())
        size += one.size
    return size, listing.hexdigest()


class HashInBackground:
    """Hash inputs in a thread while the series is decoded (hashlib releases the GIL on large blocks)."""

    def __init__(self, make_inputs: Callable[[], tuple[InputFile, ...]]):
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future: Future = self._pool.submit(make_inputs)

    def result(self) -> tuple[InputFile, ...]:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=False)

    def cancel(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the source base


class DicomSource(Source):
    """Shared checks of the DICOM sources; subclasses name their annotation role and id format."""

    annotation_role: ClassVar[str]
    annotation_kind: ClassVar[str]  # "RTSTRUCT", "LIDC XML": for messages
    annotation_verb: ClassVar[str]  # "refers to", "names"
    patient_pattern: ClassVar[re.Pattern]

    def check_unreadable(self, ref: CaseRef) -> None:
        """Raise CaseInputError naming the first broken DICOM file that may belong to the case."""
        for path in ref.paths(ROLE_UNREADABLE):
            raise CaseInputError(path, f"unreadable DICOM file beside the case's series ({_why_unreadable(path)}); "
                                       "it may be one of its slices")

    def header_problem(self, ref: CaseRef) -> str | None:
        """Headers only (no pixels): every file there and parseable, the pairing complete."""
        from ctprep.formats.dicom_scan import read_header

        for path in ref.paths(ROLE_UNREADABLE):
            return f"{path}: unreadable DICOM file ({_why_unreadable(path)})"
        ct = ref.paths(ROLE_CT)
        annotations = ref.paths(self.annotation_role)
        if not ct:
            where = annotations[0] if annotations else ref.root
            return f"{where}: the CT series it names is not in the input folder"
        if not annotations:
            return f"{ct[0].parent}: no {self.annotation_kind} {self.annotation_verb} this CT series"
        for path in ct:
            try:
                read_header(path, ["SOPClassUID", "SeriesInstanceUID"], stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types
                return f"{path}: {type(exc).__name__}: {exc}"
        for path in annotations:
            problem = self.annotation_problem(path)
            if problem:
                return problem
        return None

    def annotation_problem(self, path: Path) -> str | None:
        """A cheap check of one annotation file; None when it looks usable."""
        return None if path.is_file() else f"{path}: file not found"


def _why_unreadable(path: Path) -> str:
    from ctprep.formats.dicom_scan import scan_one

    kind, info = scan_one(path)
    return str(info) if kind == "unreadable" else "readable now; it was not when the folder was scanned"


def stack_native(per_uid: dict[str, np.ndarray], sop_uids: Sequence[str], shape: tuple[int, int, int]) -> np.ndarray:
    """Masks keyed by SOPInstanceUID stacked in the native slice order ``sop_uids``."""
    out = np.zeros(shape, dtype=np.uint8)
    for k, uid in enumerate(sop_uids):
        plane = per_uid.get(uid)
        if plane is not None:
            out[k] = plane
    return out


def union_slices(masks: Sequence[dict[str, np.ndarray]], ct) -> LazySlices | np.ndarray:
    """The union of per-SOPInstanceUID masks (one dict per ROI) on the canonical grid of ``ct`` (a CtSeries):
    ``ct.to_canonical`` of the stacked union, computed slice by slice when the series' slices are the
    grid's (no resampling, slices along its last axis), else whole."""
    grid, shape = ct.source_grid, ct.native_shape
    if ct.resampled or grid.axes[2][0] != 2:
        union = stack_native(masks[0], ct.native_sop_uids, shape)
        for per_uid in masks[1:]:
            union = np.maximum(union, stack_native(per_uid, ct.native_sop_uids, shape))
        return ct.to_canonical(union)
    n, flip = shape[0], grid.axes[2][1]

    def make_slice(z: int) -> np.ndarray:
        uid = ct.native_sop_uids[z if flip == 1 else n - 1 - z]
        plane = np.zeros((1, *shape[1:]), dtype=np.uint8)
        for per_uid in masks:
            if (mask := per_uid.get(uid)) is not None:
                np.maximum(plane[0], mask, out=plane[0])
        return np.ascontiguousarray(reorient(plane.transpose(2, 1, 0), grid)[0])

    return LazySlices(ct.geometry.shape, np.uint8, make_slice)
