"""LIDC-IDRI reader annotations: the XML parsed into data (sessions, nodules, rois, points).

An LIDC-IDRI XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) holds
the reading sessions of (usually) four radiologists for one CT series. Each
session lists

* nodules >= 3 mm (``unblindedReadNodule`` with outlines): :class:`Nodule`,
  one :class:`Roi` per outline (``edgeMap`` points are pixel ``x`` = column,
  ``y`` = row on the slice named by ``imageSOP_UID`` / ``imageZposition``);
* nodules < 3 mm (an ``unblindedReadNodule`` with one roi of one point) and
  non-nodules (``nonNodule`` with one ``locus``): :class:`Point`, never rasterised.

Everything here works in the series' *native* layout ``(slice, row, col)``:
slices in the order of ``native_sop_uids`` / ``native_z_mm`` (the DICOM reader
sorts them ascending along the slice normal); moving the masks onto the
canonical grid is the DICOM reader's job.

Masks, nodule groups and consensus from these data: :mod:`ctprep.formats.lidc_readers`.

Reader identity: ``reader_index`` is the session's position in the XML. The
XMLs do not link readers across scans (the first session of one XML is not
necessarily the same radiologist as the first of another), and the
``servicingRadiologistID`` is an anonymised id that is not reliable across
files either.
"""

from __future__ import annotations

import hashlib
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ctprep.errors import CaseInputError, MissingInputError

NAMESPACE = "http://www.nih.gov"
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")
# The schema's ratings: every characteristic is an integer in this range (LIDC XML schema, Armato 2011).
CHARACTERISTIC_RANGES = {"subtlety": (1, 5), "internalStructure": (1, 4), "calcification": (1, 6),
                         "sphericity": (1, 5), "margin": (1, 5), "lobulation": (1, 5), "spiculation": (1, 5),
                         "texture": (1, 5), "malignancy": (1, 5)}
# Reader ids as the real XMLs write them: ``Nodule 001``, ``_Non-nodule 001``, ``MI014_12126``, ``IL057_127367``, ``3``.
# Kept: one token of at most 32 characters ``[A-Za-z0-9_.:-]``, or (the real XMLs' spaced form) at most 32
# characters of such tokens joined by single spaces whose letter runs are at most 3 letters or the words
# nodule / non. Anything else (a name with a space or ``^``, free text) becomes ``id-<8 hex of sha256>``;
# ``ctprep audit`` holds stores to the same rule (``is_public_lidc_id``).
_ID_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,32}", re.ASCII)
_ID_SHAPE = re.compile(r"[A-Za-z0-9_.:-]+(?: [A-Za-z0-9_.:-]+)*", re.ASCII)
_ID_WORDS = frozenset({"nodule", "non"})
HASHED_ID = re.compile(r"id-[0-9a-f]{8}", re.ASCII)

ReaderNoduleKey = tuple[int, str]  # (reader_index, nodule_id)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, kw_only=True)
class Roi:
    """One outline of a nodule on one slice; ``points`` are (x = column, y = row) pixels."""

    z_mm: float
    sop_uid: str
    inclusion: bool
    points: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return {"z_mm": self.z_mm, "sop_uid": self.sop_uid, "inclusion": self.inclusion,
                "points": [list(p) for p in self.points]}


@dataclass(frozen=True, kw_only=True)
class Nodule:
    """A nodule >= 3 mm as outlined by one reader; ``characteristics`` maps names to 1..5/6 ratings."""

    nodule_id: str
    characteristics: dict = field(default_factory=dict)
    rois: tuple[Roi, ...] = ()

    @property
    def inclusion_rois(self) -> tuple[Roi, ...]:
        return tuple(r for r in self.rois if r.inclusion)

    @property
    def exclusion_rois(self) -> tuple[Roi, ...]:
        return tuple(r for r in self.rois if not r.inclusion)

    def to_dict(self) -> dict:
        return {"nodule_id": self.nodule_id, "characteristics": dict(self.characteristics),
                "rois": [r.to_dict() for r in self.rois]}


@dataclass(frozen=True, kw_only=True)
class Point:
    """A nodule < 3 mm (its single edge point) or a non-nodule (its locus): a mark, not an outline."""

    nodule_id: str
    z_mm: float
    sop_uid: str
    x: int
    y: int

    def to_dict(self) -> dict:
        return {"nodule_id": self.nodule_id, "z_mm": self.z_mm, "sop_uid": self.sop_uid,
                "x": self.x, "y": self.y}


