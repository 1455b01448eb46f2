"""How a stored value reads in a one-line message: plain words, never a Python repr.

One rule for every "X has ..., asked ..." message (a store made with other parameters,
a label made with other parameters): windows as ``name [lo, hi] HU``, lists comma-joined,
mappings as ``key=value``, None as ``none``, strings bare.
"""

from __future__ import annotations

from typing import Any, Mapping


def plain(value: Any) -> str:
    """``value`` as plain text for a message."""
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        if {"name", "min", "max"} <= set(value):  # a window
            return f"{value['name']} [{value['min']:g}, {value['max']:g}] HU"
        return ", ".join(f"{k}={plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def differences(has: Mapping, asked: Mapping, limit: int = 3) -> str:
    """``key: has X, asked Y; ...`` for the keys whose values differ (at most ``limit``, then how many more)."""
    keys = sorted(k for k in set(has) | set(asked) if has.get(k) != asked.get(k))
    text = "; ".join(f"{k}: has {plain(has.get(k))}, asked {plain(asked.get(k))}" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")
