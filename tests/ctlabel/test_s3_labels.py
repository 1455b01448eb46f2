"""ctlabel on a store in a bucket (moto's server on 127.0.0.1): labels written there are byte-identical
to the same run on a local copy of the store (object stores write labels by staging + copy)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ctlabel.cli import main
from ctprep.store import SliceStore

pytestmark = pytest.mark.timeout(240)
SPACING = (2.0, 0.8, 0.8)


def _store(lk, path):
    return lk.one_recist_case(path, SPACING)


def test_softmask_into_a_bucket_matches_a_local_store(s3_endpoint, lk, tmp_path):
    import s3fs

    local = _store(lk, tmp_path / "local.zarr")
    url = f"s3://{s3_endpoint.new_bucket()}/labels.zarr"
    s3fs.S3FileSystem().put(str(local), url[len("s3://"):], recursive=True)
    for where in (str(local), url):
        done = CliRunner().invoke(main, ["softmask", where, "--recist", "--quiet", "--workers", "1",
                                         "--iterations", "2"])
        assert done.exit_code == 0, done.output
        assert "1 lesions labelled" in done.output, done.output
    a, b = SliceStore.open(local), SliceStore.open(url)
    names = ["trimap_recist", "soft_recist"]
    assert set(names) <= set(b.label_names("case-1"))
    assert b.recorded_checksums("case-1") == a.recorded_checksums("case-1")
    assert b.current_checksums("case-1") == a.current_checksums("case-1")  # the objects as stored, not staged copies
    assert not [n for n in s3fs.S3FileSystem().ls(f"{url[len('s3://'):]}/cases/case-1/labels") if "_staging" in n]
    for name in names:
        assert b.label_attributes("case-1", name) == a.label_attributes("case-1", name)
        np.testing.assert_array_equal(b.read_label("case-1", name), a.read_label("case-1", name))