@dataclass(frozen=True, kw_only=True)
class ReadingSession:
    """One reader's marks; ``reader_index`` is the session's position in the XML (0-based)."""

    reader_index: int
    servicing_radiologist_id: str
    nodules: tuple[Nodule, ...] = ()
    small_nodules: tuple[Point, ...] = ()
    non_nodules: tuple[Point, ...] = ()

    def to_dict(self) -> dict:
        return {"reader_index": self.reader_index,
                "servicing_radiologist_id": self.servicing_radiologist_id,
                "nodules": [n.to_dict() for n in self.nodules],
                "small_nodules": [p.to_dict() for p in self.small_nodules],
                "non_nodules": [p.to_dict() for p in self.non_nodules]}


@dataclass(frozen=True, kw_only=True)
class LidcAnnotations:
    """Everything one LIDC XML says about one CT series; ``path`` is the XML it came from."""

    series_uid: str
    study_uid: str
    sessions: tuple[ReadingSession, ...]
    path: str = ""
    replaced_values: int = 0  # ids and characteristics not of the schema's form (replaced or dropped)

    @property
    def nodules(self) -> tuple[tuple[int, Nodule], ...]:
        """Every (reader_index, nodule >= 3 mm) pair, in XML order."""
        return tuple((s.reader_index, n) for s in self.sessions for n in s.nodules)

    def to_dict(self) -> dict:
        return {"series_uid": self.series_uid, "study_uid": self.study_uid, "path": self.path,
                "sessions": [s.to_dict() for s in self.sessions]}


