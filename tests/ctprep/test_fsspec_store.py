"""Stores at fsspec URLs (memory://, file://): the same content as a local store, through every reader and writer.

memory:// is fsspec's in-process filesystem, an object store without rename: it stands
for s3:// / gs:// here (same code path: zarr's FsspecStore and the store's fsspec file
operations). file:// is a local folder named by URL: the local fast paths apply.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner

from ctprep.cli import main as ctprep_cli
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.errors import StoreError
from ctprep.lookup import LazySlices
from ctprep.store import SliceStore
from ctprep.store.layout import _STAGING
from ctprep.commands.verify import verify_store

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))  # as tests/ctlabel/conftest.py


def _convert(dataset, output, **kwargs):
    config = ConvertConfig(source=dataset.source, input_dir=str(dataset.root), output=str(output), keep_hu=True,
                           **kwargs)
    return convert_dataset(config, progress=False)


def _memory_folder() -> str:
    return f"lesionkit-test-{uuid.uuid4().hex[:10]}"


def _forget(folder: str) -> None:
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{folder}"):
        memory.rm(f"/{folder}", recursive=True)


@pytest.fixture
def memory_folder():
    folder = _memory_folder()
    yield folder
    _forget(folder)


@pytest.fixture(scope="module")
def stores(lits_dataset_module, kits_dataset_module, tmp_path_factory):
    """Each phantom dataset converted to a local path, a memory:// URL and a file:// URL."""
    folder, base = _memory_folder(), tmp_path_factory.mktemp("url_stores")
    made = {}
    for dataset in (lits_dataset_module, kits_dataset_module):
        name = f"{dataset.source}.zarr"
        urls = {"local": base / "local" / name, "memory": f"memory://{folder}/{name}",
                "file": f"file://{base}/file/{name}"}
        made[dataset.source] = {kind: (url, _convert(dataset, url)) for kind, url in urls.items()}
    yield made
    _forget(folder)


def _content(location):
    store = SliceStore.open(location)
    return {c: (store.record(c).to_dict(), store.recorded_checksums(c), store.current_checksums(c))
            for c in store.case_ids()}


def _manifest(location) -> dict:
    with fsspec.open(str(manifest_path(location)), "rt") as handle:
        return json.load(handle)


# ---- the same store, wherever it lives --------------------------------------------------------------
@pytest.mark.parametrize("source", ["lits", "kits19"])
@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_url_store_holds_what_the_local_store_holds(stores, source, kind):
    (local, local_report), (url, report) = stores[source]["local"], stores[source][kind]
    assert [o.status for o in report.outcomes] == [o.status for o in local_report.outcomes]
    assert all(o.status == "converted" for o in report.outcomes)
    assert _content(url) == _content(local)
    a, b = SliceStore.open(local), SliceStore.open(url)
    assert len(b.stored_index()) == len(a.stored_index()) > 0
    assert (b.stored_index().rows == a.stored_index().rows).all()
    case = a.case_ids()[-1]
    local_case, url_case = a.read_case(case, hu=True), b.read_case(case, hu=True)
    assert np.array_equal(url_case.image, local_case.image) and np.array_equal(url_case.hu, local_case.hu)
    assert url_case.labels.keys() == local_case.labels.keys()
    assert all(np.array_equal(url_case.labels[n], local_case.labels[n]) for n in local_case.labels)
    keys = [(c, z) for c in a.case_ids() for z in (0, 7)]
    names = list(local_case.labels)
    assert np.array_equal(b.read_slices(keys, names).image, a.read_slices(keys, names).image)
    # the manifest beside the store (a URL beside a URL) records the same case checksums
    manifests = _manifest(local), _manifest(url)
    assert {c: e["checksum"] for c, e in manifests[0]["cases"].items()} == \
        {c: e["checksum"] for c, e in manifests[1]["cases"].items()}
    assert b.bytes_on_disk() == pytest.approx(a.bytes_on_disk(), rel=0.01)  # the manifests name other paths


def test_a_memory_store_is_not_on_the_local_disk(stores):
    url = stores["lits"]["memory"][0]
    assert str(SliceStore.open(url).path) == url
    assert fsspec.filesystem("memory").isfile(url.removeprefix("memory:/") + "/zarr.json")
    assert not Path(url.removeprefix("memory://")).exists()


