"""A corpus of deliberately broken raw downloads, one folder per source in the source's real layout.

Each source folder holds two good cases and many broken ones. Every broken case is declared
here (:data:`DEFECTS`, known without writing anything, so tests can be parametrised by it)
with what is wrong (its defect ``kind`` and a slug ``what``) and what ctprep must do:

* ``skipped``: ``ctprep convert`` skips the case with a reason matching ``reason`` (a regex)
  that names the broken file; the other cases still convert;
* ``converted``: the tool legitimately repairs it (a documented rule: identical duplicate
  slices dropped, the latest of two XMLs used, a malformed second lesion row left out, a context
  slice clamped to the released range, an integral float label, a slice found by its z when
  its SOP UID is unknown, ...); the stored case's annotations match ``note`` when one is given.

``check`` is what ``ctprep check`` (headers only) reports for the case: a regex of its
"unreadable" reason (:data:`SAME`: the skip reason's), or None when headers cannot tell.

:func:`build_corpus` writes everything (about 2 MB, a few seconds) and returns each broken
case as a :class:`BadCase` naming its file. Whole downloads that are unusable (an empty
folder, a DL_info.csv of random bytes, ...) are :class:`BrokenDownload`. Volumes are tiny
(8-10 slices of 32 x 32) so that the corpus converts in seconds.
"""

from __future__ import annotations

import gzip
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from ctprep.datasets import load_dataset_manifest
from ctprep.phantoms.deeplesion import numbers_text, write_dl_info, write_png16
from ctprep.phantoms.lidc import write_lidc_case
from ctprep.phantoms.nsclc import write_nsclc_case
from ctprep.phantoms.nifti import make_phantom, write_kits19_case, write_lits_case

SAME = "same as the skip reason"
DEFECT_KINDS = ("truncated", "random-bytes", "empty-file", "empty-folder", "wrong-dtype", "wrong-size",
                "inconsistent-metadata", "missing-partner")
SOURCES = ("lits", "kits19", "nsclc", "lidc", "deeplesion")

NIFTI_SHAPE, NIFTI_SPACING = (10, 32, 32), (2.5, 0.8, 0.8)
DICOM_SHAPE = (8, 32, 32)
NSCLC_SPACING, NSCLC_ORIGIN = (2.5, 1.0, 1.0), (-16.0, -16.0, -100.0)
DL_SLICES, DL_SIZE, DL_KEY = 7, 32, 4
DUPLICATE_UID = r"\.dcm: same SOPInstanceUID as [0-9a-f]{12}\.dcm, a different slice"
BESIDE = r"unreadable DICOM file beside the case's series"


@dataclass(frozen=True, kw_only=True)
class Defect:
    """One broken case as declared: how to break a freshly written case and what ctprep must do.

    ``edit`` receives the file ``target`` names (NIfTI: ``image``/``label``; DICOM: ``ct`` = the
    series file read last, ``rtstruct``, ``xml``; DeepLesion: the key slice) and may return the
    file the reason must name instead; ``write`` holds the case writer's keyword arguments
    (DeepLesion: ``row``, ``extra_rows``, ``key``).
    """

    source: str
    number: int
    kind: str
    what: str
    reason: str = ""
    outcome: str = "skipped"
    note: str | None = None
    check: str | None = None
    target: str = ""
    edit: Callable | None = None
    write: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DEFECT_KINDS:
            raise ValueError(f"{self.what}: unknown defect kind {self.kind!r}")
        if self.outcome not in ("skipped", "converted") or (self.outcome == "skipped") != bool(self.reason):
            raise ValueError(f"{self.what}: a skipped case needs a reason, a converted one none")

    @property
    def test_id(self) -> str:
        return f"{self.source}:{self.what}"


@dataclass(frozen=True, kw_only=True)
class BadCase:
    """A written broken case: its defect, its case id and the file (relative to the source folder)
    its skip reason names."""

    defect: Defect
    case_id: str
    file: str

    source = property(lambda self: self.defect.source)
    kind = property(lambda self: self.defect.kind)
    what = property(lambda self: self.defect.what)
    reason = property(lambda self: self.defect.reason)
    outcome = property(lambda self: self.defect.outcome)
    note = property(lambda self: self.defect.note)
    test_id = property(lambda self: self.defect.test_id)

    @property
    def check_pattern(self) -> str | None:
        return self.defect.reason if self.defect.check == SAME else self.defect.check


@dataclass(frozen=True, kw_only=True)
class GoodCase:
    """A case that must convert: the canonical (z, y, x) HU to store and its labels
    (exactly, or with Dice >= ``min_dice`` where a rasteriser is involved)."""

    case_id: str
    hu: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    min_dice: float = 1.0


@dataclass(frozen=True, kw_only=True)
class SourceCorpus:
    source: str
    root: Path
    good: tuple[GoodCase, ...]
    bad: tuple[BadCase, ...]

    @property
    def good_ids(self) -> tuple[str, ...]:
        return tuple(g.case_id for g in self.good)


@dataclass(frozen=True, kw_only=True)
class BrokenDownload:
    """A whole download that is unusable: ``convert`` fails with one line matching ``error``
    (writing nothing), or, when ``error`` is None, skips every case with ``skipped`` (exit 1)."""

    source: str
    kind: str
    what: str
    error: str | None = None
    skipped: str | None = None
    write: Callable[[Path], None] | None = None

    @property
    def test_id(self) -> str:
        return f"{self.source}:{self.what}"


@dataclass(frozen=True, kw_only=True)
class Corpus:
    root: Path
    sources: dict[str, SourceCorpus]

    def download(self, broken: BrokenDownload) -> Path:
        return self.root / "downloads" / f"{broken.source}-{broken.what}"


# --------------------------------------------------------------------------- file surgery


def truncate(path: Path, keep: float | int) -> None:
    """Keep the first ``keep`` bytes (int; negative: all but the last ``-keep``) or that fraction (float)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep] if isinstance(keep, int) else data[: int(len(data) * keep)])


def random_bytes(path: Path, size: int, seed: int) -> None:
    path.write_bytes(np.random.default_rng(seed).bytes(size))


def resave_nifti(path: Path, edit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    """Rewrite a NIfTI file with ``edit(data, affine) -> (data, affine)``, keeping the new array's dtype."""
    image = nib.load(path)
    data, affine = edit(np.asarray(image.dataobj).copy(), image.affine.copy())  # a copy: the file is mapped
    out = nib.Nifti1Image(data, affine)
    out.header.set_data_dtype(data.dtype)
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    nib.save(out, path)


def edit_dicom(path: Path, edit: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)


def _setter(attr: str, value) -> Callable:
    return lambda path: edit_dicom(path, lambda ds: setattr(ds, attr, value))


# --------------------------------------------------------------------------- NIfTI edits


