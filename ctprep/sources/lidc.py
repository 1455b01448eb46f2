"""LIDC-IDRI: CT series with up to four radiologists' nodule outlines in an XML beside them.

Cases are found as every DICOM source finds them (ctprep.sources.dicom_source):
the XML (root ``LidcReadMessage``; chest-radiograph XMLs, root
``IdriReadMessage``, are ignored) is paired with the CT series its
ResponseHeader's SeriesInstanceUid names. A patient with several CT scans
gets the case ids ``LIDC-IDRI-0001``, ``LIDC-IDRI-0001_2``, ... in
SeriesInstanceUID order (all in the patient's split). When several XMLs name
one series (the resubmitted XML of LIDC-IDRI-0161), the one with the latest
ResponseHeader DateService/TimeService is used (then the last by path), and
the others are listed in the case's annotations as superseded.

Loading parses the XML (ctprep.formats.lidc_xml), rasterises every reader's nodules >= 3 mm
on the native slices (outline pixels are not nodule, ``inclusion=FALSE``
outlines cut holes), groups the readers' outlines of one physical nodule
(overlap, else centroid distance: ctprep.formats.lidc_readers.group_nodules) and stores:

* ``nodule_reader_1..4``: each reading session's nodules (session order;
  sessions are not linked to radiologists across scans), empty when absent;
  ``nodule_reader_5``... only for an XML with more sessions;
* ``nodule_any``: union of all readers (consensus level 0);
* ``nodule_consensus_50`` / ``_75``: per nodule group, the voxels at least
  ``ceil(p * n)`` of the group's n readers marked; union over groups
  (``nodule_consensus_50`` is the lesion label);
* ``nodule_all``: per group, the intersection of its readers' masks.

Annotations (JSON in the case record; positions are canonical-grid indices,
``z`` a slice of ``record.canonical_geometry``, plus LPS millimetres):
``nodules`` (one per group: readers, their nodule ids, characteristics, voxel
counts, centroid, diameter, slice range), ``small_nodules`` and
``non_nodules`` (marks, never masks: reader, id, ``z``/``y``/``x``, ``z_mm``;
``z`` is null for a mark on no slice of the series).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
import numpy as np

from ctprep.case import CaseRef, CaseVolume, LabelSpec
from ctprep.errors import CaseInputError, MissingInputError
from ctprep.formats.dicom import CtSeries
from ctprep.public_paths import public_path
from ctprep.sources.dicom_source import (ROLE_CT, case_ref, Annotation, HashInBackground,
                                         file_input, find_cases, patient_of, relative, series_input)
from ctprep.sources.dicom_stream import HeadersFirstSource
from ctprep.sources.nsclc import ct_annotations

ROLE_XML = "xml"
ROLE_SUPERSEDED = "xml_superseded"
READERS = 4
CONSENSUS_LABELS = (("nodule_consensus_50", 0.5), ("nodule_consensus_75", 0.75))


def xml_header(path: Path) -> tuple[str, str | None, tuple[str, str]] | None:
    """(kind, SeriesInstanceUid, (DateService, TimeService)) from an XML's header; None if not an LIDC CT XML.

    ``kind`` is ``"ct"`` for a ``LidcReadMessage`` and ``"malformed"`` for an XML that does not
    parse (kept, so that its case reports it). Reads only up to the first reading session.
    """
    from ctprep.formats.lidc_xml import _local  # one rule for tag spellings (namespace, case)

    found: dict[str, str] = {}
    root_tag = None
    try:
        for event, element in ET.iterparse(path, events=("start", "end")):
            tag = _local(element.tag)
            if root_tag is None:
                root_tag = tag
                if tag != "lidcreadmessage":
                    return None
            elif event == "start" and tag == "readingsession":
                break
            elif event == "end" and tag == "responseheader":
                break
            elif event == "end" and tag in ("seriesinstanceuid", "dateservice", "timeservice") and element.text:
                found.setdefault(tag, element.text.strip())
    except (ET.ParseError, OSError):
        return ("malformed", None, ("", ""))
    if root_tag != "lidcreadmessage":
        return None
    return ("ct", found.get("seriesinstanceuid"), (found.get("dateservice", ""), found.get("timeservice", "")))


class LidcSource(HeadersFirstSource):
    name = "lidc"
    description = ("LIDC-IDRI: LIDC-IDRI-NNNN/<study>/<series>/*.dcm with the readers' XML (LidcReadMessage) "
                   "naming the CT series")
    annotation_role = ROLE_XML
    annotation_verb = "names"
    annotation_kind = "LIDC XML"
    patient_pattern = re.compile(r"LIDC-IDRI-[0-9]{4}")

    # ---- discover ----------------------------------------------------------------------------
    def discover(self, root: Path) -> list[CaseRef]:
        from ctprep.formats.dicom_scan import scan_dicom_folder

        root = Path(root)
        inventory = scan_dicom_folder(root)
        stamps: dict[Path, tuple[str, str]] = {}
        annotations = []
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() == ".xml" and p.is_file()):
            header = xml_header(path)
            if header is None:
                continue
            _, uid, stamps[path] = header
            annotations.append(Annotation(path=path, series_uid=uid,
                                          patient_id=patient_of(path, root, self.patient_pattern)))
        refs = []
        for case in find_cases(root, inventory, annotations, self.patient_pattern):
            ranked = sorted(case.annotations, key=lambda a: (stamps[a.path], str(a.path)), reverse=True)
            annotations = [(ROLE_SUPERSEDED, a.path) for a in ranked[1:]] + [(ROLE_XML, a.path) for a in ranked[:1]]
            refs.append(case_ref(self.name, case, root, annotations))
        return refs

    # ---- load --------------------------------------------------------------------------------
    def _case(self, ref: CaseRef, pixels: bool) -> tuple[CaseVolume, CtSeries, HashInBackground]:
        from ctprep.formats.dicom import read_ct_series
        from ctprep.formats.lidc_readers import group_nodules, reader_masks
        from ctprep.formats.lidc_xml import parse_lidc_xml

        self.check_unreadable(ref)
        ct_files, xml = self._inputs(ref)
        root = Path(ref.root)
        hashing = HashInBackground(lambda: (series_input(ROLE_CT, ct_files, root), file_input(ROLE_XML, xml, root)))
        try:
            ann = parse_lidc_xml(xml)
            ct = read_ct_series(ct_files, pixels=pixels)
            masks = reader_masks(ann, ct.native_sop_uids, ct.native_z_mm, ct.native_shape)
            spacing = tuple(float(v) for v in ct.technical.get("PixelSpacing", (1.0, 1.0)))
            groups = group_nodules(masks, ct.native_z_mm, spacing)  # type: ignore[arg-type]
        except BaseException:
            hashing.cancel()
            raise
        readers = max(READERS, len(ann.sessions))
        slabs = {key: _slab(mask) for key, mask in masks.items()}
        native = _native_labels(masks, slabs, groups, readers, ct.native_shape)
        labels = {name: ct.to_canonical(volume) for name, volume in native.items()}
        specs = self._specs(readers)
        mapper = CanonicalMapper(ct)
        annotations = {
            "lidc": {"reading_sessions": len(ann.sessions),
                     # ids not of the real XMLs' form (hashed) and characteristics outside the schema (dropped)
                     "replaced_values": ann.replaced_values,
                     "superseded_xml": [public_path(relative(p, root)) for p in ref.paths(ROLE_SUPERSEDED)]},
            "nodules": [_group_record(g, _keyed_nodules(ann), masks, slabs, mapper) for g in groups],
            **_point_records(ann, ct, mapper),
            "ct": ct_annotations(ct, len(ct_files)),
        }
        volume = CaseVolume(ref=ref, hu=ct.hu, labels=labels, label_specs=specs, geometry=ct.geometry,
                            source_grid=ct.source_grid, annotations=annotations)
        return volume, ct, hashing

    def _inputs(self, ref: CaseRef) -> tuple[list[Path], Path]:
        ct_files, xmls = ref.paths(ROLE_CT), ref.paths(ROLE_XML)
        if not ct_files:
            raise MissingInputError(xmls[0] if xmls else ref.root,
                                    "the CT series this XML names (ResponseHeader SeriesInstanceUid) is not in "
                                    "the input folder")
        if not xmls:
            raise MissingInputError(ct_files[0].parent, f"no LIDC XML names this CT series ({len(ct_files)} files), "
                                                        "so the case has no reader annotations")
        return ct_files, xmls[0]

    def _specs(self, readers: int) -> tuple[LabelSpec, ...]:
        """The manifest's labels, plus nodule_reader_5... for an XML with more than four sessions."""
        specs = list(self.manifest.labels)
        after = next(i for i, s in enumerate(specs) if s.name == f"nodule_reader_{READERS}") + 1
        extra = [LabelSpec(name=f"nodule_reader_{k}", values=(1,),
                           description=f"as nodule_reader_1, reading session {k} of an XML with more than {READERS}")
                 for k in range(READERS + 1, readers + 1)]
        return tuple(specs[:after] + extra + specs[after:])

    def adapt_annotations(self, annotations, *, before, after, rows):
        """Positions onto the stored case: grid ``before`` -> resampled grid ``after``, z -> stored row."""
        return adapt_positions(annotations, before=before, after=after, rows=rows)

    def annotation_problem(self, path: Path) -> str | None:
        """The XML parses completely as an LIDC CT read message (no masks are drawn)."""
        from ctprep.formats.lidc_xml import parse_lidc_xml

        try:
            parse_lidc_xml(path)
        except CaseInputError as exc:
            return str(exc)
        return None


