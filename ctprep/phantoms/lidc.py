"""A phantom LIDC-IDRI download (demo and tests): CT series + readers' XML in the real schema.

``<root>/LIDC-IDRI-NNNN/<study>/<series>/`` holds the CT slices (random names)
and an XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) whose
ResponseHeader names the series and whose reading sessions outline nodules
slice by slice (``roi`` with ``imageZposition``, ``imageSOP_UID``,
``inclusion`` and ``edgeMap`` pixels x = column, y = row), mark small nodules
with one point and non-nodules with a ``locus``, as the real XMLs do.

Outlines are traced around each reader's mask grown by one pixel, because LIDC
readers drew just outside the nodule and ctprep.formats.lidc_readers removes the outline pixels.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ctprep.phantoms.dicom import HEAD_FIRST_SUPINE, _slice_image, write_ct_series
from lkbase.atomic import atomic_path

NAMESPACE = "http://www.nih.gov"
SHAPE, SPACING = (16, 96, 96), (2.5, 0.7, 0.7)
ORIGIN = (-33.6, -33.6, -150.0)


@dataclass(frozen=True, kw_only=True)
class LidcPhantom:
    patient: str
    ct_files: tuple[Path, ...]
    xml: Path
    hu: np.ndarray
    readers: tuple[np.ndarray, ...]  # each reader's intended nodule mask, canonical (z, y, x)
    marks: dict  # "small_nodule" (reader 1) and "non_nodule" (reader 2): canonical (z, y, x)


def outline_rois(mask: np.ndarray, sop_uids: Sequence[str], z_mm: Sequence[float]) -> list[dict]:
    """LIDC ``roi`` entries outlining a native (slice, row, col) mask, one per outer contour per slice."""
    import cv2

    rois = []
    kernel = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # grow by one pixel, 4-connected
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        grown = cv2.dilate(mask[k].astype(np.uint8), kernel)
        contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            points = [(int(x), int(y)) for x, y in contour.reshape(-1, 2)]
            rois.append({"z": float(z_mm[k]), "sop_uid": str(sop_uids[k]), "inclusion": True, "points": points})
    return rois


def write_lidc_xml(path: Path, series_uid: str, study_uid: str, sessions: Sequence[dict], *,
                   date_service: str = "2008-08-18", time_service: str = "02:05:51") -> Path:
    """Write an LIDC XML. ``sessions``: one dict per reader with ``nodules`` (``id``,
    ``characteristics``, ``rois`` as from :func:`outline_rois`), ``small_nodules`` and
    ``non_nodules`` (``id``, ``z``, ``sop_uid``, ``x``, ``y``)."""
    ET.register_namespace("", NAMESPACE)

    def sub(parent: ET.Element, tag: str, text=None) -> ET.Element:
        element = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}")
        if text is not None:
            element.text = str(text)
        return element

    root = ET.Element(f"{{{NAMESPACE}}}LidcReadMessage", {"uid": "1.3.6.1.4.1.14519.5.2.1.6279.6001.0.0"})
    header = sub(root, "ResponseHeader")
    for tag, text in (("Version", "1.8.1"), ("MessageId", "-1"), ("DateRequest", "2007-11-01"),
                      ("TimeRequest", "12:30:44"), ("RequestingSite", "removed"), ("ServicingSite", "removed"),
                      ("TaskDescription", "Second unblinded read"), ("CtImageFile", "removed"),
                      ("SeriesInstanceUid", series_uid), ("DateService", date_service),
                      ("TimeService", time_service), ("ResponseDescription", "1 - Reading complete"),
                      ("StudyInstanceUID", study_uid)):
        sub(header, tag, text)
    for n, session in enumerate(sessions):
        element = sub(root, "readingSession")
        sub(element, "annotationVersion", "3.12")
        sub(element, "servicingRadiologistID", f"phantom-reader-{n + 1}")
        for nodule in session.get("nodules", ()):
            node = sub(element, "unblindedReadNodule")
            sub(node, "noduleID", nodule["id"])
            if nodule.get("characteristics"):
                block = sub(node, "characteristics")
                for name, value in nodule["characteristics"].items():
                    sub(block, name, value)
            for roi in nodule["rois"]:
                _roi(sub, node, roi["z"], roi["sop_uid"], roi.get("inclusion", True), roi["points"])
        for point in session.get("small_nodules", ()):
            node = sub(element, "unblindedReadNodule")
            sub(node, "noduleID", point["id"])
            _roi(sub, node, point["z"], point["sop_uid"], True, [(point["x"], point["y"])])
        for point in session.get("non_nodules", ()):
            node = sub(element, "nonNodule")
            sub(node, "nonNoduleID", point["id"])
            sub(node, "imageZposition", f"{point['z']:.6f}")
            sub(node, "imageSOP_UID", point["sop_uid"])
            locus = sub(node, "locus")
            sub(locus, "xCoord", point["x"])
            sub(locus, "yCoord", point["y"])
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    return path


def _roi(sub, parent: ET.Element, z: float, sop_uid: str, inclusion: bool, points) -> None:
    roi = sub(parent, "roi")
    sub(roi, "imageZposition", f"{z:.6f} ")
    sub(roi, "imageSOP_UID", sop_uid)
    sub(roi, "inclusion", "TRUE" if inclusion else "FALSE")
    for x, y in points:
        edge = sub(roi, "edgeMap")
        sub(edge, "xCoord", int(x))
        sub(edge, "yCoord", int(y))


def make_nodule_phantom(shape: tuple[int, int, int] = SHAPE, readers: int = 4, seed: int = 0,
                        spacing: Sequence[float] = SPACING) -> tuple[np.ndarray, list[np.ndarray]]:
    """Canonical (z, y, x) HU (body, lungs, spine, a solid nodule in the right lung) and each reader's
    nodule mask (spheres of slightly different radii and centres: readers disagree on the border)."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    zc, yc, xc = nz / 2, ny * 0.45, nx * 0.3
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[((x - nx / 2) / (0.45 * nx)) ** 2 + ((y - ny / 2) / (0.36 * ny)) ** 2 <= 1] = 40
    for side in (0.3, 0.7):
        hu[((x - side * nx) / (0.16 * nx)) ** 2 + ((y - ny * 0.48) / (0.25 * ny)) ** 2 <= 1] = -850
    hu[((x - nx / 2) / (0.05 * nx)) ** 2 + ((y - ny * 0.76) / (0.05 * ny)) ** 2 <= 1] = 700  # spine
    radius_px = 0.09 * nx
    scale_z = spacing[1] / spacing[0]
    hu[((x - xc) ** 2 + (y - yc) ** 2 + ((z - zc) / scale_z) ** 2) <= radius_px ** 2] = 20
    masks = []
    for _ in range(readers):
        r = radius_px * rng.uniform(0.85, 1.15)
        dz, dy, dx = rng.uniform(-1, 1, 3)
        masks.append(((x - xc - dx) ** 2 + (y - yc - dy) ** 2 + ((z - zc - dz / 3) / scale_z) ** 2) <= r ** 2)
    hu += rng.normal(0, 8, size=shape).astype(np.float32)
    return np.rint(hu).astype(np.int16), masks


