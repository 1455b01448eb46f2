"""ctprep.windowing: the lookup-table path against the float64 specification, parsing, presets."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctprep.windowing import (
    PRESETS,
    Window,
    apply_window,
    apply_windows,
    parse_window,
    window_lookup_table,
    window_reference,
)

INT16_MIN, INT16_MAX = -32768, 32767
ALL_HU = np.arange(INT16_MIN, INT16_MAX + 1, dtype=np.int32).astype(np.int16)

hu_arrays = hnp.arrays(
    np.int16,
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7),
    elements=st.integers(INT16_MIN, INT16_MAX),
)
finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def windows(draw, integer_bounds: bool = False):
    """Any valid window; levels and widths reach beyond the int16 range on purpose."""
    if integer_bounds:
        lo = draw(st.integers(INT16_MIN, INT16_MAX - 1))
        hi = draw(st.integers(lo + 1, INT16_MAX))
        return Window.from_range("w", lo, hi)
    level = draw(st.floats(-40000, 40000, **finite))
    width = draw(st.floats(1e-3, 80000, **finite))
    return Window(name="w", level=level, width=width)


# ---- the table against the specification ---------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(hu=hu_arrays, window=windows())
def test_apply_window_equals_reference(hu, window):
    got = apply_window(hu, window)
    assert got.dtype == np.uint8 and got.shape == hu.shape
    np.testing.assert_array_equal(got, window_reference(hu, window))


@settings(max_examples=40, deadline=None)
@given(window=windows())
def test_lookup_table_equals_reference_on_every_int16(window):
    table = window_lookup_table(window)
    assert table.shape == (65536,) and table.dtype == np.uint8
    np.testing.assert_array_equal(apply_window(ALL_HU, window), window_reference(ALL_HU, window))


@settings(max_examples=40, deadline=None)
@given(window=windows())
def test_output_is_monotonic_in_hu(window):
    values = apply_window(ALL_HU, window)  # ALL_HU is ascending
    assert np.all(np.diff(values.astype(np.int16)) >= 0)


@settings(max_examples=60, deadline=None)
@given(window=windows(integer_bounds=True))
def test_bounds_map_to_0_and_255(window):
    lo, hi = int(window.lo), int(window.hi)
    values = apply_window(ALL_HU, window)
    hu = ALL_HU.astype(np.int32)
    assert values[hu == lo][0] == 0
    assert values[hu == hi][0] == 255
    assert np.all(values[hu < lo] == 0)
    assert np.all(values[hu > hi] == 255)
    assert values.min() == 0 and values.max() == 255


def _exact_window(hu: int, lo: int, hi: int) -> int:
    """The documented formula in exact rational arithmetic, halves rounded up."""
    value = (Fraction(min(max(hu, lo), hi)) - lo) / (hi - lo) * 255
    return math.floor(value + Fraction(1, 2))


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(-3000, 3000), width=st.integers(1, 2000), data=st.data())
def test_integer_windows_round_exact_halves_up(lo, width, data):
    hi = lo + width
    window = Window.from_range("w", lo, hi)
    hus = data.draw(st.lists(st.integers(lo - 5, hi + 5), min_size=1, max_size=40))
    # Always include the level (an exact half whenever the width is even) and the bounds.
    hus = sorted(set(hus) | {lo, hi, (lo + hi) // 2})
    got = apply_window(np.array(hus, dtype=np.int16), window)
    assert got.tolist() == [_exact_window(h, lo, hi) for h in hus]


def test_known_values_of_a_window():
    w = Window.from_range("w", 0, 255)  # one grey level per HU
    hu = np.array([-1000, -1, 0, 1, 100, 254, 255, 256, 3000], dtype=np.int16)
    np.testing.assert_array_equal(apply_window(hu, w), [0, 0, 0, 1, 100, 254, 255, 255, 255])
    w = Window(name="abd", level=50, width=400)  # [-150, 250]; 255/400 per HU
    hu = np.array([-150, 50, 250, -149, 249], dtype=np.int16)
    np.testing.assert_array_equal(apply_window(hu, w), [0, 128, 255, 1, 254])  # 127.5 rounds up


def test_apply_window_writes_into_out():
    hu = np.arange(-200, 200, dtype=np.int16).reshape(20, 20)
    out = np.full((20, 20), 7, dtype=np.uint8)
    result = apply_window(hu, PRESETS["abdomen"], out=out)
    assert result is out
    np.testing.assert_array_equal(out, window_reference(hu, PRESETS["abdomen"]))


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32, np.float64, np.int8, np.uint8])
def test_apply_window_rejects_non_int16(dtype):
    with pytest.raises(TypeError, match="int16"):
        apply_window(np.zeros((2, 2), dtype=dtype), PRESETS["lung"])


# ---- several windows into channels ---------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    hu=hnp.arrays(np.int16, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=9),
                  elements=st.integers(-2000, 3000)),
    ws=st.lists(windows(), min_size=1, max_size=4),
    block=st.integers(1, 5),
    view=st.sampled_from(["plain", "transposed", "flipped", "strided"]),
)
def test_apply_windows_channel_order_and_views(hu, ws, block, view):
    if view == "transposed":
        hu = hu.transpose(2, 0, 1)
    elif view == "flipped":
        hu = hu[::-1, :, ::-1]
    elif view == "strided":
        hu = hu[:, ::2, ::-1]
    image = apply_windows(hu, ws, block=block)
    assert image.shape == (hu.shape[0], len(ws), hu.shape[1], hu.shape[2])
    assert image.dtype == np.uint8
    for channel, window in enumerate(ws):
        np.testing.assert_array_equal(image[:, channel], window_reference(hu, window))


def test_apply_windows_channels_follow_the_given_order():
    hu = np.arange(-1024, 1024, dtype=np.int16).reshape(2, 32, 32)
    lung, bone = PRESETS["lung"], PRESETS["bone"]
    a = apply_windows(hu, [lung, bone])
    b = apply_windows(hu, [bone, lung])
    assert not np.array_equal(a[:, 0], a[:, 1])  # the windows differ on this data
    np.testing.assert_array_equal(a[:, 0], b[:, 1])
    np.testing.assert_array_equal(a[:, 1], b[:, 0])
    np.testing.assert_array_equal(a[:, 0], window_reference(hu, lung))


def test_apply_windows_rejects_non_volumes():
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        apply_windows(np.zeros((4, 4), dtype=np.int16), [PRESETS["lung"]])


# ---- parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parse_presets(name):
    w = parse_window(name)
    assert w == PRESETS[name]
    assert parse_window(f"  {name.upper()} ") == PRESETS[name]


def test_preset_values():
    assert (PRESETS["lung"].level, PRESETS["lung"].width) == (-600, 1500)
    assert (PRESETS["kidney"].lo, PRESETS["kidney"].hi) == (-79, 304)
    assert (PRESETS["abdomen"].lo, PRESETS["abdomen"].hi) == (-150, 250)


def test_parse_level_width():
    w = parse_window("40,400")
    assert (w.level, w.width, w.lo, w.hi) == (40.0, 400.0, -160.0, 240.0)
    assert w.name == "L40_W400"
    w = parse_window(" -600 , 1500.5 ")
    assert (w.level, w.width) == (-600.0, 1500.5)


def test_parse_min_max():
    w = parse_window("-100:200")
    assert (w.lo, w.hi, w.level, w.width) == (-100.0, 200.0, 50.0, 300.0)
    assert w.name == "w-100_200"
    w = parse_window("-79 : 304.5")
    assert (w.lo, w.hi) == (-79.0, 304.5)


def test_parse_explicit_sign_gives_a_valid_name():
    assert parse_window("+40,400").level == 40.0
    assert parse_window("+1:+5").lo == 1.0


def test_parse_named():
    w = parse_window("soft=40,400")
    assert (w.name, w.level, w.width) == ("soft", 40.0, 400.0)
    w = parse_window("k = -79:304")
    assert (w.name, w.lo, w.hi) == ("k", -79.0, 304.0)
    w = parse_window("mylung=lung")
    assert (w.name, w.level, w.width) == ("mylung", -600.0, 1500.0)


@pytest.mark.parametrize("text, message", [
    ("40,0", "width must be > 0"),
    ("40,-10", "width must be > 0"),
    ("200:100", "max must exceed min"),
    ("100:100", "max must exceed min"),
    ("garbage", "expected a preset"),
    ("", "expected a preset"),
    ("40;400", "expected a preset"),
    ("40,400,3", "expected a preset"),
    ("1e3,400", "expected a preset"),
    ("lung2", "expected a preset"),
    ("bad name=40,400", "window name"),
])
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_parse_error_lists_the_presets_and_forms():
    with pytest.raises(ValueError) as info:
        parse_window("nonsense")
    text = str(info.value)
    assert "'nonsense'" in text
    for name in PRESETS:
        assert name in text
    assert "level,width" in text and "min:max" in text


@pytest.mark.parametrize("width", [0, -1, float("nan")])
def test_window_rejects_bad_width(width):
    with pytest.raises(ValueError, match="width must be > 0"):
        Window(name="w", level=0, width=width)


# ---- serialisation -------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(window=windows(), name=st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True))
def test_to_dict_from_dict_round_trip(window, name):
    window = Window(name=name, level=window.level, width=window.width)
    data = json.loads(json.dumps(window.to_dict()))
    assert data["min"] == window.lo and data["max"] == window.hi
    again = Window.from_dict(data)
    assert again == window
    np.testing.assert_array_equal(window_lookup_table(again), window_lookup_table(window))


def test_lookup_table_is_read_only():
    table = window_lookup_table(PRESETS["liver"])
    with pytest.raises(ValueError):
        table[0] = 1


def test_equalised_window_spreads_each_slice_histogram():
    """crgan.txt Sec. 3.1: HU [100, 400] then histogram equalisation, per slice; `SPEC/eq` asks for it."""
    from skimage.exposure import equalize_hist

    from ctprep.windowing import parse_window, windowed_slices

    window = parse_window("100:400/eq")
    assert (window.name, window.lo, window.hi, window.equalise) == ("w100_400_eq", 100, 400, True)
    assert parse_window("liver=liver/eq").name == "liver" and Window.from_dict(window.to_dict()) == window
    rng = np.random.default_rng(0)
    hu = np.stack([rng.normal(150, 20, (32, 32)), rng.normal(300, 60, (32, 32)),
                   np.full((32, 32), 50.0)]).astype(np.int16)  # narrow, wide, constant (all below the window)
    plain = apply_windows(hu, [parse_window("100:400")])[:, 0]
    eq = apply_windows(hu, [window])[:, 0]
    for z in range(2):  # each slice against scikit-image on its own windowed slice
        expected = np.floor(equalize_hist(plain[z], nbins=256) * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(eq[z], expected)
        assert eq[z].max() == 255 and np.ptp(eq[z]) > np.ptp(plain[z])
    assert np.array_equal(eq[2], plain[2])  # a constant slice is left as it is
    assert np.array_equal(np.stack([windowed_slices(hu, [window])[z][0] for z in range(3)]), eq)