# --------------------------------------------------------------------------- labels


def _slab(mask: np.ndarray) -> slice | None:
    """The native slices a mask touches (a slice range), or None when it is empty."""
    touched = np.flatnonzero(mask.any(axis=(1, 2)))
    return slice(int(touched[0]), int(touched[-1]) + 1) if touched.size else None


def _native_labels(masks, slabs, groups, readers: int, shape) -> dict[str, np.ndarray]:
    """Every label in the native layout. Volumes are written only where nodules are (np.zeros pages
    that are never written cost no memory), and consensus is computed on each group's slab."""
    from ctprep.formats.lidc_readers import consensus, intersection

    out = {f"nodule_reader_{k}": np.zeros(shape, dtype=np.uint8) for k in range(1, readers + 1)}
    out["nodule_any"] = np.zeros(shape, dtype=np.uint8)
    for (reader, _), mask in masks.items():
        s = slabs[(reader, _)]
        if s is not None:
            for name in (f"nodule_reader_{reader + 1}", "nodule_any"):
                np.maximum(out[name][s], mask[s], out=out[name][s])
    rules = [(name, lambda parts, level=level: consensus(parts, level)) for name, level in CONSENSUS_LABELS]
    rules.append(("nodule_all", intersection))
    for name, rule in rules:
        volume = np.zeros(shape, dtype=np.uint8)
        for group in groups:
            members = [m for m in group.members if slabs[m] is not None]
            if not members:
                continue
            s = slice(min(slabs[m].start for m in members), max(slabs[m].stop for m in members))
            part = rule([masks[m][s] for m in group.members])
            np.maximum(volume[s], part, out=volume[s])
        out[name] = volume
    return out


