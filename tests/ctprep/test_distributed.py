"""Conversion on dask.distributed: a 2-worker LocalCluster writes the same store as one process."""

from __future__ import annotations

import json

import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.conversion_manifest import manifest_path
from ctprep.store import SliceStore
from ctprep.commands.verify import verify_store

pytest.importorskip("distributed")


def _convert(dataset, output, **kwargs):
    config = ConvertConfig(source=dataset.source, input_dir=str(dataset.root), output=str(output), keep_hu=True,
                           **kwargs)
    return convert_dataset(config, progress=False)


def _content(path):
    """Everything a reader sees: each case's record and the checksums of every chunk file."""
    store = SliceStore.open(path)
    return {case_id: (store.record(case_id).to_dict(), store.recorded_checksums(case_id),
                      store.current_checksums(case_id)) for case_id in store.case_ids()}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dataset_name", ["lits_dataset_module", "kits_dataset_module"])
def test_a_local_cluster_writes_the_same_store_as_one_process(dataset_name, request, tmp_path):
    dataset = request.getfixturevalue(dataset_name)
    single = _convert(dataset, tmp_path / "single.zarr")
    distributed = _convert(dataset, tmp_path / "dask.zarr", dask="local:2")
    assert [o.status for o in distributed.outcomes] == [o.status for o in single.outcomes]
    assert _content(tmp_path / "dask.zarr") == _content(tmp_path / "single.zarr")
    a, b = SliceStore.open(tmp_path / "single.zarr"), SliceStore.open(tmp_path / "dask.zarr")
    assert (a.stored_index().rows == b.stored_index().rows).all()
    manifests = [json.loads(manifest_path(tmp_path / name).read_text()) for name in ("single.zarr", "dask.zarr")]
    assert [m["cases"].keys() for m in manifests][0] == [m["cases"].keys() for m in manifests][1]
    assert all(manifests[0]["cases"][c]["checksum"] == manifests[1]["cases"][c]["checksum"]
               for c in manifests[0]["cases"] if manifests[0]["cases"][c]["status"] == "converted")
    assert verify_store(tmp_path / "dask.zarr").ok


def test_an_unreachable_scheduler_is_a_clear_error():
    from lkbase.executor import dask_executor as _dask_executor

    with pytest.raises(OSError, match="--dask tcp://127.0.0.1:1: cannot reach the dask scheduler"):
        with _dask_executor("tcp://127.0.0.1:1", connect_timeout_s=1):
            pass
