"""Scanning a folder for DICOM CT series and RTSTRUCTs (headers only), shared by the DICOM sources.

:func:`scan_dicom_folder` walks any folder layout (file names mean nothing) and groups
CT Image Storage files by SeriesInstanceUID, lists RTSTRUCTs and the files it could not
read. Convention: only the tags in ``_SCAN_TAGS`` are parsed (privacy: PatientID, the
dataset's public id, is the only identifying one kept); a broken file is listed with a
one-line reason, never raised. Reading a series: :mod:`ctprep.formats.dicom`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, RTStructureSetStorage

from ctprep.errors import MissingInputError

_SERIES_UID_TAG = 0x0020000E
_SCAN_TAGS = ["SOPClassUID", "SeriesInstanceUID", "PatientID", "Modality",
              "ReferencedFrameOfReferenceSequence"]
_SCAN_TAG_NUMBERS = [Tag(keyword) for keyword in _SCAN_TAGS]  # read_partial wants tags, not keywords


# ---- scanning a folder ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SeriesFiles:
    """One CT series found on disk.

    ``series_uid`` is the SeriesInstanceUID; files whose header has an empty one
    (some anonymised exports) are grouped by folder under ``"no-series-uid:<folder>"``.
    """

    series_uid: str
    patient_id: str
    files: tuple[Path, ...]


@dataclass(frozen=True, kw_only=True)
class RtStructFile:
    path: Path
    referenced_series_uid: str | None
    patient_id: str


@dataclass(frozen=True, kw_only=True)
class DicomInventory:
    series: dict[str, SeriesFiles]
    rtstructs: tuple[RtStructFile, ...]
    unreadable: tuple[tuple[Path, str], ...]
    others: tuple[tuple[Path, str], ...] = ()  # other DICOM objects (SEG, SR, ...) and their SOP Class UID


def read_header(path: Path, tags: list[str], stop_before_pixels: bool) -> pydicom.Dataset:
    """dcmread limited to ``tags``; raises OSError / InvalidDicomError / other parse errors."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=tags)
    except InvalidDicomError:
        # No 'DICM' preamble: accept a raw dataset only if it looks like an image or RT object.
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=tags, force=True)
        if not ds.get("SOPClassUID") and not ds.get("Modality"):
            raise InvalidDicomError("not a DICOM file (no preamble and no SOPClassUID)") from None
        return ds


def sop_class(ds: pydicom.Dataset) -> str:
    """The SOP Class UID, from the data set or else its file meta information."""
    value = str(ds.get("SOPClassUID", "") or "")
    if not value and getattr(ds, "file_meta", None) is not None:
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return value


def sop_instance(ds: pydicom.Dataset) -> str:
    """The SOP Instance UID, from the data set or else its file meta information."""
    value = str(ds.get("SOPInstanceUID", "") or "")
    if not value and getattr(ds, "file_meta", None) is not None:
        value = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return value


def _referenced_series(ds: pydicom.Dataset) -> str | None:
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for study in frame.get("RTReferencedStudySequence", []) or []:
            for series in study.get("RTReferencedSeriesSequence", []) or []:
                uid = str(series.get("SeriesInstanceUID", "") or "")
                if uid:
                    return uid
    return None


def _stop_after_series_uid(tag, vr, length) -> bool:
    return tag > _SERIES_UID_TAG


def scan_one(path: Path) -> tuple[str, object]:
    """One file's kind (ct, rtstruct, other, unreadable) and what scanning keeps of it."""
    try:
        # Scanning stops after SeriesInstanceUID (0020,000E): for a CT file the rest of the
        # header is not needed here, and skipping it made scanning ~1.5x faster.
        with open(path, "rb") as handle:
            ds = read_partial(handle, stop_when=_stop_after_series_uid, specific_tags=_SCAN_TAG_NUMBERS)
    except InvalidDicomError:
        try:
            ds = read_header(path, _SCAN_TAGS, stop_before_pixels=True)  # no preamble: raw data set
        except Exception as exc:  # pydicom raises many types for a broken file
            return "unreadable", f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        return "unreadable", f"{type(exc).__name__}: {exc}"
    if len(ds) == 0:
        return "unreadable", "no data set after the file meta information (truncated?)"
    kind = sop_class(ds)
    if kind == RTStructureSetStorage:  # its referenced series lies beyond the stop
        try:
            ds = read_header(path, _SCAN_TAGS, stop_before_pixels=True)
        except Exception as exc:
            return "unreadable", f"{type(exc).__name__}: {exc}"
    patient = str(ds.get("PatientID", "") or "")
    if not kind:
        return "unreadable", "DICOM header without a SOP Class UID (truncated?)"
    if kind == CTImageStorage:
        return "ct", (str(ds.get("SeriesInstanceUID", "") or ""), patient)
    if kind == RTStructureSetStorage:
        return "rtstruct", (_referenced_series(ds), patient)
    return "other", kind


def scan_dicom_folder(root: Path) -> DicomInventory:
    """Find the CT series and RTSTRUCTs under ``root`` (any layout; headers only).

    Files that are not DICOM or cannot be parsed are listed in ``unreadable``;
    DICOM objects of other kinds (SEG, SR, DICOMDIR, ...) are listed in ``others`` with their SOP class.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(root, "DICOM folder not found")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    # Serial: parsing holds the GIL, and a thread pool measured 2-2.5x slower on hot files.
    results = [scan_one(path) for path in paths]
    groups: dict[str, list[tuple[Path, str]]] = {}
    rtstructs: list[RtStructFile] = []
    unreadable: list[tuple[Path, str]] = []
    others: list[tuple[Path, str]] = []
    for path, (kind, info) in zip(paths, results):
        if kind == "unreadable":
            unreadable.append((path, str(info)))
        elif kind == "ct":
            uid, patient = info  # type: ignore[misc]
            if not uid:
                uid = f"no-series-uid:{path.parent.relative_to(root).as_posix()}"
            groups.setdefault(uid, []).append((path, patient))
        elif kind == "rtstruct":
            ref, patient = info  # type: ignore[misc]
            rtstructs.append(RtStructFile(path=path, referenced_series_uid=ref, patient_id=patient))
        else:
            others.append((path, str(info)))
    series = {}
    for uid, members in sorted(groups.items()):
        patients = sorted({p for _, p in members if p})
        series[uid] = SeriesFiles(series_uid=uid, patient_id=patients[0] if patients else "",
                                  files=tuple(p for p, _ in members))
    return DicomInventory(series=series, rtstructs=tuple(rtstructs), unreadable=tuple(unreadable),
                          others=tuple(others))
