"""ctlabel.soften: max(soft, binary), thresholding, and the store operation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctlabel.soften import SoftenConfig, binarised, soften_store, softened
from ctprep.errors import CaseNotFoundError
from ctprep.store import SliceStore

softs = hnp.arrays(np.float32, (6, 7), elements=st.floats(0, 1, width=32))
binaries = hnp.arrays(np.uint8, (6, 7), elements=st.integers(0, 1))


@given(soft=softs, binary=binaries)
def test_softened_is_the_maximum(soft, binary):
    out = softened(soft, binary)
    assert out.dtype == np.float32
    assert np.all(out[binary == 1] == 1.0)
    assert np.array_equal(out[binary == 0], soft[binary == 0])
    assert np.all(out >= soft)


@given(soft=softs, threshold=st.floats(0.01, 1.0))
def test_binarised(soft, threshold):
    out = binarised(soft, threshold)
    assert out.dtype == np.uint8
    assert np.array_equal(out == 1, soft >= threshold)


def test_binarised_default_and_validation():
    assert binarised(np.array([0.49, 0.5, 0.51], np.float32)).tolist() == [0, 1, 1]
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            binarised(np.zeros(3), bad)
    with pytest.raises(ValueError, match="differ in shape"):
        softened(np.zeros((2, 2)), np.zeros((3, 3)))


def test_outputs_named_from_the_soft_label():
    assert SoftenConfig(store="s", soft="soft_tumour", binary="tumour").outputs() == ("softened_tumour",)
    assert SoftenConfig(store="s", soft="soft_tumour").outputs() == ("binary_tumour",)
    assert SoftenConfig(store="s", soft="soft_tumour", binary="tumour", threshold=0.6, name="t").outputs() == (
        "softened_t", "binary_t")
    config = SoftenConfig(store="s", soft="soft_x", threshold=0.3, cases=("a",))
    assert SoftenConfig.from_dict(config.to_dict()) == config


def test_soften_store(tmp_path, lk):
    store = lk.new_store(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    hu = rng.integers(-900, 100, size=(3, 16, 16)).astype(np.int16)
    mask = (rng.random((3, 16, 16)) < 0.3).astype(np.uint8)
    lk.write_case(store, "a", hu, {"tumour": mask}, (1.0, 1.0, 1.0))
    lk.write_case(store, "b", hu, {"tumour": mask}, (1.0, 1.0, 1.0))
    soft = rng.random((3, 16, 16)).astype(np.float32)
    store.write_label("a", "soft_tumour", soft)
    report = soften_store(SoftenConfig(store=str(tmp_path / "s.zarr"), soft="soft_tumour", binary="tumour",
                                       threshold=0.7))
    assert report.written == ("a",)
    assert report.skipped[0][0] == "b" and "no label 'soft_tumour'" in report.skipped[0][1]
    labels = SliceStore.open(tmp_path / "s.zarr").read_case("a", labels=["softened_tumour", "binary_tumour"]).labels
    np.testing.assert_array_equal(labels["softened_tumour"], np.maximum(soft, mask))
    np.testing.assert_array_equal(labels["binary_tumour"], (soft >= 0.7).astype(np.uint8))
    assert "softened_tumour, binary_tumour written for 1 cases, 1 skipped" in report.lines()[0]
    with pytest.raises(ValueError, match="no case could be softened"):
        soften_store(SoftenConfig(store=str(tmp_path / "s.zarr"), soft="soft_tumour", cases=("b",)))
    with pytest.raises(CaseNotFoundError):
        soften_store(SoftenConfig(store=str(tmp_path / "s.zarr"), soft="soft_tumour", cases=("zzz",)))
    with pytest.raises(ValueError, match="float32 soft mask"):
        soften_store(SoftenConfig(store=str(tmp_path / "s.zarr"), soft="tumour", cases=("a",)))