def _folder_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _rgb_image(path: Path) -> None:
    image = nib.load(path)
    rgb = np.zeros(image.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, image.affine.copy()), path)


def _complex_image(path: Path) -> None:
    resave_nifti(path, lambda d, a: (d.astype(np.complex64), a))


def _flip_axis_0(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voxels reversed along axis 0 with an affine that does NOT follow (the world grid moves)."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    return data[::-1].copy(), affine @ flip


def _singular_sform(path: Path) -> None:
    """The sform's third column zeroed (no qform): the voxel grid collapses to a plane."""
    image = nib.load(path)
    header = image.header.copy()
    header["srow_z"] = [0.0, 0.0, 0.0, float(image.affine[2, 3])]
    header["srow_x"][2] = header["srow_y"][2] = 0.0
    header["qform_code"], header["sform_code"] = 0, 1
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj).copy(), None, header=header), path)


def _uint16_with_intercept(path: Path) -> None:
    """HU stored as uint16 + 2048 with scl_inter -2048: legal NIfTI, exact HU."""
    image = nib.load(path)
    data = (np.asarray(image.dataobj).astype(np.int32) + 2048).astype(np.uint16)
    out = nib.Nifti1Image(data, image.affine.copy())
    out.header.set_data_dtype(np.uint16)
    out.header.set_slope_inter(1.0, -2048.0)
    out.set_sform(image.affine, code=1)
    out.set_qform(image.affine, code=1)
    nib.save(out, path)


def _scaled_label(slope: float, inter: float) -> Callable[[Path], None]:
    """The segmentation rewritten as uint8 codes with NIfTI scaling: ``label = code * slope + inter``
    wherever that has an integer solution, the plain label elsewhere (then the scaling is not integral)."""
    def edit(path: Path) -> None:
        image = nib.load(path)
        label = np.asarray(image.dataobj).astype(np.float64)
        code = (label - inter) / slope
        code = np.where(code == np.rint(code), code, label).astype(np.uint8)
        out = nib.Nifti1Image(code, image.affine.copy())
        out.header.set_data_dtype(np.uint8)
        out.header.set_slope_inter(slope, inter)
        out.set_sform(image.affine, code=1)
        out.set_qform(image.affine, code=1)
        nib.save(out, path)
    return edit


def _empty_the_folder(path: Path) -> None:
    for f in path.parent.iterdir():
        f.unlink()


def _plain_nii_instead(path: Path) -> Path:
    plain = path.with_name("imaging.nii")
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return plain


def _nifti(source, number, kind, what, reason="", *, target="label", **kwargs) -> Defect:
    return Defect(source=source, number=number, kind=kind, what=what, reason=reason, target=target, **kwargs)


LITS_DEFECTS = tuple(_nifti("lits", *args, **kwargs) for args, kwargs in (
    ((10, "truncated", "label-gz-truncated", r"truncated or corrupt gzip stream"),
     dict(write={"gz": True}, edit=lambda p: truncate(p, 0.6), check=SAME)),
    ((11, "truncated", "image-header-only", r"truncated: header promises \d+ bytes of voxel data"),
     dict(target="image", edit=lambda p: truncate(p, 352), check=SAME)),
    ((12, "random-bytes", "image-nii-random-bytes", r"not a NIfTI-1/2 file \(no NIfTI magic"),
     dict(target="image", edit=lambda p: random_bytes(p, 30000, 12), check=SAME)),
    ((13, "random-bytes", "label-gz-random-bytes", r"truncated or corrupt gzip stream"),
     dict(write={"gz": True}, edit=lambda p: p.write_bytes(b"\x1f\x8b" + np.random.default_rng(13).bytes(5000)),
          check=SAME)),
    ((14, "empty-file", "image-empty", r"file is empty"),
     dict(target="image", edit=lambda p: p.write_bytes(b""), check=SAME)),
    ((15, "empty-folder", "image-is-a-folder", r"cannot read file \(Is a directory\)"),
     dict(target="image", edit=_folder_instead, check=SAME)),
    ((16, "wrong-dtype", "image-rgb24", r"voxel type RGB \(NIfTI datatype 128\) is not a real number"),
     dict(target="image", edit=_rgb_image, check=SAME)),
    ((17, "wrong-dtype", "image-complex64", r"voxel type complex64 \(NIfTI datatype 32\) is not a real number"),
     dict(target="image", edit=_complex_image, check=SAME)),
    ((18, "wrong-dtype", "label-uint16-300", r"segmentation values range \[0, 300\], expected 0\.\.255 labels"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (np.where(d == 2, 300, d.astype(np.uint16)), a)))),
    ((19, "wrong-dtype", "label-float-integral"),
     dict(outcome="converted", edit=lambda p: resave_nifti(p, lambda d, a: (d.astype(np.float32), a)))),
    ((20, "wrong-size", "label-2d", r"expected a 3-D volume, found shape \(32, 32\)"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (d[:, :, 0].copy(), a)), check=SAME)),
    ((21, "wrong-size", "label-axes-swapped", r"segmentation shape \(32, 10, 32\) differs from image shape "
      r"\(32, 32, 10\)"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (np.ascontiguousarray(d.transpose(0, 2, 1)), a)),
          check=SAME)),
    ((22, "inconsistent-metadata", "label-affine-flipped", r"segmentation affine differs from the image's by up "
      r"to 24\.8 mm"),
     dict(edit=lambda p: resave_nifti(p, _flip_axis_0), check=SAME)),
    ((23, "inconsistent-metadata", "image-affine-singular", r"affine is singular or not finite"),
     dict(target="image", edit=_singular_sform, check=SAME)),
    # scl_slope/scl_inter on a segmentation: applied when integral (background 0 stored as code 2,
    # tumour 2 as code 0), refused when it maps a code to a fraction
    ((25, "inconsistent-metadata", "label-scaled-integral"),
     dict(outcome="converted", edit=_scaled_label(-1.0, 2.0))),
    ((26, "inconsistent-metadata", "label-scaled-to-fractions", r"segmentation scaling \(scl_slope 1\.5, "
      r"scl_inter 0\) maps stored codes to non-integer labels \(1 -> 1\.5\)"),
     dict(edit=_scaled_label(1.5, 0.0))),
    # (the name reported is segmentation-N.nii; a segmentation without its volume is not a case)
    ((24, "missing-partner", "label-gz-missing", r"segmentation-24\.nii: file not found"),
     dict(write={"gz": True}, edit=lambda p: (p.unlink(), p.with_name("segmentation-24.nii"))[1], check=SAME)),
))

