"""Conversion streamed slab by slab (issue 19): the same store as the whole-volume path, bad input found
part way leaves no trace, the NIfTI slab reader reads and hashes a file in one pass, read_ahead."""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.errors import CaseInputError
from ctprep.formats.nifti import read_nifti
from ctprep.formats.nifti_stream import NiftiSlabReader
from ctprep.slabs import SLAB_SLICES, read_ahead
from ctprep.sources import get_source
from ctprep.store import SliceStore
from ctprep.windowing import parse_window

# More slices than two slabs, so every case streams in three, the last one short.
TALL = (2 * SLAB_SLICES + 7, 40, 40)
# axcodes of the file's voxel axes, gzip: head first, feet first (slabs come from the top), and a
# layout whose last axis is not the slice axis (KiTS19's: read in passes, each keeping a range of slices).
CASES = {0: ("Batch", ("R", "A", "S"), True), 1: ("Batch", ("R", "A", "I"), False),
         2: ("Batch", ("S", "R", "A"), True)}


@pytest.fixture(scope="module")
def tall_lits(tmp_path_factory, ct):
    return ct.write_lits(tmp_path_factory.mktemp("tall") / "lits", CASES, shape=TALL)


def _convert(root: Path, output: Path, **kwargs):
    return convert_dataset(ConvertConfig(source="lits", input_dir=str(root), output=str(output),
                                         windows=(parse_window("liver"), parse_window("100:400/eq")), **kwargs),
                           progress=False)


def _whole(monkeypatch, convert):
    """``convert()`` through the path that loads each case whole (``Source.stream``'s default, and no
    lesion counts without the image): the reference the streamed stores must equal."""
    from ctprep.sources.base import NiftiPairSource, Source
    from ctprep.sources.dicom_stream import HeadersFirstSource

    with monkeypatch.context() as m:
        for cls in (NiftiPairSource, HeadersFirstSource):
            m.setattr(cls, "stream", Source.stream)
            m.setattr(cls, "lesion_stream", Source.lesion_stream)
        return convert()


def _chunks(store: Path, case_id: str) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "cases" / case_id).rglob("c.*"))}


def test_streamed_cases_equal_the_phantom_and_the_whole_volume_path(tall_lits, tmp_path, monkeypatch):
    streamed, whole = tmp_path / "streamed.zarr", tmp_path / "whole.zarr"
    report = _convert(tall_lits.root, streamed, keep_hu=True)
    assert [o.status for o in report.outcomes] == ["converted"] * 3
    _whole(monkeypatch, lambda: _convert(tall_lits.root, whole, keep_hu=True))
    stream_store, whole_store = SliceStore.open(streamed), SliceStore.open(whole)
    source = get_source("lits")
    refs = {r.case_id: r for r in source.discover(tall_lits.root)}
    for case_id in tall_lits.case_ids:
        assert _chunks(streamed, case_id) == _chunks(whole, case_id), case_id
        a, b = stream_store.record(case_id), whole_store.record(case_id)
        assert a.to_dict() | {"parameters": None} == b.to_dict() | {"parameters": None}
        hu, _ = tall_lits.phantom(case_id)
        data = stream_store.read_case(case_id, hu=True)
        assert np.array_equal(data.hu, hu)
        for name, expected in tall_lits.labels(case_id).items():
            assert np.array_equal(data.labels[name], expected), (case_id, name)
        assert list(a.lesion_pixels) == [int(n) for n in np.count_nonzero(tall_lits.labels(case_id)["tumour"],
                                                                          axis=(1, 2))]
        assert stream_store.recorded_checksums(case_id) == whole_store.recorded_checksums(case_id)
        # the inputs hashed while streaming are the files' sha256
        inputs = {e["role"]: e for e in report.outcomes[tall_lits.case_ids.index(case_id)].inputs}
        assert inputs["image"]["sha256"] == hashlib.sha256(refs[case_id].path("image").read_bytes()).hexdigest()
    # all three stream: slices along the file's last axis, feet first, and slices along its first axis
    streams = [source.stream(refs[c]) for c in tall_lits.case_ids]
    starts = [[slab.start for slab in s.slabs] for s in streams]
    assert starts == [[0, SLAB_SLICES, 2 * SLAB_SLICES], [SLAB_SLICES + 7, 7, 0], [0, SLAB_SLICES, 2 * SLAB_SLICES]]


