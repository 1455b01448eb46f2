"""Writing masks as DICOM objects that refer to a CT series: RTSTRUCT (rt-utils) and SEG (highdicom).

Masks are given in the series' *native stacked layout* ``(slice, row, col)``: slices in
ascending order along the slice normal, which is the order of
:attr:`ctprep.formats.dicom.CtSeries.files` and of rt-utils' own sorting
(``image_helper.get_slice_position``). One mask per named structure (a target label);
an RTSTRUCT gets one ROI per mask, a SEG one binary segment per mask.

Privacy (issue 16, docs/bad-input.md): the output describes the same patient and must be
importable into the same PACS study, so it copies exactly what references that study:

* **copied**: ``PatientID`` and ``PatientName`` (Type 2 attributes of the Patient module;
  a PACS files a new object under the patient by these two, and blanking them would
  make the object an orphan or a different patient), ``StudyInstanceUID``,
  ``FrameOfReferenceUID`` and the referenced ``SeriesInstanceUID``/``SOPInstanceUID`` of
  every slice (what "refers to this series" means);
* **blanked** (Type 2: must be present, may be empty): ``PatientBirthDate``,
  ``PatientSex``, ``StudyDate``, ``StudyTime``, ``ReferringPhysicianName``, ``StudyID``,
  ``AccessionNumber``;
* **removed**: every other element of the patient group (0010), and the identifying study,
  series and equipment attributes rt-utils/highdicom copy from the images
  (:data:`REMOVED`). The new series gets its own description.

Only the header attributes the writers need are read from the series (no pixel data).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pydicom

from ctprep.errors import CaseInputError
from lkbase.atomic import atomic_path
from lkbase.errors import ParameterError

COPIED = ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID")
BLANKED = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
           "AccessionNumber")
REMOVED = ("StudyDescription", "SeriesDate", "SeriesTime", "InstitutionName", "InstitutionAddress",
           "InstitutionalDepartmentName", "StationName", "OperatorsName", "PerformingPhysicianName",
           "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician", "AdmittingDiagnosesDescription",
           "DeviceSerialNumber", "AcquisitionDate", "AcquisitionTime", "ContentCreatorName", "IssuerOfPatientID")
_PATIENT_GROUP = 0x0010
SERIES_DESCRIPTION = "lesionkit prediction"


def read_series_headers(files: Sequence[Path]) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of a series' files, in the order given (the native order)."""
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises several types for a foreign file
            raise CaseInputError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    return headers


def _with_type2(headers: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The headers with the Type 2 patient/study attributes rt-utils and highdicom copy filled in (empty)
    where a (typically anonymised) series lacks them; in memory only."""
    for ds in headers:
        for keyword in ("PatientID", "PatientName") + BLANKED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return headers


def _check_masks(masks: Mapping[str, np.ndarray], headers: Sequence[pydicom.Dataset]) -> dict[str, np.ndarray]:
    if not masks:
        raise ParameterError("no masks to write")
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    checked = {}
    for name, mask in masks.items():
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ParameterError(f"mask {name!r} must have the series' native shape (slice, row, col) {shape}, "
                                 f"found {mask.shape}")
        checked[name] = mask.astype(bool)
    return checked


def scrub(ds: pydicom.Dataset, description: str) -> pydicom.Dataset:
    """Apply the module's privacy rule to a new RTSTRUCT/SEG dataset (in place, nested sequences too,
    e.g. highdicom's ContributingEquipmentSequence copies the images' InstitutionName; returned)."""
    _remove_identifying(ds)
    for keyword in BLANKED:
        setattr(ds, keyword, "")
    ds.SeriesDescription = description
    return ds


def _remove_identifying(ds: pydicom.Dataset) -> None:
    for element in list(ds):
        if element.keyword in REMOVED or (element.tag.group == _PATIENT_GROUP
                                          and element.keyword not in COPIED + BLANKED):
            del ds[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _remove_identifying(item)


def write_rtstruct(files: Sequence[Path], masks: Mapping[str, np.ndarray], path: str | Path, *,
                   description: str = SERIES_DESCRIPTION) -> Path:
    """An RTSTRUCT with one ROI per mask (native layout), referring to the series ``files`` (native order)."""
    from rt_utils import RTStruct, ds_helper

    headers = _with_type2(read_series_headers(files))
    masks = _check_masks(masks, headers)
    with quiet_pydicom():
        rt = RTStruct(headers, ds_helper.create_rtstruct_dataset(headers))
        for name, mask in masks.items():
            # rt-utils: mask (row, col, slice) with slice i the i-th dataset given; empty masks are refused.
            if mask.any():
                rt.add_roi(mask=np.ascontiguousarray(mask.transpose(1, 2, 0)), name=name)
            else:
                _add_empty_roi(rt, name)
    rt.ds.Manufacturer, rt.ds.ManufacturerModelName = "lesionkit", "ctseg"
    rt.ds.StructureSetLabel = "lesionkit"
    scrub(rt.ds, description)
    path = Path(path)
    with atomic_path(path) as tmp:
        rt.ds.save_as(tmp)
    return path


def _add_empty_roi(rt, name: str) -> None:
    """An ROI without contours (nothing predicted): rt-utils' ROIData refuses an empty mask."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    number = len(rt.ds.StructureSetROISequence) + 1
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "AUTOMATIC"
    roi.ReferencedFrameOfReferenceUID = rt.ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    rt.ds.StructureSetROISequence.append(roi)
    contour = Dataset()
    contour.ReferencedROINumber, contour.ROIDisplayColor = number, [255, 0, 0]
    contour.ContourSequence = DicomSequence()
    rt.ds.ROIContourSequence.append(contour)
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = number, number
    observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
    rt.ds.RTROIObservationsSequence.append(observation)


def write_seg(files: Sequence[Path], masks: Mapping[str, np.ndarray], path: str | Path, *,
              description: str = SERIES_DESCRIPTION, software_version: str = "lesionkit") -> Path:
    """A binary DICOM SEG with one segment per mask (native layout), referring to the series ``files``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    headers = _with_type2(read_series_headers(files))
    masks = _check_masks(masks, headers)
    algorithm = hd.AlgorithmIdentificationSequence(name="lesionkit ctseg", family=codes.cid7162.ArtificialIntelligence,
                                                   version=software_version)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, name in enumerate(masks, start=1)]
    pixels = np.stack(list(masks.values()), axis=-1).astype(np.uint8)  # (frames, rows, cols, segments)
    with quiet_pydicom():
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lesionkit",
            manufacturer_model_name="ctseg", software_versions=software_version, device_serial_number="none",
            omit_empty_frames=False)
    scrub(seg, description)
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def read_seg_masks(path: str | Path, files: Sequence[Path]) -> dict[str, np.ndarray]:
    """A SEG's segments as native ``(slice, row, col)`` bool masks over the series ``files`` (native order)."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in read_series_headers(files)]
    numbers = list(seg.segment_numbers)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                               combine_segments=False)
    return {seg.get_segment_description(n).segment_label: pixels[..., i].astype(bool)
            for i, n in enumerate(numbers)}


@contextlib.contextmanager
def quiet_pydicom():
    """rt-utils and highdicom set attributes pydicom 3 deprecates: not the user's concern."""
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.disabled = disabled