KITS_DEFECTS = tuple(_nifti("kits19", *args, **kwargs) for args, kwargs in (
    ((10, "truncated", "image-gz-truncated", r"truncated or corrupt gzip stream"),
     dict(target="image", edit=lambda p: truncate(p, 0.5), check=SAME)),
    ((11, "truncated", "label-gz-truncated", r"truncated or corrupt gzip stream"),
     dict(edit=lambda p: truncate(p, 0.7), check=SAME)),
    ((12, "random-bytes", "image-random-bytes", r"not a NIfTI-1/2 file \(no NIfTI magic"),
     dict(target="image", edit=lambda p: random_bytes(p, 20000, 112), check=SAME)),
    ((13, "empty-file", "label-empty", r"file is empty"), dict(edit=lambda p: p.write_bytes(b""), check=SAME)),
    ((14, "empty-folder", "case-folder-empty", r"imaging\.nii\.gz: file not found"),
     dict(target="image", edit=_empty_the_folder, check=SAME)),
    ((15, "missing-partner", "image-missing", r"imaging\.nii\.gz: file not found"),
     dict(target="image", edit=Path.unlink, check=SAME)),
    ((16, "wrong-size", "label-one-slice-short", r"segmentation shape \(9, 32, 32\) differs from image shape "
      r"\(10, 32, 32\)"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (d[1:].copy(), a)), check=SAME)),
    ((17, "inconsistent-metadata", "label-spacing-differs", r"segmentation affine differs from the image's by up "
      r"to 0\.2 mm"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (d, a @ np.diag([1.0, 1.0, 1.25, 1.0]))), check=SAME)),
    ((18, "wrong-dtype", "label-value-off-map", r"label values outside the label map \[0, 1, 2\]: 3 \(\d+ voxels\)"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (np.where(d == 2, 3, d).astype(np.uint8), a)))),
    ((19, "wrong-dtype", "label-float64-fractional", r"segmentation holds non-integer values"),
     dict(edit=lambda p: resave_nifti(p, lambda d, a: (d.astype(np.float64) + 0.25, a)))),
    ((20, "wrong-dtype", "image-uint16-with-intercept"),
     dict(outcome="converted", target="image", edit=_uint16_with_intercept)),
    ((21, "inconsistent-metadata", "plain-nifti-named-gz"),
     dict(outcome="converted", target="image", edit=lambda p: p.write_bytes(gzip.decompress(p.read_bytes())))),
    ((22, "inconsistent-metadata", "image-uncompressed-nii"),
     dict(outcome="converted", target="image", edit=_plain_nii_instead)),
))


# --------------------------------------------------------------------------- DICOM edits


def _empty_ct_folder(phantom) -> None:
    """Every CT slice deleted; the series folder (with LIDC's XML in it) stays."""
    for f in phantom.ct_files:
        Path(f).unlink()


def _first_of(phantom) -> Path:
    return min(Path(f) for f in phantom.ct_files)


def _duplicate_sop_uid(phantom, path: Path) -> None:
    uid = pydicom.dcmread(_first_of(phantom), stop_before_pixels=True).SOPInstanceUID

    def same(ds):
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    edit_dicom(path, same)


def _same_position(phantom, path: Path) -> None:
    position = pydicom.dcmread(_first_of(phantom), stop_before_pixels=True).ImagePositionPatient
    edit_dicom(path, lambda ds: setattr(ds, "ImagePositionPatient", position))


def _copy_slice(phantom, path: Path) -> Path:
    shutil.copy(path, path.with_name("zz-copy.dcm"))
    return path.with_name("zz-copy.dcm")


def _narrower(phantom, path: Path) -> None:
    def cut(ds):
        pixels = np.ascontiguousarray(ds.pixel_array[:, :30])
        ds.Columns = 30
        ds.PixelData = pixels.tobytes()
    edit_dicom(path, cut)


def _no_rtstruct(phantom, path: Path) -> Path:
    path.unlink()
    path.parent.rmdir()
    return Path(phantom.ct_files[0]).parent


def _rtstruct_other_series(phantom, path: Path) -> None:
    def edit(ds):
        series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        series.SeriesInstanceUID = generate_uid()
    edit_dicom(path, edit)


def _second_rtstruct(phantom, path: Path) -> None:
    copy = path.parent.parent / "rtstruct-copy" / "copy.dcm"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    edit_dicom(copy, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))


def _contours_on_absent_slices(phantom, path: Path) -> None:
    def edit(ds):
        for contour in ds.ROIContourSequence[0].ContourSequence:
            contour.ContourImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    edit_dicom(path, edit)


def _contour_off_plane(phantom, path: Path) -> None:
    def edit(ds):
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        points[:, 2] += 2.0
        contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    edit_dicom(path, edit)


def _contour_not_numbers(phantom, path: Path) -> None:
    # pydicom refuses to write a bad DS: patch the file's bytes (same length, digits -> 'x')
    contour = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence[0]
    raw = contour.get_item(0x30060050).value
    data = path.read_bytes()
    assert isinstance(raw, bytes) and data.count(raw) == 1
    path.write_bytes(data.replace(raw, re.sub(rb"[0-9]", b"x", raw)))


def _contour_coordinates_not_triples(phantom, path: Path) -> None:
    def edit(ds):
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        contour.ContourData = list(contour.ContourData)[:-1]
    edit_dicom(path, edit)


def _every_slice(edit: Callable[[pydicom.Dataset], None]) -> Callable:
    """An edit applied to every CT slice of the case; the reason names the series folder."""
    def apply(phantom, path: Path) -> Path:
        for f in phantom.ct_files:
            edit_dicom(Path(f), edit)
        return path.parent
    return apply


def _no_rescale(ds: pydicom.Dataset) -> None:
    del ds.RescaleSlope, ds.RescaleIntercept


def _raw_unsigned_without_rescale(ds: pydicom.Dataset) -> None:
    """Raw unsigned scanner values (air near 0), the rescale tags dropped: HU cannot be known."""
    raw = np.frombuffer(ds.PixelData, dtype="<i2" if ds.PixelRepresentation else "<u2")
    ds.PixelData, ds.PixelRepresentation = np.clip(raw, 0, None).astype("<u2").tobytes(), 0
    _no_rescale(ds)


def _hu_without_rescale(ds: pydicom.Dataset) -> None:
    """The stored values made HU themselves (signed), the rescale tags dropped: legal, identity LUT."""
    raw = np.frombuffer(ds.PixelData, dtype="<i2" if ds.PixelRepresentation else "<u2")
    hu = raw.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.PixelData, ds.PixelRepresentation = hu.astype("<i2").tobytes(), 1
    _no_rescale(ds)


def _dicom(source, number, kind, what, reason="", *, target="ct", edit=None, **kwargs) -> Defect:
    """A DICOM defect; ``edit(phantom, path)`` (a one-argument edit gets the path alone)."""
    return Defect(source=source, number=number, kind=kind, what=what, reason=reason, target=target, edit=edit,
                  **kwargs)


def _path_only(edit: Callable[[Path], None]) -> Callable:
    return lambda phantom, path: edit(path)