@pytest.mark.parametrize("axcodes", [("S", "R", "A"), ("I", "P", "L"), ("R", "I", "A")])
def test_a_case_whose_slice_axis_is_not_the_files_last_streams_in_passes(tmp_path, ct, monkeypatch, axcodes):
    """KiTS19 stores z first: each pass inflates both files and keeps one range of slices. With a budget of
    one slab a pass, the 71 slices take three passes; the store equals the whole-volume path's, the
    inputs are hashed once, and no pass holds more than its budget of slices."""
    from ctprep.formats import nifti_stream
    from ctprep.sources.base import NiftiPairSource

    folder = tmp_path / "lits"
    dataset = ct.write_lits(folder, {0: ("Batch", axcodes, True)}, shape=TALL)
    plane = TALL[1] * TALL[2] * (2 + 1)  # int16 image + uint8 segmentation
    monkeypatch.setattr(NiftiPairSource, "pass_bytes", SLAB_SLICES * plane)
    kept = []
    read_range = nifti_stream.NiftiSlabReader.read_range
    monkeypatch.setattr(nifti_stream.NiftiSlabReader, "read_range",
                        lambda self, *a: kept.append(a) or read_range(self, *a))
    streamed, whole = tmp_path / "streamed.zarr", tmp_path / "whole.zarr"
    report = _convert(folder, streamed, keep_hu=True)
    _whole(monkeypatch, lambda: _convert(folder, whole, keep_hu=True))
    assert report.outcomes[0].status == "converted", report.outcomes[0].reason
    axis = kept[0][0]
    assert sorted(set(kept)) == [(axis, 0, 32), (axis, 32, 64), (axis, 64, 71)] and len(kept) == 6
    assert _chunks(streamed, "volume-0") == _chunks(whole, "volume-0")
    data = SliceStore.open(streamed).read_case("volume-0", hu=True)
    assert np.array_equal(data.hu, dataset.phantom("volume-0")[0])
    assert np.array_equal(data.labels["tumour"], dataset.labels("volume-0")["tumour"])
    inputs = {e["role"]: e for e in report.outcomes[0].inputs}
    for role, name in (("image", "volume-0.nii.gz"), ("label", "segmentation-0.nii.gz")):
        assert inputs[role]["sha256"] == hashlib.sha256((folder / "Batch" / name).read_bytes()).hexdigest()


