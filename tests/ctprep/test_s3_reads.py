"""read_slices from a bucket (moto's server on 127.0.0.1): a batch requests only the chunks the case record lists.

A slice equal to the fill value has no chunk object; asking for it costs a round trip that
answers 404, so the reader requests only recorded chunks (counted here from s3fs's own
request log), with no HEAD before each GET, and a recorded chunk that the bucket lacks is one clear error, not zeros.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ctprep.convert import ConvertConfig, convert_dataset
from ctprep.errors import StoreError
from ctprep.store import SliceStore

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def stores(s3_endpoint, lits_dataset_module, tmp_path_factory):
    """The phantom download converted to a local folder and into a bucket (in this process)."""
    local = tmp_path_factory.mktemp("s3_reads") / "lits.zarr"
    url = f"s3://{s3_endpoint.new_bucket()}/lits.zarr"
    for output in (str(local), url):
        convert_dataset(ConvertConfig(source="lits", input_dir=str(lits_dataset_module.root), output=output),
                        progress=False)
    return local, url


def _batch(store: SliceStore) -> tuple[list[tuple[str, int]], list[str]]:
    keys = [(c, z) for c in store.case_ids() for z in range(store.record(c).num_slices)]
    return keys, store.label_names(keys[0][0])


def _requested(caplog, call: str = "get_object") -> list[str]:
    """Requests s3fs sent the server (its debug log of every call: ``CALL: get_object - ...``)."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"CALL: {call} ")]


def test_a_batch_requests_only_recorded_chunks(stores, caplog):
    local, url = stores
    remote = SliceStore.open(url)
    keys, names = _batch(remote)
    recorded = sum(z_key in remote.recorded_checksums(c)[array]
                   for c, z in keys for array in ("image", *(f"labels/{n}" for n in names))
                   for z_key in [f"c.{z}.0.0.0" if array == "image" else f"c.{z}.0.0"])
    remote.read_slices(keys, names)  # opens the arrays (metadata requests) before counting
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="s3fs"):
        batch = remote.read_slices(keys, names)
    want = SliceStore.open(local).read_slices(keys, names)
    assert np.array_equal(batch.image, want.image)
    assert all(np.array_equal(batch.labels[n], want.labels[n]) for n in names)
    assert any(not want.labels[n][i].any() for n in names for i in range(len(keys)))  # fill-value slices exist
    requested = _requested(caplog)  # a batch after the first: no metadata requests, one per recorded chunk
    assert all("zarr.json" not in r for r in requested), requested[:5]
    assert len(requested) == recorded < len(keys) * (1 + len(names))
    assert not _requested(caplog, "head_object")  # no HEAD before each GET (s3fs's default max_concurrency)


def test_a_recorded_chunk_missing_from_the_bucket_is_an_error(stores, s3_endpoint):
    import s3fs

    _, url = stores
    store = SliceStore.open(url)
    case = store.case_ids()[0]
    key = sorted(store.recorded_checksums(case)["image"])[0]
    z = int(key.split(".")[1])
    chunk = f"{url[len('s3://'):]}/cases/{case}/image/{key}"
    fs = s3fs.S3FileSystem()
    payload = fs.cat_file(chunk)
    fs.rm_file(chunk)
    try:
        with pytest.raises(StoreError, match=f"{key}: missing chunk, slice {z}.*ctprep verify"):
            SliceStore.open(url).read_slices([(case, z)])
    finally:
        fs.pipe_file(chunk, payload)