NSCLC_DEFECTS = tuple(_dicom("nsclc", *args, **kwargs) for args, kwargs in (
    ((10, "truncated", "ct-slice-truncated-in-pixels", r"truncated pixel data: 1448 bytes, expected 2048"),
     dict(edit=_path_only(lambda p: truncate(p, -600)))),
    ((11, "truncated", "ct-slice-truncated-in-header", BESIDE + r" \(no data set after the file meta"),
     dict(edit=_path_only(lambda p: truncate(p, 300)), check=r"unreadable DICOM file \(no data set")),
    ((12, "random-bytes", "ct-slice-random-bytes", BESIDE + r" \(InvalidDicomError"),
     dict(edit=_path_only(lambda p: random_bytes(p, 2500, 12)), check=r"unreadable DICOM file \(InvalidDicom")),
    ((13, "empty-file", "ct-slice-empty", BESIDE),
     dict(edit=_path_only(lambda p: p.write_bytes(b"")), check=r"unreadable DICOM file")),
    ((14, "inconsistent-metadata", "ct-orientation-differs", r"ImageOrientationPatient \[1\.0, 0\.0, 0\.0, 0\.0, "
      r"0\.995, 0\.09983\] differs from \[1\.0, 0\.0, 0\.0, 0\.0, 1\.0, 0\.0\]"),
     dict(edit=_path_only(_setter("ImageOrientationPatient", [1, 0, 0, 0, 0.9950042, 0.0998334])))),
    ((15, "inconsistent-metadata", "ct-pixel-spacing-differs", r"PixelSpacing \[1\.2, 1\.2\] differs from "
      r"\[1\.0, 1\.0\]"),
     dict(edit=_path_only(_setter("PixelSpacing", [1.2, 1.2])))),
    ((16, "wrong-size", "ct-columns-differ", r"rows/columns \(32, 30\) differ from \(32, 32\)"),
     dict(edit=_narrower)),
    ((17, "inconsistent-metadata", "ct-duplicate-sop-uid", DUPLICATE_UID), dict(edit=_duplicate_sop_uid)),
    ((18, "inconsistent-metadata", "ct-two-slices-one-position", r"two different slices at the same position"),
     dict(edit=_same_position)),
    ((19, "inconsistent-metadata", "ct-identical-copy-of-a-slice"),
     dict(outcome="converted", note=r"dropped 1 duplicate slice\(s\) identical to another", edit=_copy_slice)),
    ((20, "missing-partner", "ct-no-pixel-data", r"no pixel data"),
     dict(edit=_path_only(lambda p: edit_dicom(p, lambda ds: delattr(ds, "PixelData"))))),
    ((21, "wrong-size", "ct-pixel-data-short", r"truncated pixel data: 1000 bytes, expected 2048"),
     dict(edit=_path_only(lambda p: edit_dicom(p, lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000]))))),
    ((22, "wrong-dtype", "ct-three-samples-per-pixel", r"expected one sample per pixel, found 3"),
     dict(edit=_path_only(_setter("SamplesPerPixel", 3)))),
    ((23, "missing-partner", "rtstruct-missing", r"no RTSTRUCT refers to this CT series \(8 files\)"),
     dict(target="rtstruct", edit=_no_rtstruct, check=r"no RTSTRUCT refers to this CT series")),
    ((24, "inconsistent-metadata", "rtstruct-refers-to-other-series", r"the CT series this RTSTRUCT refers to is "
      r"not in the input folder"),
     dict(target="rtstruct", edit=_rtstruct_other_series, check=r"the CT series it names is not in the input")),
    ((25, "truncated", "rtstruct-truncated", r"RTSTRUCT lacks ROIContourSequence, .*\(truncated or incomplete "
      r"file\?\)"),
     dict(target="rtstruct", edit=_path_only(lambda p: truncate(p, 0.5)), check=SAME)),
    ((26, "random-bytes", "rtstruct-random-bytes", BESIDE),
     dict(target="rtstruct", edit=_path_only(lambda p: random_bytes(p, 3000, 26)), check=r"unreadable DICOM")),
    ((27, "empty-file", "rtstruct-empty", BESIDE),
     dict(target="rtstruct", edit=_path_only(lambda p: p.write_bytes(b"")), check=r"unreadable DICOM file")),
    ((28, "missing-partner", "rtstruct-without-gtv", r"no ROI named 'GTV-1' \(or 'GTV', 'GTV-pre-op'\); "
      r"available ROIs: \['roi-[0-9a-f]{8}'\]"),
     dict(target="rtstruct", write={"rename": {"GTV-1": "Tumour"}})),
    ((29, "missing-partner", "rtstruct-gtv-without-contours", r"ROI 'GTV-1' has no contours"),
     dict(target="rtstruct", write={"rename": {"GTV-1": "Tumour"}, "empty": ("GTV-1",)})),
    ((30, "wrong-size", "rtstruct-contours-on-absent-slices", r"ROI 'GTV-1': \d of the \d CT slices its contours "
      r"refer to are not in the series \(8 slices\)"),
     dict(target="rtstruct", edit=_contours_on_absent_slices)),
    ((31, "missing-partner", "two-rtstructs-one-series", r"2 RTSTRUCTs refer to the same CT series"),
     dict(target="rtstruct", edit=_second_rtstruct)),
    ((32, "inconsistent-metadata", "rtstruct-contour-off-its-slice", r"ROI 'GTV-1': contour 0 lies 2\.00 mm off "
      r"the plane of slice"),
     dict(target="rtstruct", edit=_contour_off_plane)),
    ((33, "wrong-dtype", "rtstruct-contour-not-numbers", r"ROI 'GTV-1': contour 0 ContourData is not a list of "
      r"numbers"),
     dict(target="rtstruct", edit=_contour_not_numbers)),
    ((34, "wrong-size", "rtstruct-contour-coordinates-not-triples", r"ROI 'GTV-1': contour 0 has \d+ coordinates, "
      r"not a multiple of 3"),
     dict(target="rtstruct", edit=_contour_coordinates_not_triples)),
    ((35, "empty-folder", "ct-series-folder-empty", r"rtstruct-[0-9a-f]+/[0-9a-f]+\.dcm: the CT series this "
      r"RTSTRUCT refers to is not in the input folder"),
     dict(target="rtstruct", edit=lambda phantom, path: _empty_ct_folder(phantom), check=r"the CT series it "
          r"names is not in the input folder")),
    # rescale (modality LUT) across the series: ctprep/formats/dicom_rescale.py
    ((36, "inconsistent-metadata", "ct-slice-without-rescale-intercept", r"inconsistent rescale: 1 of 8 slices "
      r"lack RescaleIntercept that the others carry \([0-9a-f]{12}\.dcm\)"),
     dict(edit=lambda phantom, path: (edit_dicom(path, lambda ds: delattr(ds, "RescaleIntercept")), path.parent)[1])),
    ((37, "inconsistent-metadata", "ct-no-rescale-raw-unsigned", r"no slice carries RescaleSlope/RescaleIntercept "
      r"and every stored value is >= 0 \(min \d+\): raw unsigned scanner values"),
     dict(edit=_every_slice(_raw_unsigned_without_rescale))),
    ((38, "wrong-dtype", "ct-rescale-slope-zero", r"RescaleSlope 0 is degenerate"),
     dict(edit=_path_only(_setter("RescaleSlope", "0")))),
    ((39, "inconsistent-metadata", "ct-hu-without-rescale-tags"),
     dict(outcome="converted", note=r"no RescaleSlope/RescaleIntercept on any slice: stored values taken as HU",
          edit=_every_slice(_hu_without_rescale))),
))