def _truncate_gz_mid_voxels(path: Path) -> None:
    """Keep the gzip stream only up to about 50 slices of voxels: the first slab whole, the second short."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[:len(gzip.compress(raw[:352 + TALL[1] * TALL[2] * 2 * 50]))])


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("S", "R", "A")])  # read a slab at a time, or in passes
def test_input_found_bad_part_way_leaves_no_trace(tall_lits, tmp_path, ct, axcodes):
    folder = tmp_path / "lits"
    ct.write_lits(folder, {0: CASES[0], 3: ("Batch", axcodes, True)}, shape=TALL)
    _truncate_gz_mid_voxels(folder / "Batch" / "volume-3.nii.gz")
    output = tmp_path / "out.zarr"
    report = _convert(folder, output)
    status = {o.case_id: (o.status, o.reason) for o in report.outcomes}
    assert status["volume-0"][0] == "converted"
    assert status["volume-3"][0] == "skipped" and "volume-3.nii.gz" in status["volume-3"][1]
    assert "truncated or corrupt gzip stream" in status["volume-3"][1]
    store = SliceStore.open(output)
    assert store.case_ids() == ["volume-0"] and store.incomplete_case_ids() == []
    assert not (output / "cases" / "volume-3").exists()


def test_a_label_value_outside_the_map_in_a_later_slab_is_counted_over_the_whole_file(tmp_path, ct):
    import nibabel as nib

    folder = tmp_path / "lits"
    ct.write_lits(folder, {0: CASES[0]}, shape=TALL)
    path = folder / "Batch" / "segmentation-0.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[:3, :2, -1] = 7  # the last slab only (RAS: the last axis is z)
    data[:1, :1, 0] = 7  # and one voxel of the first
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
    report = _convert(folder, tmp_path / "out.zarr")
    assert report.outcomes[0].status == "skipped"
    assert "label values outside the label map [0, 1, 2]: 7 (7 voxels)" in report.outcomes[0].reason


def test_the_slab_reader_reads_a_file_as_read_nifti_does_in_one_pass(tall_lits):
    for path in sorted(tall_lits.root.rglob("*.nii*")):
        whole = read_nifti(path)
        with NiftiSlabReader(path) as reader:
            parts, done = [], 0
            while done < reader.shape[2]:
                parts.append(reader.read(min(5, reader.shape[2] - done)))
                done += parts[-1].shape[2]
            size, sha256 = reader.finish()
        assert np.array_equal(np.concatenate(parts, axis=2), whole.array.reshape(reader.shape, order="A"))
        assert (size, sha256) == (whole.size, whole.sha256) == (path.stat().st_size,
                                                               hashlib.sha256(path.read_bytes()).hexdigest())


def test_the_slab_reader_refuses_a_stream_inflating_past_its_header(tmp_path, ct):
    folder = tmp_path / "lits"
    ct.write_lits(folder, {0: CASES[0]}, shape=(4, 16, 16))
    path = folder / "Batch" / "volume-0.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + bytes(3 << 20)))
    with NiftiSlabReader(path) as reader:
        reader.read(4)
        with pytest.raises(CaseInputError, match="decompression bomb"):
            reader.finish()


def test_read_ahead_hands_over_items_and_errors_and_stops_its_producer():
    assert list(read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise CaseInputError("x.nii", "bad on the way")

    items = read_ahead(failing())
    assert next(items) == 1
    with pytest.raises(CaseInputError, match="bad on the way"):
        next(items)
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.set()

    ahead = read_ahead(endless())
    next(ahead)
    ahead.close()  # the consumer stops early: the producer's generator is closed
    assert closed.wait(5)


# ---- DICOM: headers first, then the pixels slab by slab ------------------------------------------

def _feet_first_case(root: Path) -> None:
    """LUNG1-001 scanned feet first: its slices ascend along a normal pointing inferior, so the
    canonical grid runs the other way and the slabs come from the top."""
    from ctprep.phantoms.dicom import FEET_FIRST_SUPINE, write_ct_series
    from ctprep.phantoms.nsclc import make_chest_phantom, write_rtstruct

    hu, rois = make_chest_phantom((2 * SLAB_SLICES + 5, 48, 48), seed=3)
    study = root / "LUNG1-001" / "study"
    files = write_ct_series(study / "ct", hu, orientation=FEET_FIRST_SUPINE, patient_id="LUNG1-001", seed=3)
    write_rtstruct(files, rois, study / "rtstruct" / "rs.dcm")


@pytest.mark.parametrize("layout", ["nsclc head first", "nsclc feet first", "lidc", "own dicom"])
def test_a_dicom_case_streamed_equals_the_whole_volume_path(tmp_path, monkeypatch, layout):
    from ctprep.phantoms.lidc import write_lidc_case
    from ctprep.phantoms.nsclc import write_nsclc_case

    root = tmp_path / "download"
    if layout == "nsclc head first":
        write_nsclc_case(root, 1, shape=(2 * SLAB_SLICES + 5, 48, 48), tumours=2)
    elif layout in ("nsclc feet first", "own dicom"):  # own DICOM: --source dicom on an RTSTRUCT case
        _feet_first_case(root)
    else:
        write_lidc_case(root, 1, shape=(2 * SLAB_SLICES + 5, 48, 48))
    name = {"lidc": "lidc", "own dicom": "dicom"}.get(layout, "nsclc")
    case_id = get_source(name).discover(root)[0].case_id
    streamed, whole = tmp_path / "streamed.zarr", tmp_path / "whole.zarr"
    config = dict(source=name, input_dir=str(root), keep_hu=True)
    convert_dataset(ConvertConfig(output=str(streamed), **config), progress=False)
    _whole(monkeypatch, lambda: convert_dataset(ConvertConfig(output=str(whole), **config), progress=False))
    source = get_source(name)
    stream = source.stream(source.discover(root)[0])
    feet_first = layout in ("nsclc feet first", "own dicom")
    starts = [SLAB_SLICES + 5, 5, 0] if feet_first else [0, SLAB_SLICES, 2 * SLAB_SLICES]
    assert [slab.start for slab in stream.slabs] == starts  # streamed, not loaded
    assert _chunks(streamed, case_id) == _chunks(whole, case_id)
    a, b = SliceStore.open(streamed).record(case_id), SliceStore.open(whole).record(case_id)
    assert a.to_dict() | {"parameters": None} == b.to_dict() | {"parameters": None}
    assert a.annotations["ct"] == b.annotations["ct"]


@pytest.mark.parametrize("layout", ["lits", "lits slices first", "nsclc", "own dicom"])
def test_lesion_slices_are_streamed_and_equal_the_whole_volume_path(tmp_path, ct, monkeypatch, layout):
    """--slices lesion+K: the lesion label counted without the image (Source.lesion_stream), then the case
    streamed keeping those slices; the case is never loaded whole, the store equals the whole path's."""
    from ctprep.phantoms.nsclc import write_nsclc_case
    from ctprep.sources.base import NiftiPairSource
    from ctprep.sources.dicom_stream import HeadersFirstSource

    root = tmp_path / "download"
    if layout.startswith("lits"):
        ct.write_lits(root, {0: CASES[2] if layout.endswith("first") else CASES[0]}, shape=TALL)
    else:
        write_nsclc_case(root, 1, shape=(2 * SLAB_SLICES + 5, 48, 48), tumours=2)
    name = {"own dicom": "dicom"}.get(layout, layout.split()[0])
    source = get_source(name)
    ref = source.discover(root)[0]
    loaded = source.load(ref)
    lesion = np.asarray(loaded.labels[source.manifest.lesion_label])
    assert np.array_equal(source.lesion_stream(ref)[0], np.count_nonzero(lesion, axis=(1, 2)))
    config = dict(source=name, input_dir=str(root), keep_hu=True, slices="lesion+2")
    streamed, whole = tmp_path / "streamed.zarr", tmp_path / "whole.zarr"
    with monkeypatch.context() as m:
        for cls in (NiftiPairSource, HeadersFirstSource):
            m.setattr(cls, "load", lambda self, ref: pytest.fail("the case was loaded whole"))
        report = convert_dataset(ConvertConfig(output=str(streamed), **config), progress=False)
    assert report.outcomes[0].status == "converted", report.outcomes[0].reason
    _whole(monkeypatch, lambda: convert_dataset(ConvertConfig(output=str(whole), **config), progress=False))
    a, b = SliceStore.open(streamed).record(ref.case_id), SliceStore.open(whole).record(ref.case_id)
    assert 0 < a.num_slices < loaded.geometry.shape[0]
    assert a.to_dict() == b.to_dict()
    assert _chunks(streamed, ref.case_id) == _chunks(whole, ref.case_id)