@dataclass(frozen=True, kw_only=True)
class NoduleGroup:
    """The readers' annotations of one physical nodule.

    ``centroid_voxel`` is (slice, row, col) in the native layout (fractional);
    ``centroid_mm`` is (z along the native slice axis in the series' z
    coordinate, row * row spacing, col * column spacing), the mean of the
    members' centroids; ``diameter_mm`` is the mean equivalent-sphere diameter.
    """

    group_id: int
    members: tuple[ReaderNoduleKey, ...]
    centroid_voxel: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    diameter_mm: float

    @property
    def n_readers(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict:
        return {"group_id": self.group_id, "members": [list(m) for m in self.members],
                "centroid_voxel": list(self.centroid_voxel), "centroid_mm": list(self.centroid_mm),
                "diameter_mm": self.diameter_mm, "n_readers": self.n_readers}


# --------------------------------------------------------------------------- parsing


def _local(tag: object) -> str:
    """An element's tag without namespace, lower case (tag spellings vary between XML versions)."""
    if not isinstance(tag, str):  # comments, processing instructions
        return ""
    return tag.rsplit("}", 1)[-1].lower()


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    name = name.lower()
    return [c for c in element if _local(c.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    for child in _children(element, name):
        if child.text is not None and child.text.strip():
            return child.text.strip()
    return None


def parse_lidc_xml(path: str | Path) -> LidcAnnotations:
    """Parse an LIDC-IDRI XML; :class:`CaseInputError` naming the file when it is unusable."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as exc:
        raise MissingInputError(path, "file not found") from exc
    except ET.ParseError as exc:
        raise CaseInputError(path, f"malformed XML ({exc})") from exc
    except OSError as exc:
        raise CaseInputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if _local(root.tag) != "lidcreadmessage":
        raise CaseInputError(path, f"expected an LIDC CT read message (root <LidcReadMessage>), "
                                   f"found root <{_local(root.tag) or root.tag}>")
    headers = _children(root, "ResponseHeader")
    search = headers + [root]
    series_uid = _find_uid(search, "seriesinstanceuid")
    study_uid = _find_uid(search, "studyinstanceuid") or ""
    if not series_uid:
        raise CaseInputError(path, "no SeriesInstanceUID in the ResponseHeader")
    vetted = _Vetted()
    sessions = tuple(_parse_session(path, index, element, vetted)
                     for index, element in enumerate(_children(root, "readingSession")))
    return LidcAnnotations(series_uid=series_uid, study_uid=study_uid, sessions=sessions, path=str(path),
                           replaced_values=vetted.replaced)


def is_public_lidc_id(text: str) -> bool:
    """True for a reader id of the real XMLs' form (module constants), or one ctprep made (``id-<hex>``)."""
    if HASHED_ID.fullmatch(text) or _ID_TOKEN.fullmatch(text):
        return True
    if len(text) > 32 or not _ID_SHAPE.fullmatch(text):
        return False
    return all(len(w) <= 3 or w.lower() in _ID_WORDS for w in re.findall(r"[A-Za-z]+", text))


def public_lidc_id(text: str) -> str:
    """``text`` when it is an id of the real XMLs' form, else ``id-<8 hex of sha256(text)>``."""
    if is_public_lidc_id(text):
        return text
    return "id-" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def characteristic_value(name: str, text: str) -> int | None:
    """A rating as the schema allows it (an integer in the characteristic's range), else None."""
    low, high = CHARACTERISTIC_RANGES.get(name, (None, None))
    if low is None or not re.fullmatch(r"[0-9]{1,2}", text, re.ASCII):
        return None
    return int(text) if low <= int(text) <= high else None


class _Vetted:
    """Counts the values of one XML that were not of the schema's form."""

    def __init__(self):
        self.replaced = 0

    def id(self, text: str) -> str:
        public = public_lidc_id(text)
        self.replaced += public != text
        return public


def _find_uid(elements: Iterable[ET.Element], name: str) -> str | None:
    """The first non-empty child named ``name`` (any case) of ``elements``, then anywhere below them."""
    elements = list(elements)
    for element in elements:
        for child in element:
            if _local(child.tag) == name and child.text and child.text.strip():
                return child.text.strip()
    for element in elements:
        for child in element.iter():
            if _local(child.tag) == name and child.text and child.text.strip():
                return child.text.strip()
    return None


def _parse_session(path: Path, index: int, element: ET.Element, vetted: _Vetted) -> ReadingSession:
    nodules: list[Nodule] = []
    small: list[Point] = []
    non_nodules: list[Point] = []
    where = f"readingSession {index + 1}"
    for child in element:
        tag = _local(child.tag)
        if tag == "unblindedreadnodule":
            nodule_id = vetted.id(_text(child, "noduleID") or "")
            rois = tuple(_parse_roi(path, f"{where}, nodule {nodule_id!r}", roi)
                         for roi in _children(child, "roi"))
            if len(rois) == 1 and len(rois[0].points) == 1:
                roi = rois[0]
                (x, y), = roi.points
                small.append(Point(nodule_id=nodule_id, z_mm=roi.z_mm, sop_uid=roi.sop_uid, x=x, y=y))
            else:
                nodules.append(Nodule(nodule_id=nodule_id, characteristics=_characteristics(child, vetted),
                                      rois=rois))
        elif tag == "nonnodule":
            nodule_id = vetted.id(_text(child, "nonNoduleID") or "")
            context = f"{where}, non-nodule {nodule_id!r}"
            loci = _children(child, "locus")
            if not loci:
                raise CaseInputError(path, f"{context}: no <locus>")
            x, y = _xy(path, context, loci[0])
            non_nodules.append(Point(nodule_id=nodule_id, z_mm=_z(path, context, child),
                                     sop_uid=_text(child, "imageSOP_UID") or "", x=x, y=y))
    return ReadingSession(reader_index=index,
                          servicing_radiologist_id=_text(element, "servicingRadiologistID") or "",
                          nodules=tuple(nodules), small_nodules=tuple(small), non_nodules=tuple(non_nodules))


def _characteristics(nodule: ET.Element, vetted: _Vetted) -> dict:
    """The ratings of the schema's form; any other element or value is dropped and counted."""
    out: dict = {}
    for block in _children(nodule, "characteristics"):
        for item in block:
            name = item.tag.rsplit("}", 1)[-1] if isinstance(item.tag, str) else ""
            text = (item.text or "").strip()
            if not name or not text:
                continue
            value = characteristic_value(name, text)
            if value is None:
                vetted.replaced += 1
            else:
                out[name] = value
    return out


def _z(path: Path, context: str, element: ET.Element) -> float:
    text = _text(element, "imageZposition")
    try:
        z = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CaseInputError(path, f"{context}: imageZposition {text!r} is not a number") from None
    if not math.isfinite(z):
        raise CaseInputError(path, f"{context}: imageZposition {text!r} is not finite")
    return z


def _xy(path: Path, context: str, element: ET.Element) -> tuple[int, int]:
    xs, ys = _text(element, "xCoord"), _text(element, "yCoord")
    try:
        return int(round(float(xs))), int(round(float(ys)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise CaseInputError(path, f"{context}: edge point ({xs!r}, {ys!r}) is not a pair of numbers") from None


def _parse_roi(path: Path, context: str, element: ET.Element) -> Roi:
    z = _z(path, context, element)
    context = f"{context}, roi at z={z:g}"
    inclusion_text = (_text(element, "inclusion") or "TRUE").upper()
    if inclusion_text not in ("TRUE", "FALSE"):
        raise CaseInputError(path, f"{context}: inclusion must be TRUE or FALSE, found {inclusion_text!r}")
    points = tuple(_xy(path, context, edge) for edge in _children(element, "edgeMap"))
    return Roi(z_mm=z, sop_uid=_text(element, "imageSOP_UID") or "", inclusion=inclusion_text == "TRUE",
               points=points)