# --------------------------------------------------------------------------- annotations


class CanonicalMapper:
    """Native (slice, row, col) positions of a series -> canonical (z, y, x) indices and LPS mm.

    Uses the series' regular grid (``source_grid.affine_ras``) with the slice's position
    along the normal, so it also holds after irregular spacing was resampled; the in-plane
    shift of gantry-tilted series is not applied (marks there are off by that shift).
    """

    def __init__(self, ct):
        affine_ras = np.asarray(ct.source_grid.affine_ras, dtype=np.float64).reshape(4, 4)
        self.native_z = np.asarray(ct.native_z_mm, dtype=np.float64)
        self.step = float(np.linalg.norm(affine_ras[:3, 2]))
        self.lps_from_source = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
        self.canonical_from_lps = np.linalg.inv(ct.geometry.affine_lps())

    def map(self, slice_index: float, row: float, col: float) -> tuple[list[float], list[float]]:
        """(canonical [z, y, x] as floats, LPS [x, y, z] mm) of a native position (fractional allowed)."""
        z_mm = float(np.interp(slice_index, np.arange(self.native_z.size), self.native_z))
        k = (z_mm - self.native_z[0]) / self.step
        lps = self.lps_from_source @ np.array([col, row, k, 1.0])
        xyz = self.canonical_from_lps @ lps
        return [float(xyz[2]), float(xyz[1]), float(xyz[0])], [float(v) for v in lps[:3]]


def _keyed_nodules(ann) -> dict:
    """(reader_index, nodule id) -> Nodule, with ctprep.formats.lidc_readers.reader_masks' suffix for a reused id."""
    out: dict = {}
    for reader, nodule in ann.nodules:
        key = (reader, nodule.nodule_id)
        if key in out:
            suffix = 2
            while (reader, f"{nodule.nodule_id}#{suffix}") in out:
                suffix += 1
            key = (reader, f"{nodule.nodule_id}#{suffix}")
        out[key] = nodule
    return out