def _series(folder: Path, **kwargs) -> list[Path]:
    from ctprep.phantoms.dicom import write_ct_series

    hu = np.random.default_rng(1).integers(-1000, 400, (3, 16, 16)).astype(np.int16)
    return write_ct_series(folder, hu, **kwargs)


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "rle"])
def test_pixels_read_after_the_header_equal_a_whole_read(tmp_path, syntax):
    """Straight from the file's end for uncompressed files, read_slice again for compressed ones."""
    from ctprep.formats.dicom import read_slice, with_pixels

    for path in _series(tmp_path, transfer_syntax=syntax, padding_value=0):
        header = read_slice(path, pixels=False)
        assert header.hu is None
        later, whole = with_pixels(path, header.header), read_slice(path)
        assert np.array_equal(later.hu, whole.hu) and later.padded == whole.padded and later.raw_min == whole.raw_min


def test_pixels_not_at_the_end_of_the_file_are_read_by_pydicom(tmp_path):
    from ctprep.formats.dicom import read_slice, with_pixels

    path = _series(tmp_path)[0]
    ds = pydicom.dcmread(path)
    ds.add_new((0xFFFC, 0xFFFC), "OB", b"\0" * 8)  # data set trailing padding after PixelData
    ds.save_as(path)
    header = read_slice(path, pixels=False).header
    assert np.array_equal(with_pixels(path, header).hu, read_slice(path).hu)


def test_a_dicom_series_with_a_duplicate_slice_is_loaded_whole(tmp_path):
    """Whether two files at one position are the same slice needs their pixels: such a series is not streamed."""
    import shutil

    from ctprep.phantoms.nsclc import write_nsclc_case

    root = tmp_path / "nsclc"
    phantom = write_nsclc_case(root, 1, shape=(SLAB_SLICES + 3, 32, 32))
    shutil.copy(phantom.ct_files[5], phantom.ct_files[5].with_name("copy-of-a-slice.dcm"))
    source = get_source("nsclc")
    ref = source.discover(root)[0]
    assert "of_volume" in source.stream(ref).slabs.__qualname__
    report = convert_dataset(ConvertConfig(source="nsclc", input_dir=str(root), output=str(tmp_path / "o.zarr")),
                             progress=False)
    assert report.outcomes[0].status == "converted"
    notes = SliceStore.open(tmp_path / "o.zarr").record("LUNG1-001").annotations["ct"]["notes"]
    assert any("dropped 1 duplicate slice" in note for note in notes)
