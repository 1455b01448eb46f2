"""Writers that meet each other or the end of the disk.

* Two ``ctprep convert`` processes, started together, write different cases into one
  store: neither loses the other's cases, index rows or manifest entries.
* A store that runs out of space mid-case: the run stops with one clear error naming the
  case, finished cases stay, the failed case leaves nothing, ``verify`` is clean, and
  the same command completes once there is space.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

from ctprep.cli import main as ctprep_cli
from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.errors import StoreWriteError
from ctprep.lookup import LazySlices
from ctprep.store import SliceIndex, SliceStore
from ctprep.commands.verify import verify_store

REPO = Path(__file__).resolve().parents[2]

# sitecustomize for both conversion processes: each waits at the entry of _open_store
# (creating or opening the store) and of _consolidate (index and manifest) until the other
# is there too, so the two runs create the store together and consolidate together:
# the overlap the race needs, made certain rather than hoped for.
BARRIER_HOOK = textwrap.dedent("""
    import os

    if os.environ.get("LESIONKIT_TEST_BARRIER"):
        import time
        from pathlib import Path

        import ctprep.convert as convert

        folder = Path(os.environ["LESIONKIT_TEST_BARRIER"])

        def barrier(stage):
            (folder / f"{stage}.{os.getpid()}").write_text("")
            deadline = time.monotonic() + 60  # a safety net only: the other process normally arrives in seconds
            while len(list(folder.glob(f"{stage}.*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)

        def waiting(name):
            original = getattr(convert, name)

            def wrapped(*args, **kwargs):
                barrier(name)
                return original(*args, **kwargs)

            setattr(convert, name, wrapped)

        waiting("_open_store")
        waiting("_consolidate")
""")


@pytest.mark.timeout(180)
def test_two_conversions_into_one_store_keep_each_others_cases(lits_dataset_module, tmp_path):
    dataset = lits_dataset_module
    hooks, barrier = tmp_path / "hooks", tmp_path / "barrier"
    hooks.mkdir()
    barrier.mkdir()
    (hooks / "sitecustomize.py").write_text(BARRIER_HOOK)
    env = dict(os.environ, LESIONKIT_TEST_BARRIER=str(barrier),
               PYTHONPATH=os.pathsep.join([str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]))
    output = tmp_path / "shared.zarr"
    selections = (["volume-0", "volume-2"], ["volume-1"])
    processes = [subprocess.Popen([sys.executable, "-m", "ctprep.cli", "convert", "--source", "lits",
                                   "--input", str(dataset.root), "--output", str(output), "--keep-hu",
                                   "--cases", ",".join(cases), "--quiet"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for cases in selections]
    results = [p.communicate(timeout=150) for p in processes]
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err
    for stage in ("_open_store", "_consolidate"):  # both runs really were there at the same time
        assert len(list(barrier.glob(f"{stage}.*"))) == 2
    everything = sorted(dataset.case_ids)
    store = SliceStore.open(output)
    assert store.case_ids() == everything and store.incomplete_case_ids() == []
    stored = store.stored_index()
    assert sorted(set(stored.rows["case"].tolist())) == everything
    assert np.array_equal(stored.rows, SliceIndex.from_records(store.records()).rows)
    for manifest in (store.manifest(), json.loads(manifest_path(output).read_text())):
        assert sorted(manifest["cases"]) == everything
        for case_id in everything:  # each entry as the run that converted the case wrote it
            entry = manifest["cases"][case_id]
            assert entry["status"] == "converted" and "checksum" in entry, entry
            assert entry["bytes_written"] > 0 and entry["seconds"] > 0, entry
        assert manifest["summary"]["converted"] == 3
    assert verify_store(output).ok


# ---- a full disk -------------------------------------------------------------------------------------
class FullMemoryFileSystem(MemoryFileSystem):
    """fsspec's memory filesystem with a capacity, like a small disk: a write that would
    go beyond it fails with ENOSPC, deleting files frees their space. Registered as fullmem://."""

    protocol = ("fullmem",)
    store: dict = {}  # its own files, apart from memory://
    pseudo_dirs = [""]
    capacity: int | None = None  # bytes; None: unlimited

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("fullmem://"))

    lock = threading.Lock()  # the store writes chunks from several threads: claim and write as one step

    def used(self) -> int:
        with self.lock:
            return sum(f.size for f in list(self.store.values()))

    def _claim(self, path: str, size: int) -> None:
        if self.capacity is None:
            return
        old = self.store[path].size if path in self.store else 0
        if sum(f.size for f in list(self.store.values())) - old + size > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        path = self._strip_protocol(path)
        with self.lock:
            self._claim(path, len(value))
            super().pipe_file(path, value, mode=mode, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        with self.lock:
            if self.isfile(path1):
                self._claim(path2, self.store[path1].size)
            super().cp_file(path1, path2, **kwargs)

    def rm_file(self, path):
        with self.lock:
            super().rm_file(path)


@pytest.fixture
def full_disk(monkeypatch):
    """fullmem:// registered for this test, its files dropped afterwards."""
    fsspec.register_implementation("fullmem", FullMemoryFileSystem, clobber=True)
    monkeypatch.setattr(FullMemoryFileSystem, "store", {})
    monkeypatch.setattr(FullMemoryFileSystem, "pseudo_dirs", [""])
    yield FullMemoryFileSystem
    FullMemoryFileSystem.capacity = None


def _content(location):
    store = SliceStore.open(location)
    return {c: (store.record(c).to_dict(), store.recorded_checksums(c)) for c in store.case_ids()}


def test_a_full_disk_stops_the_run_cleanly_and_the_rerun_completes(lits_dataset_module, full_disk, monkeypatch):
    dataset = lits_dataset_module
    folder = f"disk-{uuid.uuid4().hex[:8]}"
    reference = f"fullmem://{folder}/reference.zarr"
    config = ConvertConfig(source="lits", input_dir=str(dataset.root), output=reference, keep_hu=True)
    convert_dataset(config, progress=False)
    ref = SliceStore.open(reference)
    whole, last_case = full_disk().used(), ref.case_bytes("volume-2")
    # Room for everything but half of the last case (the disk also holds the reference).
    monkeypatch.setattr(full_disk, "capacity", 2 * whole - last_case // 2)
    url = f"fullmem://{folder}/lits.zarr"
    args = ["convert", "--source", "lits", "--input", str(dataset.root), "--output", url, "--keep-hu", "--quiet"]
    failed = CliRunner().invoke(ctprep_cli, args)
    assert failed.exit_code == 1, failed.output
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"ctprep: error: {url}: case volume-2: no space left on device while writing")
    assert "2 complete case(s) are kept" in lines[0] and "re-run the same command" in lines[0]
    store = SliceStore.open(url)
    assert store.case_ids() == ["volume-0", "volume-1"] and store.incomplete_case_ids() == []
    assert not full_disk().exists(f"/{folder}/lits.zarr/cases/volume-2")  # nothing left of it
    report = verify_store(url)
    assert report.ok and report.notes == (), report.lines()
    assert sorted(c for c, e in store.manifest()["cases"].items() if e["status"] == "converted") == \
        ["volume-0", "volume-1"]
    # with space again, the same command resumes and completes
    monkeypatch.setattr(full_disk, "capacity", None)
    again = CliRunner().invoke(ctprep_cli, args)
    assert again.exit_code == 0, again.output
    assert "1 converted, 2 already complete, 0 skipped" in again.stdout
    assert _content(url) == _content(reference)
    assert verify_store(url).ok


def _no_space_after(shape, z_fail: int) -> LazySlices:
    def make(z: int) -> np.ndarray:
        if z == z_fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "chunk")
        return np.full(shape[1:], 7, dtype=np.uint8)

    return LazySlices(shape, np.uint8, make)


def test_an_enospc_during_a_local_case_write_is_a_store_write_error(lits_dataset_module, tmp_path):
    """The local fast path (threaded chunk writer): the same clear error, and the partial case removed."""
    output = tmp_path / "local.zarr"
    convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset_module.root), output=str(output),
                                  cases=("volume-0",)), progress=False)
    store = SliceStore.open(output, mode="a")
    record = store.record("volume-0")
    case = store.read_case("volume-0")
    other = dataclasses.replace(record, case_id="copy")
    image = _no_space_after(case.image.shape, z_fail=9)
    with pytest.raises(StoreWriteError, match="case copy: no space left on device while writing") as info:
        store.write_case(other, image, case.labels)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert not (output / "cases" / "copy").exists()
    assert SliceStore.open(output).case_ids() == ["volume-0"] and verify_store(output).ok


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs mounted in tmp (needs the right to mount, e.g. root in a container; else skipped)."""
    folder = tmp_path / "disk"
    folder.mkdir()

    def mount(size_kib: int, remount: bool = False) -> None:
        options = f"{'remount,' if remount else ''}size={size_kib}k"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True,
                       capture_output=True)

    try:
        mount(8192)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the fullmem:// test covers the logic")
    try:
        yield folder, mount
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def _used_kib(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


def test_a_full_local_disk_with_two_workers(lits_dataset_module, small_disk):
    """The same on a real file system that fills up: the threaded chunk writer in worker processes."""
    folder, mount = small_disk
    probe = folder / "probe.zarr"
    base = ["convert", "--source", "lits", "--input", str(lits_dataset_module.root), "--keep-hu", "--quiet"]
    assert CliRunner().invoke(ctprep_cli, base + ["--output", probe, "--cases", "volume-0,volume-1"]).exit_code == 0
    two = _used_kib(folder)
    assert CliRunner().invoke(ctprep_cli, base + ["--output", probe]).exit_code == 0
    three = _used_kib(folder)
    shutil.rmtree(probe)
    (folder / "probe.manifest.json").unlink()
    mount(two + (three - two) // 2, remount=True)  # room for two cases and half of the third
    output = folder / "lits.zarr"
    failed = CliRunner().invoke(ctprep_cli, base + ["--output", output, "--workers", "2"])
    assert failed.exit_code == 1, failed.output
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on device" in lines[0], failed.stderr
    # Which case meets the end of the disk depends on the two workers' pace (and the other
    # case in flight then may fail too, or finish): complete cases stay, nothing else does.
    failed_case = lines[0].split(": case ", 1)[1].split(":", 1)[0]
    kept = SliceStore.open(output).case_ids()
    assert failed_case in lits_dataset_module.case_ids and failed_case not in kept and kept
    assert sorted(p.name for p in (output / "cases").iterdir()) == kept + ["zarr.json"]
    assert verify_store(output).ok
    mount(8192, remount=True)
    again = CliRunner().invoke(ctprep_cli, base + ["--output", output, "--workers", "2"])
    assert again.exit_code == 0 and f"{3 - len(kept)} converted, {len(kept)} already complete" in again.stdout, \
        again.output
    assert SliceStore.open(output).case_ids() == sorted(lits_dataset_module.case_ids)
    assert verify_store(output).ok