def write_lidc_case(root: Path, number: int = 1, *, shape: tuple[int, int, int] = SHAPE, readers: int = 4,
                    spacing: Sequence[float] = SPACING, origin: Sequence[float] = ORIGIN,
                    orientation: tuple[str, str] = HEAD_FIRST_SUPINE, suffix: str = "",
                    date_service: str = "2008-08-18", seed: int | None = None) -> LidcPhantom:
    """Write patient ``LIDC-IDRI-<number>``: one CT series and its XML in the series folder.

    Each reader outlines the nodule (their own mask); reader 1 also marks a small nodule
    and reader 2 a non-nodule, as points. ``orientation`` is the in-plane orientation of
    the slices (ctprep.phantoms.dicom); ``suffix`` adds a second scan of the same patient
    (another study); ``date_service`` goes into the XML header.
    """
    from pydicom.uid import generate_uid

    seed = number if seed is None else seed
    rng = np.random.default_rng(seed + 2000)
    patient = f"LIDC-IDRI-{number:04d}"
    folder = root / patient / _name(rng, f"study{suffix}") / _name(rng, "series")
    hu, masks = make_nodule_phantom(shape, readers, seed, spacing)
    series_uid, study_uid = generate_uid(), generate_uid()
    uids = [generate_uid() for _ in range(shape[0])]
    files = write_ct_series(folder, hu, spacing, orientation, origin=origin, patient_id=patient,
                            series_uid=series_uid, seed=seed, sop_uids=uids)
    z_mm = [origin[2] + spacing[0] * k for k in range(shape[0])]  # ImagePositionPatient z of canonical slice k
    nz, ny, nx = shape
    marks = {"small_nodule": (2, round(0.42 * ny), round(0.73 * nx)),
             "non_nodule": (nz - 3, round(0.62 * ny), round(0.26 * nx))}
    sessions = _sessions(masks, uids, z_mm, marks, orientation)
    xml = write_lidc_xml(folder / f"{_name(rng, '')}.xml", series_uid, study_uid, sessions,
                         date_service=date_service)
    return LidcPhantom(patient=patient, ct_files=tuple(files), xml=xml, hu=hu, readers=tuple(masks), marks=marks)


def _sessions(masks: Sequence[np.ndarray], uids: Sequence[str], z_mm: Sequence[float], marks: dict,
              orientation: tuple[str, str]) -> list[dict]:
    """One reading session per reader mask; reader 1 adds a small nodule, reader 2 a non-nodule."""
    row, col = orientation
    shape = masks[0].shape
    sessions = []
    for n, mask in enumerate(masks):
        session: dict = {"nodules": [{"id": f"Nodule {n + 1:03d}",
                                      "characteristics": {"subtlety": 5 - n % 2, "internalStructure": 1,
                                                          "calcification": 6, "sphericity": 4, "margin": 4,
                                                          "lobulation": 2, "spiculation": 1, "texture": 5,
                                                          "malignancy": 3 + n % 2},
                                      "rois": outline_rois(_images(mask, row, col), uids, z_mm)}]}
        for reader, kind, key, name in ((0, "small_nodules", "small_nodule", "Nodule 002"),
                                        (1, "non_nodules", "non_nodule", "_Non-nodule 001")):
            if n == reader:  # (x, y) = (column, row) of the image
                k, cy, cx = marks[key]
                x, y = _image_xy(shape, cy, cx, row, col)
                session[kind] = [{"id": name, "z": z_mm[k], "sop_uid": uids[k], "x": x, "y": y}]
        sessions.append(session)
    return sessions


def _images(canonical: np.ndarray, row: str, col: str) -> np.ndarray:
    """The (slice, row, col) images of a canonical (z, y, x) mask as the slices store them."""
    return np.stack([_slice_image(plane, row, col) for plane in canonical])


def _image_xy(shape, y: int, x: int, row: str, col: str) -> tuple[int, int]:
    """(column, row) in the image of canonical pixel (y, x)."""
    probe = np.zeros(shape[1:], dtype=np.uint8)
    probe[y, x] = 1
    r, c = np.argwhere(_slice_image(probe, row, col))[0]
    return int(c), int(r)


def _name(rng: np.random.Generator, prefix: str) -> str:
    tag = uuid.UUID(bytes=rng.bytes(16)).hex[:10]
    return f"{prefix}-{tag}" if prefix else tag
