r"""The rank statistics of a factorized tensor, all bonds in one fused computation.

For bond ``b`` and rank index ``r`` (:mod:`.factorized`),

.. math::

    M_{b,r} = \sum_{(f, a) \in \text{members}(b)} \sum_{\text{entries } w \text{ of slice } r
    \text{ of } G_f \text{ along } a} \mathbb{E}_q[w^2], \qquad
    D_{b,r} = \sum_{(f, a)} \#\text{entries of that slice}.

All bonds are laid out in one flat vector of length ``Σ_b R_b`` (bond ``b`` at
``offset_b … offset_b + R_b``). A :class:`StatisticsLayout`, derived once per format, shapes and
ranks from the format's index network, holds the members in bond order, the flat position of
every member's slice sums and the counts ``D``; a step then costs one reduction per member, one
``cat`` and one ``index_add`` instead of a Python walk over rank groups. The layout is a constant
under ``torch.compile`` (:func:`~bayestensor.functional.assume_constant_result`).
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import NamedTuple

import torch
from torch import Tensor

from ..formats import Shape, get_format
from ..functional import assume_constant_result, remember


class StatisticsLayout(NamedTuple):
    """Members (``(factor, axis)``, bond after bond), the flat position of their slice sums, ``D`` and the ranks."""

    members: tuple[tuple[int, int], ...]
    index: tuple[int, ...]
    counts: tuple[float, ...]
    sizes: tuple[int, ...]


def slice_sums(t: Tensor, axis: int) -> Tensor:
    """Sum of ``t`` over every axis but ``axis``: one value per slice along ``axis``."""
    return t.sum(dim=[d for d in range(t.dim()) if d != axis])


_LAYOUTS: dict[tuple, StatisticsLayout] = {}
_ON_DEVICE: dict[tuple, tuple[StatisticsLayout, Tensor, Tensor]] = {}


@assume_constant_result
def statistics_layout(fmt: str, out_shape: Shape, in_shape: Shape, ranks: tuple[int, ...]) -> StatisticsLayout:
    """The (cached) :class:`StatisticsLayout` of a format at these shapes and ranks."""
    key = (fmt, out_shape, in_shape, ranks)
    if key not in _LAYOUTS:
        form = get_format(fmt)
        shapes = form.factor_shapes(out_shape, in_shape, list(ranks))
        offsets = [0, *accumulate(ranks)]
        members, index, counts = [], [], [0.0] * offsets[-1]
        for group in form.rank_groups(out_shape, in_shape, list(ranks)):
            b = group.bond
            for f, axis in group.members:
                members.append((f, axis))
                index.extend(range(offsets[b], offsets[b] + ranks[b]))
                per_slice = math.prod(shapes[f]) // shapes[f][axis]
                for r in range(ranks[b]):
                    counts[offsets[b] + r] += per_slice
        remember(_LAYOUTS, key, StatisticsLayout(tuple(members), tuple(index), tuple(counts), tuple(ranks)))
    return _LAYOUTS[key]


def _index_and_counts(layout: StatisticsLayout, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``layout.index`` and ``layout.counts`` as tensors; cached per device outside ``torch.compile``."""

    def build() -> tuple[Tensor, Tensor]:
        index = torch.tensor(layout.index, dtype=torch.long, device=device)
        return index, torch.tensor(layout.counts, dtype=dtype, device=device)

    if torch.compiler.is_compiling():  # constants of the traced graph
        return build()
    key = (id(layout), device, dtype)
    entry = _ON_DEVICE.get(key)
    if entry is None:  # the entry holds its layout alive, so no other layout can take its id while it is cached
        entry = remember(_ON_DEVICE, key, (layout, *build()))
    return entry[1], entry[2]


def rank_energies(layout: StatisticsLayout, second: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Flat ``(M, D)``, shape ``(Σ_b R_b,)`` each, from the entrywise second moments ``E_q[w²]`` of the factors."""
    parts = [slice_sums(second[f], axis) for f, axis in layout.members]
    flat = torch.cat(parts)
    index, counts = _index_and_counts(layout, flat.device, flat.dtype)
    return flat.new_zeros(sum(layout.sizes)).index_add(0, index, flat), counts