def _group_record(group, nodules: dict, masks, slabs, mapper: CanonicalMapper) -> dict:
    readers = [reader + 1 for reader, _ in group.members]
    record: dict = {
        "nodule": group.group_id + 1,
        "n_readers": group.n_readers,
        "readers": readers,
        "reader_nodule_ids": {str(reader + 1): nid for reader, nid in group.members},
        "characteristics": {str(reader + 1): dict(nodules[(reader, nid)].characteristics)
                            for reader, nid in group.members if (reader, nid) in nodules},
        "voxels": {str(reader + 1): int(np.count_nonzero(masks[(reader, nid)][slabs[(reader, nid)]]))
                   if slabs[(reader, nid)] is not None else 0 for reader, nid in group.members},
        "diameter_mm": round(float(group.diameter_mm), 3),
    }
    centroid = group.centroid_voxel
    if all(np.isfinite(centroid)):
        zyx, lps = mapper.map(*centroid)
        record["centroid_zyx"] = [round(v, 3) for v in zyx]
        record["centroid_lps_mm"] = [round(v, 3) for v in lps]
        ends = [mapper.map(s, 0, 0)[0][0] for m in group.members if (sl := slabs[m]) is not None
                for s in (sl.start, sl.stop - 1)]
        record["z_range"] = [int(round(min(ends))), int(round(max(ends)))]
    else:  # every member's outline was only outline: no voxel left
        record["centroid_zyx"] = record["centroid_lps_mm"] = record["z_range"] = None
    return record


def _point_records(ann, ct, mapper: CanonicalMapper) -> dict[str, list[dict]]:
    from ctprep.formats.lidc_readers import SliceLocator

    locator = SliceLocator(ct.native_sop_uids, ct.native_z_mm)
    out: dict[str, list[dict]] = {"small_nodules": [], "non_nodules": []}
    for session in ann.sessions:
        for kind, points in (("small_nodules", session.small_nodules), ("non_nodules", session.non_nodules)):
            for point in points:
                out[kind].append(_point(session.reader_index, point, locator, mapper))
    return out


def _point(reader: int, point, locator, mapper: CanonicalMapper) -> dict:
    k = locator.index(point.sop_uid, point.z_mm)
    zyx, _ = mapper.map(k if k is not None else 0, point.y, point.x)
    return {"reader": reader + 1, "id": point.nodule_id, "z": int(round(zyx[0])) if k is not None else None,
            "y": int(round(zyx[1])), "x": int(round(zyx[2])), "z_mm": point.z_mm}


# --------------------------------------------------------------------------- onto the stored case


def adapt_positions(annotations, *, before, after, rows) -> dict:
    """LIDC annotations with positions on the stored case (the module docstring's ``z``/``y``/``x``).

    ``before`` is the canonical grid the source loaded (``load`` gives positions on it),
    ``after`` the stored grid (the same unless ``--spacing``/``--size`` resampled) and
    ``rows`` the grid slices stored (``--slices``). A position's ``z`` becomes the stored
    row of its slice (fractional for a centroid between two stored slices), or None when
    that slice is not stored.
    """
    out = dict(annotations)
    to_after = np.linalg.inv(after.affine_lps()) @ before.affine_lps()
    position = {int(r): i for i, r in enumerate(rows)}

    def mapped(zyx) -> tuple[float, float, float]:
        x, y, z = (to_after @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]
        return float(z), float(y), float(x)

    def row(z: float) -> float | None:
        lo = int(np.floor(z + 1e-6))
        frac = z - lo
        if frac < 1e-6:
            return position.get(lo)
        if lo in position and lo + 1 in position:
            return position[lo] + frac
        return None

    nodules = []
    for nodule in annotations.get("nodules", []):
        nodule = dict(nodule)
        if nodule.get("centroid_zyx") is not None:
            z, y, x = mapped(nodule["centroid_zyx"])
            stored = row(z)
            nodule["centroid_zyx"] = [round(stored, 3) if stored is not None else None, round(y, 3), round(x, 3)]
            first, last = (int(round(mapped((v, 0.0, 0.0))[0])) for v in nodule["z_range"])
            kept = [position[g] for g in range(min(first, last), max(first, last) + 1) if g in position]
            nodule["z_range"] = [min(kept), max(kept)] if kept else None
        nodules.append(nodule)
    if "nodules" in annotations:
        out["nodules"] = nodules
    for kind in ("small_nodules", "non_nodules"):
        points = []
        for point in annotations.get(kind, []):
            point = dict(point)
            z, y, x = mapped((point["z"] if point["z"] is not None else 0, point["y"], point["x"]))
            point["z"] = position.get(int(round(z))) if point["z"] is not None else None
            point["y"], point["x"] = int(round(y)), int(round(x))
            points.append(point)
        if kind in annotations:
            out[kind] = points
    return out
