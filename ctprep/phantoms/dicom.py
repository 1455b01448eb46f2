"""Write a canonical HU volume as a DICOM CT series (tests, benchmarks, demos).

The volume is given on the canonical grid (``(z, y, x)``, LPS, ascending z, see
ctprep.geometry) and written with any axis-aligned in-plane orientation
(``row``/``col`` cosines among the LPS x/y axes, which also covers feet-first and
prone), random file names, optional rescale, padding, gantry tilt and compression.
Only synthetic, PHI-free header values are written.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid)

from lkbase.errors import ParameterError

# The 8 axis-aligned in-plane orientations: (row cosine, column cosine) in LPS.
_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0)}
IN_PLANE_ORIENTATIONS = tuple((r, c) for r in _AXES for c in _AXES if r[1] != c[1])
HEAD_FIRST_SUPINE = ("+x", "+y")   # IOP 1,0,0,0,1,0
FEET_FIRST_SUPINE = ("-x", "+y")   # IOP -1,0,0,0,1,0 (normal points inferior)
HEAD_FIRST_PRONE = ("-x", "-y")    # IOP -1,0,0,0,-1,0
TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian,
                     "rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpeg-lossless": JPEGLosslessSV1}


def _slice_image(canonical_slice: np.ndarray, row: str, col: str) -> np.ndarray:
    """The (row, col) image of a canonical (y, x) slice for the given cosines."""
    image = canonical_slice if row[1] == "x" else canonical_slice.T
    if row[0] == "-":
        image = image[:, ::-1]
    if col[0] == "-":
        image = image[::-1, :]
    return image


def write_ct_series(folder: Path, hu_volume: np.ndarray, spacing: Sequence[float] = (2.5, 0.8, 0.8),
                    orientation: tuple[str, str] = HEAD_FIRST_SUPINE, *,
                    origin: Sequence[float] = (-100.0, -120.0, -300.0),
                    patient_id: str = "PHANTOM-001", series_uid: str | None = None,
                    slope: float = 1.0, intercept: float = -1024.0,
                    padding_value: int | None = None, padding_mask: np.ndarray | None = None,
                    tilt_mm: Sequence[float] = (0.0, 0.0), transfer_syntax: str = "explicit",
                    seed: int = 0, sop_uids: Sequence[str] | None = None) -> list[Path]:
    """Write ``hu_volume`` (canonical ``(z, y, x)``) as one CT series; returns the files in z order.

    ``spacing``/``origin`` are the canonical (z, y, x) spacing and the LPS position of
    voxel (0, 0, 0). ``orientation`` = (row cosine, column cosine) as ``"+x"``/``"-y"``...
    ``tilt_mm`` = (x, y) LPS mm added to ImagePositionPatient per slice (gantry tilt:
    the pixels stay as given). ``padding_mask`` voxels are stored as ``padding_value``.
    File names are random (seeded). ``sop_uids`` gives the slices' SOPInstanceUIDs in z order
    (e.g. those an annotation file refers to); default: new ones.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, col = orientation
    if (row, col) not in IN_PLANE_ORIENTATIONS:
        raise ParameterError(f"orientation must be one of {IN_PLANE_ORIENTATIONS}, not {orientation}")
    nz, ny, nx = hu_volume.shape
    if sop_uids is not None and len(sop_uids) != nz:
        raise ParameterError(f"{len(sop_uids)} SOP instance UIDs for {nz} slices")
    sz, sy, sx = (float(v) for v in spacing)
    row_vec, col_vec = np.array(_AXES[row], float), np.array(_AXES[col], float)
    stored = (np.asarray(hu_volume, dtype=np.float64) - intercept) / slope
    if not np.allclose(stored, np.rint(stored)):
        raise ParameterError("hu_volume is not representable with this slope/intercept")
    stored = np.rint(stored)
    if padding_mask is not None:
        stored[padding_mask] = padding_value
    signed = stored.min() < 0
    stored = stored.astype(np.int16 if signed else np.uint16)
    series_uid = series_uid or generate_uid()
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    rng = np.random.default_rng(seed)
    study_uid, frame_uid = generate_uid(), generate_uid()  # one study and frame of reference per series
    spacing_of = {"x": sx, "y": sy}
    size_of = {"x": nx, "y": ny}
    paths = []
    for k in range(nz):
        corner = np.array(origin, float) + np.array([0.0, 0.0, k * sz])
        for cosine in (row, col):  # image pixel (0, 0) is at the far end of a negative axis
            if cosine[0] == "-":
                axis = "xy".index(cosine[1])
                corner[axis] += (size_of[cosine[1]] - 1) * spacing_of[cosine[1]]
        corner[:2] += k * np.asarray(tilt_mm, float)
        image = np.ascontiguousarray(_slice_image(stored[k], row, col))
        ds = _dataset(image, signed, series_uid, patient_id, k, sop_uids[k] if sop_uids is not None else None,
                      study_uid=study_uid, frame_uid=frame_uid)
        ds.ImagePositionPatient = [f"{v:.6g}" if abs(v) < 1e5 else str(v) for v in corner.round(6)]
        ds.ImageOrientationPatient = [int(v) for v in (*row_vec, *col_vec)]
        ds.PixelSpacing = [spacing_of[col[1]], spacing_of[row[1]]]  # between rows, between columns
        ds.SliceThickness = sz
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if padding_value is not None:
            ds.PixelPaddingValue = int(padding_value) & 0xFFFF if not signed else int(padding_value)
        path = folder / f"{uuid.UUID(bytes=rng.bytes(16)).hex[:12]}.dcm"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == JPEGLosslessSV1 else syntax
        if syntax in (RLELossless, JPEG2000Lossless):
            ds.compress(syntax, image)
        ds.save_as(path, enforce_file_format=True)
        if syntax == JPEGLosslessSV1:
            _gdcm_recompress(path, syntax)
        paths.append(path)
    return paths


def _dataset(image: np.ndarray, signed: bool, series_uid: str, patient_id: str, k: int,
             sop_uid: str | None = None, *, study_uid: str, frame_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = sop_uid or generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "lesionkit", "dicom_phantom"
    ds.PatientID = patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.InstanceNumber = 1000 - k  # deliberately not the z order
    ds.KVP, ds.ConvolutionKernel, ds.RescaleType = 120, "B30f", "HU"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = image.astype("<i2" if signed else "<u2").tobytes()
    return ds


def _gdcm_recompress(path: Path, syntax: str) -> None:
    """Re-encode a file in place with GDCM (pydicom has no JPEG lossless encoder)."""
    import gdcm  # python-gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise OSError(f"GDCM cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise OSError(f"GDCM cannot encode {path} as {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise OSError(f"GDCM cannot write {path}")
