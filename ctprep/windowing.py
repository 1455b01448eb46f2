"""HU windows: named presets, parsing, and the mapping of int16 HU to uint8.

A window keeps HU in ``[lo, hi]`` and maps it linearly onto 0..255::

    value = floor((clip(hu, lo, hi) - lo) / (hi - lo) * 255 + 1/2)   (halves round up)

The mapping is applied through a 65,536-entry lookup table indexed by the
int16 bit pattern, so windowing costs one gather per voxel and never builds a
float copy of the volume.

A window with ``equalise`` (written ``SPEC/eq``, e.g. ``100:400/eq``; crgan's LiTS
pre-processing, crgan.txt Sec. 3.1) then equalises each windowed slice's histogram
globally (scikit-image ``equalize_hist``, 256 bins) and maps the result back to 0..255 by
the same rounding: ``floor(cdf * 255 + 1/2)``.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ctprep.lookup import LazySlices, lookup
from lkbase.choices import closest
from lkbase.errors import ParameterError


@dataclass(frozen=True, kw_only=True)
class Window:
    """An intensity window in Hounsfield units, given by level (centre) and width."""

    name: str
    level: float
    width: float
    equalise: bool = False  # histogram equalisation of each slice after windowing

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ParameterError(f"window {self.name!r}: width must be > 0, found {self.width}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ParameterError(f"window name {self.name!r}: use letters, digits, '_', '.', '-'")

    @property
    def lo(self) -> float:
        return self.level - self.width / 2

    @property
    def hi(self) -> float:
        return self.level + self.width / 2

    @classmethod
    def from_range(cls, name: str, lo: float, hi: float) -> "Window":
        return cls(name=name, level=(lo + hi) / 2, width=hi - lo)

    def to_dict(self) -> dict:
        return {**asdict(self), "min": self.lo, "max": self.hi}

    @classmethod
    def from_dict(cls, data: dict) -> "Window":
        return cls(name=data["name"], level=float(data["level"]), width=float(data["width"]),
                   equalise=bool(data.get("equalise", False)))


# Level/width presets. Sources: Radiopaedia "windowing (CT)" for lung, mediastinum,
# soft tissue (abdomen), liver and bone; kidney is the HU clip [-79, 304] of the
# KiTS19 winning entry (Isensee et al., the 0.5-99.5 percentiles of kidney+tumour).
PRESETS: dict[str, Window] = {
    "lung": Window(name="lung", level=-600, width=1500),
    "mediastinum": Window(name="mediastinum", level=50, width=350),
    "abdomen": Window(name="abdomen", level=50, width=400),
    "liver": Window(name="liver", level=30, width=150),
    "kidney": Window.from_range("kidney", -79, 304),
    "bone": Window(name="bone", level=400, width=1800),
}

_NUMBER = r"[-+]?\d+(?:\.\d*)?"


def parse_window(text: str) -> Window:
    """Parse a preset name, ``L,W`` (level, width) or ``min:max``, optionally ``name=``-prefixed.

    >>> parse_window("lung").width
    1500.0
    >>> parse_window("soft=40,400").lo
    -160.0
    >>> parse_window("-100:200").name
    'w-100_200'
    >>> parse_window("100:400/eq").name, parse_window("100:400/eq").equalise
    ('w100_400_eq', True)
    """
    spec = text.strip()
    name = None
    if "=" in spec:
        name, spec = (part.strip() for part in spec.split("=", 1))
    if spec.lower().endswith("/eq"):
        plain = parse_window(spec[:-3])
        return Window(name=name or f"{plain.name}_eq", level=plain.level, width=plain.width, equalise=True)
    if spec.lower() in PRESETS:
        preset = PRESETS[spec.lower()]
        return Window(name=name or preset.name, level=float(preset.level), width=float(preset.width))
    if m := re.fullmatch(rf"({_NUMBER})\s*,\s*({_NUMBER})", spec):
        level, width = float(m[1]), float(m[2])
        if width <= 0:
            raise ParameterError(f"window {text!r}: width must be > 0 (the second number of level,width), "
                                 f"found {m[2]}")
        # A leading '+' is dropped from generated names: window names allow no '+'.
        return Window(name=name or f"L{m[1].lstrip('+')}_W{m[2].lstrip('+')}", level=level, width=width)
    if m := re.fullmatch(rf"({_NUMBER})\s*:\s*({_NUMBER})", spec):
        lo, hi = float(m[1]), float(m[2])
        if not hi > lo:
            raise ParameterError(f"window {text!r}: max must exceed min")
        return Window.from_range(name or f"w{m[1].lstrip('+')}_{m[2].lstrip('+')}", lo, hi)
    guess = closest(spec, PRESETS)
    hint = f"did you mean {guess!r}? " if guess is not None else ""
    raise ParameterError(f"window {text!r}: {hint}expected a preset ({', '.join(PRESETS)}), 'level,width' "
                         "(e.g. 40,400) or 'min:max' (e.g. -160:240), each optionally with '/eq'")


@lru_cache(maxsize=64)
def _lookup_table(lo: float, hi: float) -> np.ndarray:
    # Entry u holds the window value of the int16 whose bit pattern is u.
    hu = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.float64)
    # Multiply before dividing: one rounding, so exact halves (the level of an
    # integer window, e.g. HU 50 in abdomen) round up as the formula says.
    scaled = (np.clip(hu, lo, hi) - lo) * 255.0 / (hi - lo)
    table = np.floor(scaled + 0.5).astype(np.uint8)
    table.setflags(write=False)
    return table


def window_lookup_table(window: Window) -> np.ndarray:
    """The uint8 value of every int16 HU, indexed by the HU's uint16 bit pattern."""
    return _lookup_table(float(window.lo), float(window.hi))


