"""Naming the valid choices in an error: "did you mean ...", and the list, shortened.

One rule for every "unknown X" message of the three tools (a case id, a window preset,
a label, a source, a model): suggest the closest valid choice when one is close
(difflib's ratio >= 0.6, case-insensitive), and list the valid ones, at most
``MAX_LISTED`` of them, with how many more there are.
"""

from __future__ import annotations

import difflib
from typing import Iterable

MAX_LISTED = 12


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The valid choice closest to ``value``, or None when none is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(str(value).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def listed(choices: Iterable[str]) -> str:
    """``a, b, c`` or ``a, b, ... (and N more)``; ``none`` for no choice."""
    choices = list(choices)
    if not choices:
        return "none"
    more = len(choices) - MAX_LISTED
    return ", ".join(choices[:MAX_LISTED]) + (f", ... (and {more} more)" if more > 0 else "")


def unknown(what: str, value: str, choices: Iterable[str]) -> str:
    """``unknown case 'x'; did you mean 'y'? (valid: ...)``: the message for a value not among ``choices``."""
    choices = list(choices)
    guess = closest(value, choices)
    hint = f"; did you mean {guess!r}?" if guess is not None else ""
    return f"unknown {what} {value!r}{hint} (valid: {listed(choices)})"
