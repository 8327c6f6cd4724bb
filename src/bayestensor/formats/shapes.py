"""Choosing mode shapes: balanced integer factorisation, with zero-padding for sizes that factor badly."""

from __future__ import annotations

import math
import operator
from functools import lru_cache

#: A factorisation is accepted when its largest factor is at most this times ``ceil(n ** (1/k))``.
BALANCE_TOLERANCE = 2.0
#: How far past ``n`` the padded size may go, as a fraction of ``n`` (at least 16 rows).
MAX_PADDING = 0.05


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@lru_cache(maxsize=4096)
def balanced_factors(n: int, num_modes: int) -> tuple[int, ...]:
    """Factor ``n`` exactly into ``num_modes`` ints, minimising the largest factor.

    Returns the factors in ascending order; factors of 1 appear when ``n`` has too few prime
    factors. Ties are broken towards the largest smallest factor.

    Examples
    --------
    >>> balanced_factors(1024, 4)
    (4, 4, 8, 8)
    >>> balanced_factors(10, 3)
    (1, 2, 5)
    """
    if n < 1 or num_modes < 1:
        raise ValueError(f"expected n >= 1 and num_modes >= 1, got n={n}, num_modes={num_modes}")
    if num_modes == 1:
        return (n,)
    best: tuple[int, ...] | None = None
    for d in _divisors(n):
        if d**num_modes > n:  # keep factors ascending: d is the smallest factor
            break
        rest = balanced_factors(n // d, num_modes - 1)
        if rest[0] < d:
            continue
        cand = (d, *rest)
        if best is None or (cand[-1], -cand[0]) < (best[-1], -best[0]):
            best = cand
    if best is None:  # only reachable when n has no divisor chain in ascending order
        best = (*([1] * (num_modes - 1)), n)
    return best


def _acceptable(factors: tuple[int, ...], n: int) -> bool:
    ideal = math.ceil(n ** (1.0 / len(factors)) - 1e-9)
    return factors[-1] <= BALANCE_TOLERANCE * ideal


def _greedy_cover(n: int, num_modes: int) -> tuple[int, ...]:
    """Near-equal factors whose product is just above ``n`` (e.g. 10,131,227 -> 217 × 217 × 216)."""
    factors, remaining = [], n
    for k in range(num_modes, 0, -1):
        f = math.ceil(remaining ** (1.0 / k) - 1e-9)
        factors.append(f)
        remaining = math.ceil(remaining / f)
    return tuple(sorted(factors))


def tensorized_shape(n: int, num_modes: int) -> tuple[int, ...]:
    """Mode sizes whose product is ``n`` or, when ``n`` factors badly (a prime, say), a size a little above.

    The product ``prod(result) >= n``; layers zero-pad the extra rows or columns and never
    expose them.

    Parameters
    ----------
    n
        The feature (or row) count to factor, ``n >= 1``.
    num_modes
        Number of modes wanted.
    """
    if n < 1:
        raise ValueError(f"feature sizes must be positive, got {n}")
    exact = balanced_factors(n, num_modes)
    if _acceptable(exact, n):
        return exact
    window = max(16, int(MAX_PADDING * n))
    if window <= 4096:
        for m in range(n + 1, n + window + 1):
            cand = balanced_factors(m, num_modes)
            if _acceptable(cand, m):
                return cand
    return _greedy_cover(n, num_modes)


def as_int(value: object) -> int | None:
    """``value`` as an int when it is integer-like (an int, a NumPy or 0-d torch integer, a SymInt), else ``None``.

    Booleans are not counts, so they give ``None`` too.
    """
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_mode_shape(given: object, n: int, name: str, what: str) -> tuple[int, ...]:
    """``given`` as a tuple of mode sizes whose product covers ``n``; a ``ValueError`` naming both otherwise.

    A product above ``n`` is zero-padded, as :func:`tensorized_shape`'s choices are, so a layer's
    shapes (its ``repr``, a saved description) can always be handed back to its constructor.

    Parameters
    ----------
    given
        The mode sizes (positive ints).
    n
        The size they must cover.
    name, what
        The argument's name and what ``n`` is, for the message (``"in_shape"``, ``"in_features"``).
    """
    try:
        entries = [as_int(s) for s in given]  # type: ignore[union-attr]
    except TypeError:  # not iterable
        entries = [None]
    shape = None if None in entries else tuple(entries)
    if not shape or any(s < 1 for s in shape) or math.prod(shape) < n:
        got = repr(given) if shape is None else f"{shape} (product {math.prod(shape) if shape else 0})"
        raise ValueError(
            f"{name} must be positive ints whose product is at least {what} = {n} (a larger product is "
            f"zero-padded), got {got}; or pass {name}=None to choose one automatically"
        )
    return shape