def test_verify_and_audit_a_memory_store_and_find_a_corrupt_chunk(stores, memory_folder):
    from ctprep.commands.audit import audit_store

    url = stores["lits"]["memory"][0]
    assert verify_store(url).ok
    assert audit_store(url).clean and audit_store(url).files_scanned > 3
    memory = fsspec.filesystem("memory")
    copy = f"memory://{memory_folder}/lits.zarr"
    source_root = url.removeprefix("memory:/")
    for name in memory.find(source_root):
        memory.pipe_file(f"/{memory_folder}/lits.zarr{name[len(source_root):]}", memory.cat_file(name))
    chunk = f"/{memory_folder}/lits.zarr/cases/volume-1/image/c.5.0.0.0"
    data = bytearray(memory.cat_file(chunk))
    data[-3] ^= 0xFF
    memory.pipe_file(chunk, bytes(data))
    report = verify_store(copy)
    assert not report.ok and report.corrupt_cases() == ["volume-1"]
    assert report.problems[0] == ("volume-1", "image: checksum mismatch at slice 5")
    memory.pipe_file(f"/{memory_folder}/lits.zarr/notes.txt", b"reviewed by DOE^JOHN")
    found = audit_store(copy)
    assert [(f.path, f.rule) for f in found.findings] == [(f"{copy}/notes.txt", "person-name")]


# ---- write_label where there is no rename -----------------------------------------------------------
@pytest.fixture
def memory_store(lits_dataset_module, memory_folder):
    url = f"memory://{memory_folder}/lits.zarr"
    _convert(lits_dataset_module, url)
    return SliceStore.open(url, mode="a")


def _failing_at(shape, z_fail: int, value: int = 1) -> LazySlices:
    def make(z: int) -> np.ndarray:
        if z == z_fail:
            raise RuntimeError(f"slice {z} could not be computed")
        return np.full(shape[1:], value, dtype=np.uint8)

    return LazySlices(shape, np.uint8, make)


def _staged_arrays(store: SliceStore, case_id: str) -> list[str]:
    labels = f"{store.path}/cases/{case_id}/labels".removeprefix("memory:/")
    return [p.rsplit("/", 1)[-1] for p in fsspec.filesystem("memory").ls(labels, detail=False)
            if p.rsplit("/", 1)[-1].startswith(_STAGING)]


def test_write_label_on_an_object_store_adds_replaces_and_survives_a_failed_write(memory_store):
    store, case = memory_store, "volume-0"
    shape = (store.record(case).num_slices, *store.record(case).geometry.shape[1:])
    first = (np.arange(np.prod(shape)).reshape(shape) % 3 == 0).astype(np.uint8)
    store.write_label(case, "mark", first, attributes={"made_by": "test"})
    assert "mark" in store.label_names(case) and np.array_equal(store.read_label(case, "mark"), first)
    soft = (first * 0.25).astype(np.float32)
    store.write_label(case, "mark", soft, attributes={"made_by": "again"})
    reopened = SliceStore.open(store.path)
    assert reopened.read_label(case, "mark").dtype == np.float32
    assert np.array_equal(reopened.read_label(case, "mark"), soft)
    assert reopened.label_attributes(case, "mark") == {"made_by": "again"}
    assert verify_store(store.path).ok  # recorded checksums follow the replacement
    # a write that fails after its first block of slices is stored leaves the label as it was
    with pytest.raises(RuntimeError, match="slice 20 could not be computed"):
        store.write_label(case, "mark", _failing_at(shape, 20))
    reopened = SliceStore.open(store.path)
    assert np.array_equal(reopened.read_label(case, "mark"), soft)
    assert reopened.label_attributes(case, "mark") == {"made_by": "again"}
    assert reopened.label_names(case).count("mark") == 1 and len(_staged_arrays(store, case)) == 1
    assert verify_store(store.path).ok
    store.write_label(case, "mark", first)  # the next write cleans the leftover up
    assert _staged_arrays(store, case) == [] and np.array_equal(store.read_label(case, "mark"), first)


def test_an_interrupted_copy_into_place_serves_the_whole_new_label(memory_store, monkeypatch):
    """Killed after the marker points at the staged label, before the copy into place finished."""
    from ctprep.store import files as store_module

    store, case = memory_store, "volume-2"
    old = store.read_label(case, "tumour")
    new = (1 - old).astype(np.uint8)
    store.write_label(case, "mask", old)

    def copy_dies(self, src, dst):
        names = sorted(self.files(src), key=lambda n: (n != "zarr.json", n))[:2]
        self.fs.copy([self.path(f"{src}/{n}") for n in names], [self.path(f"{dst}/{n}") for n in names])
        raise KeyboardInterrupt  # the metadata and one chunk copied, then the process is gone

    monkeypatch.setattr(store_module._Files, "copy_tree", copy_dies)
    with pytest.raises(KeyboardInterrupt):
        store.write_label(case, "mask", new)
    monkeypatch.undo()
    reader = SliceStore.open(store.path)
    assert reader.label_names(case).count("mask") == 1
    assert np.array_equal(reader.read_label(case, "mask"), new)  # whole, from the staged copy
    assert np.array_equal(reader.read_slices([(case, 3)], ["mask"]).labels["mask"][0], new[3])
    assert verify_store(store.path).ok  # its recorded checksums are the staged copy's
    store.write_label(case, "mask", old)
    reader = SliceStore.open(store.path)
    assert np.array_equal(reader.read_label(case, "mask"), old) and _staged_arrays(store, case) == []
    assert "staged" not in reader._case_group(case).attrs["lesionkit_case"]
    assert verify_store(store.path).ok