def _xml_sub(pattern: str, repl) -> Callable:
    def edit(phantom, path: Path) -> None:
        path.write_text(re.sub(pattern, repl, path.read_text()))
    return edit


def _no_xml(phantom, path: Path) -> Path:
    path.unlink()
    return Path(phantom.ct_files[0]).parent


def _idri_root(phantom, path: Path) -> Path:
    path.write_text(path.read_text().replace("LidcReadMessage", "IdriReadMessage"))
    return Path(phantom.ct_files[0]).parent


def _z_and_sop_off_the_series(phantom, path: Path) -> None:
    _xml_sub(r"<imageSOP_UID>[^<]*<", lambda m: f"<imageSOP_UID>{generate_uid()}<")(phantom, path)
    _xml_sub(r"<imageZposition>([^<]*)<", lambda m: f"<imageZposition>{float(m[1]) + 1000:.6f}<")(phantom, path)


def _older_xml_beside(phantom, path: Path) -> None:
    older = path.with_name("older.xml")
    older.write_text(path.read_text().replace("<DateService>2008-08-18<", "<DateService>2001-01-01<"))


def _remove_outlined_slice(phantom, path: Path) -> Path:
    """Delete an interior CT slice that a nodule outline lies on (the XML names it by SOP UID and z)."""
    from ctprep.formats.lidc_xml import parse_lidc_xml

    outlined = {roi.sop_uid for _, nodule in parse_lidc_xml(phantom.xml).nodules for roi in nodule.rois}
    for f in phantom.ct_files[1:-1]:
        if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID in outlined:
            f.unlink()
            return phantom.xml
    raise AssertionError("no interior slice holds an outline")


LIDC_DEFECTS = tuple(_dicom("lidc", *args, **kwargs) for args, kwargs in (
    ((10, "missing-partner", "xml-missing", r"no LIDC XML names this CT series \(8 files\)"),
     dict(target="xml", edit=_no_xml, check=r"no LIDC XML names this CT series")),
    ((11, "truncated", "xml-truncated", r"malformed XML \(unclosed token"),
     dict(target="xml", edit=_path_only(lambda p: truncate(p, 0.5)), check=SAME)),
    ((12, "random-bytes", "xml-random-bytes", r"malformed XML \(not well-formed"),
     dict(target="xml", edit=_path_only(lambda p: random_bytes(p, 4000, 12)), check=SAME)),
    ((13, "empty-file", "xml-empty", r"malformed XML \(no element found"),
     dict(target="xml", edit=_path_only(lambda p: p.write_bytes(b"")), check=SAME)),
    ((14, "inconsistent-metadata", "xml-names-other-series", r"the CT series this XML names \(ResponseHeader "
      r"SeriesInstanceUid\) is not in the input folder"),
     dict(target="xml", edit=_xml_sub(r"<SeriesInstanceUid>[^<]*<", lambda m: f"<SeriesInstanceUid>{generate_uid()}<"),
          check=r"the CT series it names is not in the input folder")),
    ((15, "wrong-size", "xml-z-and-sop-not-in-series", r"nodule 'Nodule 001': roi at z=\d+(\.\d+)? mm \(SOP [\d.]+\) "
      r"is on no slice of the series"),
     dict(target="xml", edit=_z_and_sop_off_the_series)),
    ((16, "inconsistent-metadata", "xml-sop-uids-not-in-series"),
     dict(outcome="converted", note=r'"nodules": \[\{"nodule": 1, "n_readers": 4',
          target="xml", edit=_xml_sub(r"<imageSOP_UID>[^<]*<", lambda m: f"<imageSOP_UID>{generate_uid()}<"))),
    ((17, "wrong-size", "xml-points-outside-image", r"roi at z=-?[\d.]+ mm has points outside the 32x32 image"),
     dict(target="xml", edit=_xml_sub(r"<xCoord>\d+<", "<xCoord>500<"))),
    ((18, "wrong-dtype", "xml-z-not-a-number", r"imageZposition 'abc' is not a number"),
     dict(target="xml", edit=_xml_sub(r"<imageZposition>[^<]*<", "<imageZposition>abc<"), check=SAME)),
    ((19, "wrong-dtype", "xml-inclusion-not-boolean", r"inclusion must be TRUE or FALSE, found 'MAYBE'"),
     dict(target="xml", edit=_xml_sub(r"<inclusion>TRUE<", "<inclusion>MAYBE<"), check=SAME)),
    ((20, "wrong-dtype", "xml-coordinate-not-a-number", r"edge point \('x1', '\d+'\) is not a pair of numbers"),
     dict(target="xml", edit=_xml_sub(r"<xCoord>\d+<", "<xCoord>x1<"), check=SAME)),
    ((21, "missing-partner", "xml-of-chest-radiographs", r"no LIDC XML names this CT series"),
     dict(target="xml", edit=_idri_root, check=SAME)),
    ((22, "inconsistent-metadata", "two-xmls-one-series"),
     dict(outcome="converted", note=r'"superseded_xml": \[".*/x-[0-9a-f]{12}\.xml"\]', target="xml", edit=_older_xml_beside)),
    ((23, "missing-partner", "ct-slice-with-an-outline-missing", r"roi at z=-?[\d.]+ mm \(SOP [\d.]+\) is on no "
      r"slice of the series"),
     dict(target="xml", edit=_remove_outlined_slice)),
    ((24, "truncated", "ct-slice-truncated", r"truncated pixel data: 1448 bytes, expected 2048"),
     dict(edit=_path_only(lambda p: truncate(p, -600)))),
    ((25, "random-bytes", "ct-slice-random-bytes", BESIDE),
     dict(edit=_path_only(lambda p: random_bytes(p, 2500, 25)), check=r"unreadable DICOM file")),
    ((26, "inconsistent-metadata", "ct-pixel-spacing-differs", r"PixelSpacing \[0\.9, 0\.9\] differs from "
      r"\[0\.7, 0\.7\]"),
     dict(edit=_path_only(_setter("PixelSpacing", [0.9, 0.9])))),
    ((27, "inconsistent-metadata", "ct-identical-copy-of-a-slice"),
     dict(outcome="converted", note=r"dropped 1 duplicate slice\(s\) identical to another", edit=_copy_slice)),
    ((28, "inconsistent-metadata", "ct-duplicate-sop-uid", DUPLICATE_UID), dict(edit=_duplicate_sop_uid)),
    ((29, "empty-folder", "ct-series-folder-empty", r"[0-9a-f]+\.xml: the CT series this XML names \(ResponseHeader "
      r"SeriesInstanceUid\) is not in the input folder"),
     dict(target="xml", edit=lambda phantom, path: _empty_ct_folder(phantom), check=r"the CT series it names is "
          r"not in the input folder")),
))


