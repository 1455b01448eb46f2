"""ctprep.lookup: table lookup over volumes and lazily computed slices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctprep.lookup import LazySlices, lookup, nonzero_per_slice
from ctprep.windowing import PRESETS, apply_windows, windowed_slices


@settings(max_examples=40, deadline=None)
@given(keys=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40)),
       table=hnp.arrays(np.uint8, 256), flip=st.booleans())
def test_lookup_equals_fancy_indexing(keys, table, flip):
    if flip:
        keys = keys[::-1]
    out = np.empty(keys.shape, np.uint8)
    np.testing.assert_array_equal(lookup(table, keys, out), table[keys])


def test_lookup_in_blocks_on_a_large_strided_volume():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 65536, size=(20, 130, 150), dtype=np.uint16).transpose(0, 2, 1)[:, ::-1]
    table = rng.integers(0, 256, size=65536, dtype=np.uint16).astype(np.uint8)
    out = np.empty(keys.shape, np.uint8)
    np.testing.assert_array_equal(lookup(table, keys, out), table[keys])


def test_lookup_rejects_signed_keys_and_wrong_out():
    with pytest.raises(TypeError, match="unsigned"):
        lookup(np.zeros(256, np.uint8), np.zeros(3, np.int16), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        lookup(np.zeros(256, np.uint8), np.zeros(3, np.uint8), np.zeros(4, np.uint8))


def test_lazy_slices_behave_like_the_array():
    data = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    calls = []
    lazy = LazySlices(data.shape, np.uint8, lambda z: calls.append(z) or data[z].copy())
    assert (lazy.shape, lazy.dtype, lazy.ndim, len(lazy)) == (data.shape, np.uint8, 3, 4)
    np.testing.assert_array_equal(lazy[2], data[2])
    np.testing.assert_array_equal(lazy[-1], data[3])
    assert calls == [2, 3]
    np.testing.assert_array_equal(np.asarray(lazy), data)
    np.testing.assert_array_equal(lazy[1:3], data[1:3])
    np.testing.assert_array_equal(np.asarray(lazy.take([3, 0])), data[[3, 0]])
    with pytest.raises(IndexError):
        lazy[4]


def test_nonzero_per_slice():
    data = np.zeros((5, 4, 4), np.uint8)
    data[1, 0, :3] = 1
    data[3] = 7
    expected = [0, 3, 0, 16, 0]
    assert nonzero_per_slice(data).tolist() == expected
    assert nonzero_per_slice(LazySlices(data.shape, np.uint8, lambda z: data[z])).tolist() == expected


def test_windowed_slices_equal_apply_windows():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1100, 1500, size=(6, 9, 11)).astype(np.int16)[:, ::-1]
    windows = (PRESETS["liver"], PRESETS["lung"])
    lazy = windowed_slices(hu, windows)
    assert lazy.shape == (6, 2, 9, 11)
    np.testing.assert_array_equal(np.asarray(lazy), apply_windows(hu, windows))