def apply_window(hu: np.ndarray, window: Window, out: np.ndarray | None = None) -> np.ndarray:
    """Window an int16 HU array (any shape, any strides) into uint8."""
    if hu.dtype != np.int16:
        raise TypeError(f"apply_window expects int16 HU, found {hu.dtype}")
    if out is None:
        out = np.empty(hu.shape, dtype=np.uint8)
    if out.shape != hu.shape:
        raise ParameterError(f"apply_window: out has shape {out.shape}, hu {hu.shape}")
    lookup(window_lookup_table(window), hu.view(np.uint16), out)
    return equalise_slices(out) if window.equalise else out


def equalise_slices(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of each 2D slice (the last two axes) of a uint8 array, in place."""
    from skimage.exposure import equalize_hist

    flat = image.reshape(-1, *image.shape[-2:])
    for plane in flat:
        if plane.min() != plane.max():  # a constant slice has no histogram to spread
            plane[...] = np.floor(equalize_hist(plane, nbins=256) * 255 + 0.5).astype(np.uint8)
    return image


def apply_windows(hu: np.ndarray, windows: tuple[Window, ...] | list[Window],
                  block: int = 16) -> np.ndarray:
    """Window a (z, y, x) int16 volume into a (z, channel, y, x) uint8 image, one channel per window.

    Works in blocks of ``block`` slices so the source stays cache-resident across
    windows; the blocks are windowed in parallel threads (np.take releases the GIL).
    """
    if hu.ndim != 3:
        raise ParameterError(f"apply_windows expects a (z, y, x) volume, found shape {hu.shape}")
    nz = hu.shape[0]
    image = np.empty((nz, len(windows), *hu.shape[1:]), dtype=np.uint8)

    def window_block(start: int) -> None:
        part = hu[start:start + block]
        for channel, window in enumerate(windows):
            apply_window(part, window, out=image[start:start + block, channel])

    starts = range(0, nz, block)
    if len(starts) == 1 or _THREADS == 1:
        for start in starts:
            window_block(start)
    else:
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            for _ in pool.map(window_block, starts):
                pass  # re-raises the first error
    return image


def windowed_slices(hu: np.ndarray, windows: tuple[Window, ...] | list[Window]) -> LazySlices:
    """Like :func:`apply_windows`, but each (channel, y, x) slice is computed when it is read."""
    if hu.ndim != 3:
        raise ParameterError(f"windowed_slices expects a (z, y, x) volume, found shape {hu.shape}")
    tables = [window_lookup_table(w) for w in windows]
    bits = hu.view(np.uint16)

    def make_slice(z: int) -> np.ndarray:
        out = np.empty((len(tables), *hu.shape[1:]), dtype=np.uint8)
        for channel, (table, window) in enumerate(zip(tables, windows)):
            lookup(table, bits[z], out[channel])
            if window.equalise:
                equalise_slices(out[channel])
        return out

    return LazySlices((hu.shape[0], len(windows), *hu.shape[1:]), np.uint8, make_slice)


# Threads windowing blocks in apply_windows: the gather is memory- and CPU-bound, so one a core.
_THREADS = max(1, min(4, os.cpu_count() or 1))


def window_reference(hu: np.ndarray, window: Window) -> np.ndarray:
    """The window formula evaluated directly in float64; the specification the table must meet."""
    scaled = (np.clip(hu.astype(np.float64), window.lo, window.hi) - window.lo) * 255.0 / (window.hi - window.lo)
    return np.floor(scaled + 0.5).astype(np.uint8)
