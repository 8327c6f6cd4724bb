"""Checks shared by the inference objects: arguments (each named, with what it expects and got) and optimizers."""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..formats import as_int


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int ``>= 1``; integer-like values (NumPy, 0-d torch integers) count, booleans do not."""
    n = as_int(value)
    if n is None or n < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return n


def number(name: str, value: Any, *, low: float, high: float = math.inf, open_low: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` with ``open_low``): finite unless ``high`` is ``inf``.

    Any real number counts (NumPy's too); booleans, strings and NaN are refused.
    """
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and not math.isnan(value)
    if ok:
        above = value > low if open_low else value >= low
        below = value < math.inf if high == math.inf else value <= high  # an unbounded range is still finite
        ok = above and below
    if not ok:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if high == math.inf else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def held_by(optimizer: Any) -> set[int]:
    """The ``id`` of every parameter ``optimizer`` holds, over all its parameter groups."""
    return {id(p) for group in optimizer.param_groups for p in group["params"]}