# --------------------------------------------------------------------------- DeepLesion


def dl_row(patient: int, *, key: int = DL_KEY, slice_range=(1, DL_SLICES), size=(DL_SIZE, DL_SIZE),
           spacing=(0.8, 0.8, 2.5), coords=(11, 16, 21, 16, 16, 13, 16, 19), diameters=(10, 6), split=1,
           lesion_type=-1, file_key: int | None = None) -> dict:
    """A DL_info.csv row of series ``<patient>_01_01``: one lesion, long axis 10 px, short 6 px."""
    return {
        "File_name": f"{patient:06d}_01_01_{(file_key or key):03d}.png", "Patient_index": patient,
        "Study_index": 1, "Series_ID": 1, "Key_slice_index": key,
        "Measurement_coordinates": numbers_text(coords), "Bounding_boxes": numbers_text((6, 8, 26, 24)),
        "Lesion_diameters_Pixel_": numbers_text(diameters), "Normalized_lesion_location": "0.5, 0.5, 0.5",
        "Coarse_lesion_type": lesion_type, "Possibly_noisy": 0,
        "Slice_range": f"{slice_range[0]}, {slice_range[1]}", "Spacing_mm_px_": numbers_text(spacing),
        "Image_size": f"{size[0]}, {size[1]}", "DICOM_windows": "-175, 275", "Patient_gender": "F",
        "Patient_age": 60, "Train_Val_Test": split,
    }


def dl_png(root: Path, patient: int, number: int) -> Path:
    return root / "Images_png" / f"{patient:06d}_01_01" / f"{number:03d}.png"


def _dl_series(root: Path, patient: int) -> dict[int, np.ndarray]:
    """Write slices 1..DL_SLICES of one series; returns slice number -> HU written."""
    hu, _ = make_phantom((DL_SLICES, DL_SIZE, DL_SIZE), (2.5, 0.8, 0.8), organ="liver", seed=patient)
    planes = {number: hu[DL_SLICES - number] for number in range(1, DL_SLICES + 1)}
    for number, plane in planes.items():
        write_png16(dl_png(root, patient, number), plane)
    return planes


def _png_edit(number_offset: int, change: Callable[[Path], None]) -> Callable:
    def edit(root: Path, patient: int) -> Path:
        path = dl_png(root, patient, DL_KEY + number_offset)
        change(path)
        return path
    return edit