# ---- the other readers and writers -----------------------------------------------------------------
def test_the_torch_dataset_reads_a_memory_store_as_a_local_one(stores):
    torch = pytest.importorskip("torch")
    from ctseg.config import TrainConfig
    from ctseg.data import training_data

    torch.set_num_threads(1)
    batches = {}
    for kind in ("local", "memory"):
        url = str(stores["lits"][kind][0])
        config = TrainConfig(model="unet", store=url, target=("tumour",), size=32, batch_size=4, crop="lesion",
                             train_split="all", steps_per_epoch=4, seed=5)
        dataset, sampler, loader = training_data(config)
        assert str(dataset.store_path) == url
        sampler.set_epoch(1)
        batches[kind] = [(b["image"], b["target"]) for b in loader]
    assert len(batches["memory"]) == 4
    for (image, target), (image_local, target_local) in zip(batches["memory"], batches["local"]):
        assert torch.equal(image, image_local) and torch.equal(target, target_local)
    assert any(t.sum() > 0 for _, t in batches["memory"])


def test_ctlabel_softmask_on_a_memory_store(stores, memory_folder, tmp_path):
    from ctlabel.label import LabelConfig, label_store

    memory = fsspec.filesystem("memory")
    source_root = stores["lits"]["memory"][0].removeprefix("memory:/")
    for name in memory.find(source_root):  # a fresh copy: labelling writes into it
        memory.pipe_file(f"/{memory_folder}/lits.zarr{name[len(source_root):]}", memory.cat_file(name))
    url = f"memory://{memory_folder}/lits.zarr"
    local = tmp_path / "lits.zarr"
    shutil.copytree(stores["lits"]["local"][0], local)
    reports = {}
    for where in (url, str(local)):
        config = LabelConfig(store=where, source="mask", label="tumour", cases=("volume-1",))
        reports[where] = label_store(config, progress=False)
    assert [o.status for o in reports[url].outcomes] == ["labelled"]
    in_memory, on_disk = SliceStore.open(url), SliceStore.open(local)
    for name in ("trimap_tumour", "soft_tumour"):
        assert np.array_equal(in_memory.read_label("volume-1", name), on_disk.read_label("volume-1", name))
    assert in_memory.read_label("volume-1", "soft_tumour").max() > 0.5
    assert verify_store(url).ok
    with pytest.raises(StoreError, match="memory:// store exists only in this process.*--workers 2"):
        label_store(LabelConfig(store=url, source="mask", label="tumour", workers=2), progress=False)


# ---- command line ---------------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(ctprep_cli, [str(a) for a in args])


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctprep: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_cli_with_a_file_url_and_two_workers(lits_dataset_module, tmp_path):
    url = f"file://{tmp_path}/cli.zarr"
    done = _cli("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", url,
                "--workers", "2", "--quiet")
    assert done.exit_code == 0, done.output
    assert f"manifest: file://{tmp_path}/cli.manifest.json" in done.stdout
    assert (tmp_path / "cli.zarr" / "zarr.json").is_file() and (tmp_path / "cli.manifest.json").is_file()
    assert SliceStore.open(tmp_path / "cli.zarr").case_ids() == sorted(lits_dataset_module.case_ids)
    info = _cli("info", url, "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["cases"] == 3
    verified = _cli("verify", url, "--quiet")
    assert verified.exit_code == 0 and verified.stdout.strip().endswith("OK")
    assert _cli("audit", url).exit_code == 0


def test_cli_errors_for_urls(lits_dataset_module, memory_folder):
    url = f"memory://{memory_folder}/lits.zarr"
    refused = _cli("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", url,
                   "--workers", "2", "--quiet")
    _one_line_error(refused, url, "exists only in this process", "--workers 2")
    assert not SliceStore.exists(url)
    _one_line_error(_cli("info", "foo://bucket/lits.zarr"), "foo://bucket/lits.zarr", "unknown storage protocol",
                    "Protocol not known: foo")
    _one_line_error(_cli("verify", url), url, "not a lesionkit store (nothing there)")
    # in one process a memory:// store works from the command line too
    done = _cli("convert", "--source", "lits", "--input", lits_dataset_module.root, "--output", url,
                "--cases", "volume-0", "--quiet")
    assert done.exit_code == 0, done.output
    assert _cli("verify", url, "--quiet").exit_code == 0
    again = _cli("rebuild", f"memory://{memory_folder}/lits.manifest.json", "--input", lits_dataset_module.root,
                 "--output", f"memory://{memory_folder}/again.zarr", "--quiet")
    assert again.exit_code == 0 and "rebuilt 1 case(s) identical" in again.stdout, again.output
