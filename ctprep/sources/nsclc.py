"""NSCLC-Radiomics (Lung1): a CT series per patient and the RTSTRUCT that refers to it.

Cases are found as every DICOM source finds them (ctprep.sources.dicom_source:
patient folder ``LUNG1-xxx`` = case id, RTSTRUCT paired by the SeriesInstanceUID
it refers to). Loading reads the series (ctprep.formats.dicom), rasterises the chosen
ROIs with rt-utils (ctprep.formats.rtstruct, which validates what rt-utils would get
wrong) and moves the masks onto the canonical grid exactly as the HU.

Labels (options ``gtvs`` and ``rois``, the ``--gtvs`` and ``--roi`` flags):

* The **tumour ROIs** are, by default, the numbered GTVs of the RTSTRUCT
  (``GTV-1``, ``GTV-2``, ...; :func:`ctprep.formats.rtstruct.find_gtvs`), else GTV-1
  or one of its aliases (``tumour_roi`` in data_manifests/nsclc.json). A
  ``--roi NAME`` (no ``=LABEL``, or ``=tumour``) replaces them by the ROIs named.
* ``--gtvs merge``: label ``tumour`` = union of the tumour ROIs; ``separate``:
  one label per tumour ROI, ``gtv_<n>`` for GTV number n (an alias counts as 1;
  another ROI gets ``roi_<name>``); ``both`` (default): all of these.
* ``--roi NAME=LABEL`` adds label ``LABEL``, the union of the ROIs mapped to it
  (``--roi Lung-Left=lungs --roi Lung-Right=lungs``).

ROI names match case-insensitively, ignoring spaces, ``_`` and ``-``
(:func:`ctprep.formats.rtstruct.match_roi`); a missing or empty ROI fails the case.
The case's annotations record which ROI went into which label.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from ctprep.case import CaseRef, CaseVolume, LabelSpec
from ctprep.datasets import MANIFEST_DIR, DatasetManifest
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.formats.dicom import CtSeries
from ctprep.sources.dicom_source import (ROLE_CT, case_ref, Annotation, HashInBackground,
                                         file_input, find_cases, patient_of, relative, series_input,
                                         union_slices)
from ctprep.sources.dicom_stream import HeadersFirstSource
from lkbase.errors import ParameterError

ROLE_RTSTRUCT = "rtstruct"
GTV_MODES = ("merge", "separate", "both")
_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_RESERVED = re.compile(r"gtv_[0-9]+|roi_.*")
_GTV_NUMBER = re.compile(r"gtv0*([1-9][0-9]*)")


def parse_roi_option(value: str) -> tuple[str, str | None]:
    """``"Lung-Left=lungs"`` -> ("Lung-Left", "lungs"); ``"GTV-1"`` -> ("GTV-1", None)."""
    name, sep, label = str(value).rpartition("=") if "=" in str(value) else (str(value), "", "")
    name, label = name.strip(), label.strip()
    if not name or (sep and not label):
        raise ParameterError(f"--roi {value!r}: expected ROI or ROI=LABEL")
    if sep and not _LABEL_NAME.fullmatch(label):
        raise ParameterError(f"--roi {value!r}: label {label!r} must be letters, digits, '_', '-' or '.'")
    if sep and _RESERVED.fullmatch(label):
        raise ParameterError(f"--roi {value!r}: label names gtv_N and roi_* are reserved for the tumour ROIs")
    return name, (label or None)


class NsclcSource(HeadersFirstSource):
    name = "nsclc"
    description = ("NSCLC-Radiomics: <patient>/<study>/<series>/*.dcm, a CT series and the RTSTRUCT that "
                   "refers to it per patient folder LUNG1-xxx")
    options_help = {
        "rois": "RTSTRUCT ROIs to rasterise, 'ROI' (a tumour ROI, replacing the GTVs) or 'ROI=LABEL' (an extra label)",
        "gtvs": "merge (label tumour), separate (gtv_1, gtv_2, ...) or both (default)",
    }
    annotation_role = ROLE_RTSTRUCT
    annotation_verb = "refers to"
    annotation_kind = "RTSTRUCT"
    patient_pattern = re.compile(r"LUNG1-[0-9]{3}")

    def __init__(self, manifest: DatasetManifest | None = None, options: Mapping[str, Any] | None = None):
        super().__init__(manifest, options)
        gtvs = self.options.get("gtvs") or "both"
        if gtvs not in GTV_MODES:
            raise ParameterError(f"gtvs must be one of {', '.join(GTV_MODES)}, found {gtvs!r}")
        self.gtvs = gtvs
        rois = self.options.get("rois") or []
        self.rois = [parse_roi_option(r) for r in ([rois] if isinstance(rois, str) else rois)]
        tumour = _tumour_roi_settings(self.manifest.name)
        self.default_roi = str(tumour.get("name", "GTV-1"))
        self.default_aliases = tuple(str(a) for a in tumour.get("aliases", ()))

    # ---- discover ----------------------------------------------------------------------------
    def discover(self, root: Path) -> list[CaseRef]:
        from ctprep.formats.dicom_scan import scan_dicom_folder

        root = Path(root)
        inventory = scan_dicom_folder(root)
        annotations = [Annotation(path=rt.path, series_uid=rt.referenced_series_uid,
                                  patient_id=patient_of(rt.path, root, self.patient_pattern, rt.patient_id))
                       for rt in inventory.rtstructs]
        refs = []
        for case in find_cases(root, inventory, annotations, self.patient_pattern):
            refs.append(case_ref(self.name, case, root, [(ROLE_RTSTRUCT, a.path) for a in case.annotations]))
        return refs

    # ---- load ----------------------------------------------------------------------------------
    def _case(self, ref: CaseRef, pixels: bool) -> tuple[CaseVolume, CtSeries, HashInBackground]:
        from ctprep.formats.dicom import read_ct_series
        from ctprep.formats.rtstruct import rasterise_rois, roi_names, shown_rois

        self.check_unreadable(ref)
        ct_files, rtstruct = self._inputs(ref)
        root = Path(ref.root)
        hashing = HashInBackground(lambda: (series_input(ROLE_CT, ct_files, root),
                                            file_input(ROLE_RTSTRUCT, rtstruct, root)))
        try:
            available = roi_names(rtstruct)
            plan = self.label_plan(available, rtstruct)
            ct = read_ct_series(ct_files, pixels=pixels)
            wanted = list(dict.fromkeys(roi for rois in plan.values() for roi in rois))
            masks = rasterise_rois(ct.files, rtstruct, wanted, headers=ct.headers)
        except BaseException:
            hashing.cancel()
            raise
        labels = {label: union_slices([masks[roi] for roi in rois], ct) for label, rois in plan.items()}
        specs = tuple(self._spec(label, rois) for label, rois in plan.items())
        annotations = {
            "rtstruct": {"rois": shown_rois(available, wanted), "labels": {label: list(rois) for label, rois in plan.items()}},
            "ct": ct_annotations(ct, len(ct_files)),
        }
        volume = CaseVolume(ref=ref, hu=ct.hu, labels=labels, label_specs=specs, geometry=ct.geometry,
                            source_grid=ct.source_grid, annotations=annotations)
        return volume, ct, hashing

    def _inputs(self, ref: CaseRef) -> tuple[list[Path], Path]:
        ct_files, rtstructs = ref.paths(ROLE_CT), ref.paths(ROLE_RTSTRUCT)
        if not ct_files:
            raise MissingInputError(rtstructs[0] if rtstructs else ref.root,
                                    "the CT series this RTSTRUCT refers to is not in the input folder")
        if not rtstructs:
            raise MissingInputError(ct_files[0].parent, f"no RTSTRUCT refers to this CT series ({len(ct_files)} "
                                                        "files), so the case has no segmentation")
        if len(rtstructs) > 1:
            names = ", ".join(relative(p, Path(ref.root)) for p in rtstructs)
            raise CaseInputError(rtstructs[0], f"{len(rtstructs)} RTSTRUCTs refer to the same CT series ({names}); "
                                               "expected one (remove the others or convert with --cases)")
        return ct_files, rtstructs[0]

    def label_plan(self, available: list[str], rtstruct: Path) -> dict[str, list[str]]:
        """Label name -> the ROI names (as written in the RTSTRUCT) whose union it is."""
        from ctprep.formats.rtstruct import find_gtvs, match_roi, shown_rois

        def need(wanted: str, aliases=()) -> str:
            found = match_roi(available, wanted, aliases, path=rtstruct)
            if found is None:
                raise CaseInputError(rtstruct, f"no ROI named {wanted!r}"
                                               + (f" (or {', '.join(map(repr, aliases))})" if aliases else "")
                                               + f"; available ROIs: {shown_rois(available, find_gtvs(available))}")
            return found

        asked = [roi for roi, label in self.rois if label in (None, "tumour")]
        if asked:
            tumour = [(need(roi), _gtv_number(roi)) for roi in asked]
        else:
            tumour = [(roi, _gtv_number(roi)) for roi in find_gtvs(available)]
            if not tumour:
                tumour = [(need(self.default_roi, self.default_aliases), 1)]
        plan: dict[str, list[str]] = {}
        if self.gtvs in ("merge", "both"):
            plan["tumour"] = list(dict.fromkeys(roi for roi, _ in tumour))
        if self.gtvs in ("separate", "both"):
            for roi, number in tumour:
                plan.setdefault(f"gtv_{number}" if number else _roi_label(roi), []).append(roi)
        for roi, label in self.rois:
            if label not in (None, "tumour"):
                found = need(roi)
                if found not in plan.setdefault(label, []):
                    plan[label].append(found)
        return plan

    def _spec(self, label: str, rois: list[str]) -> LabelSpec:
        if label == "tumour":
            text = "union of the tumour ROIs (the gross tumour volumes GTV-1, GTV-2, ... unless --roi chose others)"
        elif label.startswith("gtv_"):
            text = f"gross tumour volume number {label[4:]} alone"
        elif label.startswith("roi_"):
            text = "one tumour ROI chosen with --roi, alone"
        else:
            text = "ROI(s) mapped to this label with --roi NAME=" + label
        return LabelSpec(name=label, values=(1,), description=text)

    def annotation_problem(self, path: Path) -> str | None:
        from ctprep.formats.rtstruct import roi_names

        try:
            roi_names(path)
        except CaseInputError as exc:
            return str(exc)
        return None


def ct_annotations(ct, n_files: int) -> dict:
    """What a case records about its CT series: counts, the allowlisted technical attributes, what was done."""
    return {"files": n_files, "slices": len(ct.native_sop_uids), "technical": dict(ct.technical),
            "notes": list(ct.notes)}


def _gtv_number(name: str) -> int | None:
    m = _GTV_NUMBER.fullmatch(re.sub(r"[\s_\-]+", "", name).casefold())
    return int(m.group(1)) if m else None


def _roi_label(name: str) -> str:
    return "roi_" + (re.sub(r"[^a-z0-9]+", "_", name.casefold()).strip("_") or "unnamed")


def _tumour_roi_settings(name: str) -> dict:
    """The manifest's ``tumour_roi`` block (default ROI and aliases), read from its JSON."""
    try:
        return dict(json.loads((MANIFEST_DIR / f"{name}.json").read_text()).get("tumour_roi") or {})
    except (OSError, ValueError):
        return {}