def _imwrite(array: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import cv2

        assert cv2.imwrite(str(path), array)
    return write


def _empty_series_folder(root: Path, patient: int) -> Path:
    for number in range(1, DL_SLICES + 1):
        dl_png(root, patient, number).unlink()
    return dl_png(root, patient, DL_KEY - 2)  # the first slice read (ascending slice numbers)


def _dl(number, kind, what, reason="", *, row=None, extra_rows=(), key=DL_KEY, **kwargs) -> Defect:
    write = {"row": row or dl_row(number), "extra_rows": tuple(extra_rows), "key": key}
    return Defect(source="deeplesion", number=number, kind=kind, what=what, reason=reason, write=write, **kwargs)


DEEPLESION_DEFECTS = tuple(_dl(*args, **kwargs) for args, kwargs in (
    ((10, "missing-partner", "key-png-missing", r"slice PNG not found \(its slice lies within the row's "
      r"Slice_range"),
     dict(edit=_png_edit(0, Path.unlink), check=r"slice PNG not found")),
    ((11, "empty-folder", "series-folder-empty", r"slice PNG not found"),
     dict(edit=_empty_series_folder, check=SAME)),
    ((12, "truncated", "context-png-truncated", r"not a readable PNG"),
     dict(edit=_png_edit(-1, lambda p: truncate(p, 0.5)))),
    ((13, "random-bytes", "key-png-random-bytes", r"not a readable PNG"),
     dict(edit=_png_edit(0, lambda p: random_bytes(p, 900, 13)), check=r"not a PNG")),
    ((14, "empty-file", "key-png-empty", r"not a readable PNG"),
     dict(edit=_png_edit(0, lambda p: p.write_bytes(b"")), check=r"not a PNG")),
    ((15, "wrong-dtype", "key-png-8-bit", r"8-bit PNG; DeepLesion slices are 16-bit"),
     dict(edit=_png_edit(0, _imwrite(np.full((DL_SIZE, DL_SIZE), 100, np.uint8))),
          check=r"8-bit PNG of colour type 0")),
    ((16, "wrong-dtype", "key-png-rgb-16-bit", r"expected a grey-level slice, found 3 channels"),
     dict(edit=_png_edit(0, _imwrite(np.full((DL_SIZE, DL_SIZE, 3), 32768, np.uint16))),
          check=r"16-bit PNG of colour type 2")),
    ((17, "wrong-size", "context-png-narrower", r"slice is 30x32 \(width x height\) but the row's Image_size says "
      r"32x32"),
     dict(edit=_png_edit(1, _imwrite(np.full((DL_SIZE, 30), 32768, np.uint16))), check=r"slice is 30x32")),
    ((18, "inconsistent-metadata", "image-size-column-contradicts-png", r"slice is 32x32 \(width x height\) but "
      r"the row's Image_size says 64x64"),
     dict(row=dl_row(18, size=(64, 64)), edit=_png_edit(-2, lambda p: None), check=SAME)),
    ((19, "wrong-size", "key-slice-past-the-series", r"slice PNG not found"),
     dict(key=40, row=dl_row(19, key=40, slice_range=(38, 42)), edit=_png_edit(34, lambda p: None), check=SAME)),
    ((20, "wrong-size", "recist-outside-the-image", r"no usable lesion \(row \d+: RECIST point\(s\) \(41, 16\) "
      r"outside the 32x32 image\)"),
     dict(row=dl_row(20, coords=(11, 16, 41, 16, 26, 13, 26, 19), diameters=(30, 6)))),
    ((21, "inconsistent-metadata", "slice-range-excludes-key", r"Slice_range 5, 7 must contain the key slice 4"),
     dict(row=dl_row(21, slice_range=(5, 7)), check=SAME)),
    ((22, "wrong-dtype", "spacing-zero", r"Spacing_mm_px_ must be 3 positive mm values, found 0\.8, 0\.0, 2\.5"),
     dict(row=dl_row(22, spacing=(0.8, 0.0, 2.5)), check=SAME)),
    ((23, "inconsistent-metadata", "rows-disagree-on-spacing", r"rows \d+, \d+ disagree on Spacing_mm_px_ "
      r"\(0\.7, 0\.7, 2\.5 vs 0\.8, 0\.8, 2\.5\)"),
     dict(extra_rows=[dl_row(23, spacing=(0.7, 0.7, 2.5), coords=(8, 8, 12, 8, 10, 7, 10, 9), diameters=(4, 2))],
          check=SAME)),
    ((24, "wrong-dtype", "split-not-1-2-3", r"Train_Val_Test must be 1 \(train\), 2 \(val\) or 3 \(test\), "
      r"found '4'"),
     dict(row=dl_row(24, split=4), check=SAME)),
    ((25, "wrong-size", "coordinates-six-numbers", r"no usable lesion \(row \d+: Measurement_coordinates needs 8 "
      r"numbers, found 6"),
     dict(row=dl_row(25, coords=(11, 16, 21, 16, 16, 13)))),
    ((26, "inconsistent-metadata", "diameters-contradict-axes", r"Lesion_diameters_Pixel_ long 20 px differs from "
      r"its axis' length 10\.000 px"),
     dict(row=dl_row(26, diameters=(20, 6)))),
    ((27, "inconsistent-metadata", "key-index-contradicts-file-name", r"Key_slice_index 5 differs from File_name's "
      r"slice 000027_01_01_004\.png"),
     dict(row=dl_row(27, key=5, file_key=4), check=SAME)),
    ((28, "wrong-dtype", "spacing-not-finite", r"Spacing_mm_px_ '0\.8, nan, 2\.5' has a non-finite value"),
     dict(row={**dl_row(28), "Spacing_mm_px_": "0.8, nan, 2.5"}, check=SAME)),
    ((29, "wrong-dtype", "lesion-type-out-of-range", r"Coarse_lesion_type must be -1 or 1\.\.8, found 12"),
     dict(row=dl_row(29, lesion_type=12))),
    ((30, "empty-folder", "key-png-is-a-folder", r"slice PNG not found"),
     dict(edit=_png_edit(0, _folder_instead), check=SAME)),
    ((31, "wrong-size", "second-lesion-row-malformed"),
     dict(outcome="converted", note=r'"rejected_lesions": \[\{"source_row": \d+, "reason": "row \d+: '
          r'Measurement_coordinates needs 8 numbers, found 3', extra_rows=[dl_row(31, coords=(1, 2, 3))])),
    ((34, "wrong-size", "second-lesion-row-missing-fields"),
     dict(outcome="converted", note=r'"rejected_lesions": \[\{"source_row": \d+, "reason": "row \d+: '
          r'fields missing: Slice_range, Spacing_mm_px_', extra_rows=[{**dl_row(34), "Slice_range": "",
                                                                     "Spacing_mm_px_": " "}])),
    ((32, "wrong-size", "context-past-the-released-range"),
     dict(outcome="converted", note=r'"clamped_rows": \[3, 4\]', key=1, row=dl_row(32, key=1))),
    # The CSV's last row, cut in the middle when the file is truncated (see build_deeplesion).
    ((33, "truncated", "csv-truncated-in-last-row", r"no usable lesion \(row \d+: fields missing: .*Slice_range"),
     dict(check=SAME)),
))

DEFECTS: dict[str, tuple[Defect, ...]] = {"lits": LITS_DEFECTS, "kits19": KITS_DEFECTS, "nsclc": NSCLC_DEFECTS,
                                          "lidc": LIDC_DEFECTS, "deeplesion": DEEPLESION_DEFECTS}
ALL_DEFECTS: tuple[Defect, ...] = tuple(d for defects in DEFECTS.values() for d in defects)


# --------------------------------------------------------------------------- whole downloads


def _only_random_dcm(folder: Path) -> None:
    (folder / "LUNG1-001").mkdir()
    for n in range(3):
        random_bytes(folder / "LUNG1-001" / f"{n}.dcm", 2000, n)


def _only_an_xml(folder: Path) -> None:
    for f in write_lidc_case(folder, 7, shape=DICOM_SHAPE).ct_files:
        f.unlink()


BROKEN_DOWNLOADS = tuple(
    [BrokenDownload(source=s, kind="empty-folder", what="empty-input-folder", error=rf"no {s} cases found")
     for s in SOURCES] + [
        BrokenDownload(source="lits", kind="random-bytes", what="only-a-random-volume",
                       skipped=r"volume-3\.nii: not a NIfTI-1/2 file",
                       write=lambda f: random_bytes(f / "volume-3.nii", 5000, 3)),
        BrokenDownload(source="nsclc", kind="random-bytes", what="only-random-dcm-files",
                       error=r"no nsclc cases found", write=_only_random_dcm),
        BrokenDownload(source="lidc", kind="missing-partner", what="only-an-xml",
                       skipped=r"\.xml: the CT series this XML names .* is not in the input folder",
                       write=_only_an_xml),
        BrokenDownload(source="deeplesion", kind="random-bytes", what="csv-random-bytes",
                       error=r"DL_info\.csv: not a UTF-8 text file \(byte 0",
                       write=lambda f: random_bytes(f / "DL_info.csv", 3000, 7)),
        BrokenDownload(source="deeplesion", kind="empty-file", what="csv-empty",
                       error=r"DL_info\.csv: not a DeepLesion DL_info\.csv: columns File_name, .* missing",
                       write=lambda f: (f / "DL_info.csv").write_bytes(b"")),
        BrokenDownload(source="deeplesion", kind="truncated", what="csv-truncated-in-header",
                       error=r"DL_info\.csv: not a DeepLesion DL_info\.csv: columns Study_index, .* missing",
                       write=lambda f: (f / "DL_info.csv").write_text("File_name,Patient_index,Study_in")),
        BrokenDownload(source="deeplesion", kind="wrong-dtype", what="csv-with-nul-bytes",
                       error=r"DL_info\.csv: (not a DeepLesion DL_info\.csv|malformed CSV)",
                       write=lambda f: (f / "DL_info.csv").write_bytes(b"File_name,\x00Patient_index\n\x00,1\n")),
        BrokenDownload(source="deeplesion", kind="missing-partner", what="images-folder-missing",
                       skipped=r"Images_png/000001_01_01/002\.png: slice PNG not found",
                       write=lambda f: write_dl_info(f / "DL_info.csv", [dl_row(1)])),
    ])


# --------------------------------------------------------------------------- writing


def _resolve(root: Path, defect: Defect, case_id: str, target: Path, named) -> BadCase:
    """The written case; ``named`` is what the edit returned (a path to name instead of ``target``)."""
    path = Path(named) if isinstance(named, (str, Path)) else target  # edits may return a byte count
    return BadCase(defect=defect, case_id=case_id, file=path.relative_to(root).as_posix())


def _nifti_good(source: str, numbers, organ: str, case_id: Callable[[int], str]) -> tuple[GoodCase, ...]:
    specs = load_dataset_manifest(source).labels
    out = []
    for number in numbers:
        hu, seg = make_phantom(NIFTI_SHAPE, NIFTI_SPACING, organ=organ, seed=number)
        out.append(GoodCase(case_id=case_id(number), hu=hu,
                            labels={s.name: np.isin(seg, s.values).astype(np.uint8) for s in specs}))
    return tuple(out)


def build_lits(root: Path) -> SourceCorpus:
    write_lits_case(root, 0, shape=NIFTI_SHAPE, spacing=NIFTI_SPACING)
    write_lits_case(root, 1, shape=NIFTI_SHAPE, spacing=NIFTI_SPACING, axcodes=("L", "P", "S"), gz=True)
    bad = []
    for d in LITS_DEFECTS:
        image, label = write_lits_case(root, d.number, shape=NIFTI_SHAPE, spacing=NIFTI_SPACING, **d.write)
        target = image if d.target == "image" else label
        bad.append(_resolve(root, d, f"volume-{d.number}", target, d.edit(target) if d.edit else None))
    repaired = [d.number for d in LITS_DEFECTS if d.outcome == "converted"]
    good = _nifti_good("lits", [0, 1, *repaired], "liver", lambda n: f"volume-{n}")
    return SourceCorpus(source="lits", root=root, good=good, bad=tuple(bad))


def build_kits19(root: Path) -> SourceCorpus:
    for number in (0, 1):
        write_kits19_case(root, number, shape=NIFTI_SHAPE, spacing=NIFTI_SPACING)
    bad = []
    for d in KITS_DEFECTS:
        folder = write_kits19_case(root, d.number, shape=NIFTI_SHAPE, spacing=NIFTI_SPACING)
        target = folder / ("imaging.nii.gz" if d.target == "image" else "segmentation.nii.gz")
        bad.append(_resolve(root, d, folder.name, target, d.edit(target) if d.edit else None))
    repaired = [d.number for d in KITS_DEFECTS if d.outcome == "converted"]
    good = _nifti_good("kits19", [0, 1, *repaired], "kidney", lambda n: f"case_{n:05d}")
    return SourceCorpus(source="kits19", root=root, good=good, bad=tuple(bad))


def _nsclc(root: Path, number: int, **kwargs):
    return write_nsclc_case(root, number, shape=DICOM_SHAPE, spacing=NSCLC_SPACING, origin=NSCLC_ORIGIN,
                            lungs=False, **kwargs)


def _dicom_target(phantom, target: str) -> Path:
    """The file an edit gets: ``ct`` = the series file read last (files are read in path order,
    so a differing slice is the one named, not the first), ``rtstruct``, ``xml``."""
    if target == "ct":
        return max(Path(f) for f in phantom.ct_files)
    return Path(phantom.rtstruct if target == "rtstruct" else phantom.xml)


def build_nsclc(root: Path) -> SourceCorpus:
    good = []
    for number in (1, 2):
        phantom = _nsclc(root, number)
        # rt-utils' polygons round-trip a mask only approximately on a 32 x 32 grid
        good.append(GoodCase(case_id=phantom.patient, hu=phantom.hu,
                             labels={"tumour": phantom.rois["GTV-1"].astype(np.uint8)}, min_dice=0.6))
    bad = []
    for d in NSCLC_DEFECTS:
        phantom = _nsclc(root, d.number, **d.write)
        target = _dicom_target(phantom, d.target)
        bad.append(_resolve(root, d, phantom.patient, target, d.edit(phantom, target) if d.edit else None))
    return SourceCorpus(source="nsclc", root=root, good=tuple(good), bad=tuple(bad))


def build_lidc(root: Path) -> SourceCorpus:
    good = tuple(GoodCase(case_id=p.patient, hu=p.hu)
                 for p in (write_lidc_case(root, number, shape=DICOM_SHAPE) for number in (1, 2)))
    bad = []
    for d in LIDC_DEFECTS:
        phantom = write_lidc_case(root, d.number, shape=DICOM_SHAPE)
        target = _dicom_target(phantom, d.target)
        bad.append(_resolve(root, d, phantom.patient, target, d.edit(phantom, target) if d.edit else None))
    return SourceCorpus(source="lidc", root=root, good=good, bad=tuple(bad))


def build_deeplesion(root: Path) -> SourceCorpus:
    rows: list[dict] = []
    good = []
    for patient in (1, 2):
        planes = _dl_series(root, patient)
        rows.append(dl_row(patient, split=patient))
        stored = np.stack([planes[DL_KEY + 2 - k] for k in range(5)])  # rows in descending slice number
        good.append(GoodCase(case_id=f"{patient:06d}_01_01_{DL_KEY:03d}", hu=stored))
    bad = []
    info = root / "DL_info.csv"
    for d in DEEPLESION_DEFECTS:
        _dl_series(root, d.number)
        rows += [d.write["row"], *d.write["extra_rows"]]
        named = d.edit(root, d.number) if d.edit else None
        case_id = f"{d.number:06d}_01_01_{d.write['key']:03d}"
        bad.append(_resolve(root, d, case_id, info, named))
    write_dl_info(info, rows)
    _cut_last_row(info, "000033_01_01_004.png")
    return SourceCorpus(source="deeplesion", root=root, good=tuple(good), bad=tuple(bad))


def _cut_last_row(info: Path, file_name: str) -> None:
    """Truncate DL_info.csv inside its last row's Measurement_coordinates (a download cut short)."""
    text = info.read_bytes().rstrip(b"\n")
    start = text.rindex(b"\n") + 1
    assert text[start:].startswith(file_name.encode()), "the row to cut must be the CSV's last"
    info.write_bytes(text[:text.index(b'"11, 16', start) + 4])


BUILDERS = {"lits": build_lits, "kits19": build_kits19, "nsclc": build_nsclc, "lidc": build_lidc,
            "deeplesion": build_deeplesion}


def build_corpus(root: str | Path) -> Corpus:
    """Write every source folder (``<root>/<source>/``) and the broken downloads (``<root>/downloads/``)."""
    root = Path(root)
    corpus = Corpus(root=root, sources={name: build(root / name) for name, build in BUILDERS.items()})
    for broken in BROKEN_DOWNLOADS:
        folder = corpus.download(broken)
        folder.mkdir(parents=True)
        if broken.write:
            broken.write(folder)
    return corpus
