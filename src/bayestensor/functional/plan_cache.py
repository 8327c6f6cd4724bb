"""A bound on the caches of plans and constants that are keyed by shapes and ranks.

Every planner here caches its result per ``(format, shapes, ranks, …)``, so that a training step
pays for planning once. Pruning changes ranks, and every pass that changes a layer's ranks adds
new keys, while the keys of the ranks it left are never read again. :func:`remember` inserts and
drops the oldest entries beyond :data:`MAX_PLANS`, so a long run (or a process that builds many
models) holds a bounded number of plans. Lookups stay plain ``dict`` reads, which ``torch.compile``
traces without a graph break.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Most entries one plan cache holds; beyond it the oldest inserted is dropped first.
MAX_PLANS = 4096


def remember(cache: dict[K, V], key: K, value: V) -> V:
    """``cache[key] = value``, first dropping the oldest entries so that at most :data:`MAX_PLANS` remain.

    Returns ``value``. ``dict`` keeps insertion order, so the first key is the oldest; a dropped
    plan is simply planned again if its shapes come back.
    """
    while cache and len(cache) >= MAX_PLANS:
        del cache[next(iter(cache))]
    cache[key] = value
    return value
