"""Your own DICOM data: any folder of CT series, each with an optional RTSTRUCT or DICOM SEG.

``ctprep convert --source dicom --input FOLDER`` (any layout; file names mean nothing):

* **Cases**: one per CT series (SeriesInstanceUID), found by ctprep.formats.dicom_scan. An
  RTSTRUCT or SEG is paired with the series it refers to (as ctprep.sources.dicom_source pairs
  them; one without a referenced series goes to its patient's only series); one whose series is
  absent is reported and skipped. A series with no annotation is a **CT-only** case: no labels,
  so only ``--slices all`` can store it (other modes skip it with one line).
* **Labels**: ``--roi NAME=LABEL`` maps RTSTRUCT ROIs or SEG segment labels (matched as
  ctprep.formats.rtstruct.match_roi matches: case, spaces, ``_``/``-`` ignored) to label
  ``LABEL`` (the union of those mapped to it); ``--roi NAME`` maps to ``tumour``. Without
  ``--roi``: an RTSTRUCT's numbered GTVs, a SEG's segments, united as ``tumour``. A missing
  ROI/segment fails the case with one line listing what the file holds.
* **Case ids and privacy**: the patient key is the header's PatientID, else the first folder
  below the input; keys go through the NIfTI source's rule
  (:func:`ctprep.sources.nifti_generic.safe_case_ids`: kept only when clearly non-identifying,
  else ``case-h<12 hex of sha256>``). A patient's second series is ``<id>_2`` (SeriesInstanceUID
  order). For hashed ids the recorded input paths become ``<case id>/<role>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ctprep.case import CaseRef, CaseVolume, InputFile, LabelSpec
from ctprep.datasets import DatasetManifest
from ctprep.errors import CaseInputError
from ctprep.formats.dicom import CtSeries
from ctprep.lookup import LazySlices
from ctprep.sources.base import Source
from ctprep.sources.dicom_source import (ROLE_CT, ROLE_UNREADABLE, case_ref, Annotation, FoundCase,
                                         HashInBackground, _numbered, _pair, file_input, looks_like_dicom,
                                         series_input, union_slices)
from ctprep.sources.dicom_stream import HeadersFirstSource
from ctprep.sources.nifti_generic import _HASHED, safe_case_ids
from ctprep.sources.nsclc import ct_annotations, parse_roi_option

ROLE_RTSTRUCT = "rtstruct"
ROLE_SEG = "seg"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _manifest(labels: tuple[str, ...]) -> DatasetManifest:
    specs = tuple(LabelSpec(name=n, values=(1,), description=("the tumour ROIs/segments" if n == "tumour" else
                                                               f"ROIs/segments mapped with --roi NAME={n}"))
                  for n in labels)
    return DatasetManifest(name="dicom", title="own DICOM data", case_ids=(), label_values={0: "outside", 1: "inside"},
                           labels=specs, lesion_label="tumour" if "tumour" in labels else (labels[0] if labels else None),
                           default_windows=("abdomen",), lesion_window=None, official_split=None, quirks=(), citation="",
                           licence="",
                           url="")


class DicomGenericSource(HeadersFirstSource):
    name = "dicom"
    description = "own DICOM data: any folder of CT series, each with an optional RTSTRUCT or DICOM SEG"
    options_help = {"rois": "'NAME=LABEL' maps RTSTRUCT ROIs / SEG segments to labels; 'NAME' maps to tumour"}
    annotation_role = ROLE_RTSTRUCT
    annotation_kind = "RTSTRUCT or SEG"
    annotation_verb = "refers to"
    patient_pattern = re.compile(r"(?!)")  # unused: ids come from safe_case_ids

    def __init__(self, manifest: DatasetManifest | None = None, options: Mapping[str, Any] | None = None):
        rois = (options or {}).get("rois") or []
        parsed = [parse_roi_option(r) for r in ([rois] if isinstance(rois, str) else rois)]
        labels = tuple(dict.fromkeys(label or "tumour" for _, label in parsed)) or ("tumour",)
        Source.__init__(self, manifest or _manifest(labels), options)
        self.rois = parsed

    # ---- discover ----------------------------------------------------------------------------
    def discover(self, root: Path) -> list[CaseRef]:
        from ctprep.formats.dicom_scan import read_header, scan_dicom_folder

        root = Path(root)
        inventory = scan_dicom_folder(root)
        keys = {uid: s.patient_id or _first_folder(s.files[0], root) for uid, s in inventory.series.items()}
        raw = [(ROLE_RTSTRUCT, rt.path, rt.referenced_series_uid, rt.patient_id) for rt in inventory.rtstructs]
        for path, kind in inventory.others:
            if kind == SEG_SOP_CLASS:
                ds = read_header(path, ["ReferencedSeriesSequence", "PatientID"], stop_before_pixels=True)
                refs = ds.get("ReferencedSeriesSequence") or []
                raw.append((ROLE_SEG, path, str(refs[0].SeriesInstanceUID) if refs else None,
                            str(ds.get("PatientID", "") or "")))
        all_keys = sorted(set(keys.values()) | {pid or _first_folder(p, root) for _, p, _, pid in raw})
        ids = safe_case_ids(all_keys, set(re.split(r"[^a-z]+", root.name.lower())))
        roles = {path: role for role, path, _, _ in raw}
        annotations = [Annotation(path=p, series_uid=uid, patient_id=ids[pid or _first_folder(p, root)])
                       for _, p, uid, pid in raw]
        by_patient: dict[str, list[str]] = {}
        for uid, key in keys.items():
            by_patient.setdefault(ids[key], []).append(uid)
        paired, orphans = _pair(annotations, inventory.series, by_patient)
        unreadable = [p for p, _ in inventory.unreadable if looks_like_dicom(p)]
        found: dict[str, list[tuple[str, FoundCase]]] = {}
        for uid, key in keys.items():
            files = inventory.series[uid].files
            folders = {f.parent for f in files}
            found.setdefault(ids[key], []).append((uid, FoundCase(
                case_id="", patient_id=ids[key], series_uid=uid, ct_files=files,
                annotations=tuple(sorted(paired.get(uid, ()), key=lambda a: a.path)),
                unreadable=tuple(sorted(p for p in unreadable if p.parent in folders)))))
        for (patient, uid), anns in orphans.items():
            found.setdefault(patient, []).append((f"~{anns[0].path}", FoundCase(
                case_id="", patient_id=patient, series_uid=uid, ct_files=(), annotations=tuple(anns), unreadable=())))
        refs = []
        for case in _numbered(found):
            refs.append(case_ref(self.name, case, root, [(roles[a.path], a.path) for a in case.annotations]))
        return refs

    # ---- load --------------------------------------------------------------------------------
    def _case(self, ref: CaseRef, pixels: bool) -> tuple[CaseVolume, CtSeries, HashInBackground]:
        from ctprep.formats.dicom import read_ct_series

        self.check_unreadable(ref)
        root = Path(ref.root)
        ct_files, annotations = ref.paths(ROLE_CT), ref.paths(ROLE_RTSTRUCT) + ref.paths(ROLE_SEG)
        if not ct_files:
            raise CaseInputError(annotations[0], "the CT series it refers to is not in the input folder")
        if len(annotations) > 1:
            raise CaseInputError(annotations[0], f"{len(annotations)} RTSTRUCT/SEG files refer to the same CT "
                                                 "series; expected at most one (convert with --cases or remove)")
        hashing = HashInBackground(lambda: _public_inputs(ref, (series_input(ROLE_CT, ct_files, root),) + tuple(
            file_input(self._role(ref, a), a, root) for a in annotations)))
        try:
            ct = read_ct_series(ct_files, irregular="resample", pixels=pixels)
            labels, record = self._labels(ref, ct, annotations[0]) if annotations else ({}, {})
        except BaseException:
            hashing.cancel()
            raise
        specs = tuple(s for s in self.manifest.labels if s.name in labels)
        volume = CaseVolume(ref=ref, hu=ct.hu, labels=labels, label_specs=specs, geometry=ct.geometry,
                            source_grid=ct.source_grid, annotations={"ct": ct_annotations(ct, len(ct_files)), **record})
        return volume, ct, hashing

    @staticmethod
    def _role(ref: CaseRef, path: Path) -> str:
        return ROLE_SEG if path in ref.paths(ROLE_SEG) else ROLE_RTSTRUCT

    def _labels(self, ref: CaseRef, ct: CtSeries, path: Path) -> tuple[dict[str, np.ndarray | LazySlices], dict]:
        """Canonical uint8 labels from the case's RTSTRUCT (rasterised on the series' plan, each label
        made slice by slice: ``union_slices``) or SEG (highdicom's whole masks), and what was done."""
        kind = self._role(ref, path)
        if kind == ROLE_SEG:
            from ctprep.formats.dicom_outputs import read_seg_masks

            native = {name: m.astype(np.uint8) for name, m in read_seg_masks(path, ct.files).items()}
            names, default = list(native), list(native)

            def union(members: list[str]) -> np.ndarray:
                return ct.to_canonical(np.maximum.reduce([native[m] for m in members]))
        else:
            from ctprep.formats.rtstruct import find_gtvs, rasterise_rois, roi_names

            available = roi_names(path)
            default = list(find_gtvs(available))
            names = [self._match(available, roi, path) for roi, _ in self.rois] or default
            per_uid = rasterise_rois(ct.files, path, names, headers=ct.headers) if names else {}

            def union(members: list[str]) -> np.ndarray | LazySlices:
                return union_slices([per_uid[m] for m in members], ct)
        plan: dict[str, list[str]] = {}
        for roi, label in self.rois:
            plan.setdefault(label or "tumour", []).append(self._match(names, roi, path))
        if not self.rois:
            if not default:
                raise CaseInputError(path, f"no GTV ROI to use as tumour; map ROIs with --roi NAME=LABEL "
                                           f"(it holds: {names or roi_names(path)})")
            plan["tumour"] = default
        return {label: union(members) for label, members in plan.items()}, {kind: {"labels": plan}}

    @staticmethod
    def _match(available: list[str], wanted: str, path: Path) -> str:
        from ctprep.formats.rtstruct import match_roi

        found = match_roi(available, wanted, (), path=path)
        if found is None:
            raise CaseInputError(path, f"no ROI or segment named {wanted!r}; it holds: {available}")
        return found

    def header_problem(self, ref: CaseRef) -> str | None:
        for path in ref.paths(ROLE_UNREADABLE):
            return f"{path}: unreadable DICOM file"
        if not ref.paths(ROLE_CT):
            return f"{(ref.paths(ROLE_RTSTRUCT) + ref.paths(ROLE_SEG))[0]}: the CT series it refers to is absent"
        return None


def _public_inputs(ref: CaseRef, inputs: tuple[InputFile, ...]) -> tuple[InputFile, ...]:
    """``inputs`` as recorded: under a hashed case id, which hides the folder names, so must their paths."""
    if not ref.case_id.startswith(_HASHED):
        return inputs
    return tuple(InputFile(role=f.role, path=f"{ref.case_id}/{f.role}", size=f.size, sha256=f.sha256) for f in inputs)


def _first_folder(path: Path, root: Path) -> str:
    parts = Path(path).relative_to(root).parts
    return parts[0] if len(parts) > 1 else root.name

