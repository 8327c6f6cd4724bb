r"""The rank statistics of a factorized tensor, all bonds in one fused computation.

For bond ``b`` and rank index ``r`` (:mod:`.factorized`),

.. math::

    M_{b,r} = \sum_{(f, a) \in \text{members}(b)} \sum_{\text{entries } w \text{ of slice } r
    \text{ of } G_f \text{ along } a} \mathbb{E}_q[w^2], \qquad
    D_{b,r} = \sum_{(f, a)} \#\text{entries of that slice}.

All bonds are laid out in one flat vector of length ``Σ_b R_b`` (bond ``b`` at
``offset_b … offset_b + R_b``). A :class:`StatisticsPlan`, built once per format, shapes and
ranks from the format's index network, holds the members in bond order, the flat position of every
member's slice sums and the counts ``D``; a step then costs one reduction per member, one
``cat`` and one ``index_add`` instead of a Python walk over rank groups.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import accumulate

import torch
from torch import Tensor

from ..formats import Shape, get_format


class StatisticsPlan:
    """Members, flat positions and counts of every bond of one format at one set of ranks."""

    def __init__(self, fmt: str, out_shape: Shape, in_shape: Shape, ranks: tuple[int, ...]) -> None:
        form = get_format(fmt)
        shapes = form.factor_shapes(out_shape, in_shape, list(ranks))
        self.sizes = list(ranks)
        offsets = [0, *accumulate(ranks)]
        self.total = offsets[-1]
        self.members: list[tuple[int, int]] = []
        index: list[int] = []
        counts = [0.0] * self.total
        for group in form.rank_groups(out_shape, in_shape, list(ranks)):
            b = group.bond
            for f, axis in group.members:
                self.members.append((f, axis))
                index.extend(range(offsets[b], offsets[b] + ranks[b]))
                per_slice = math.prod(shapes[f]) // shapes[f][axis]
                for r in range(ranks[b]):
                    counts[offsets[b] + r] += per_slice
        self._index = index
        self._counts = counts
        self._on: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The flat index of the members' slice sums and the counts ``D``, on ``device``."""
        key = (device, dtype)
        if key not in self._on:
            self._on[key] = (
                torch.tensor(self._index, dtype=torch.long, device=device),
                torch.tensor(self._counts, dtype=dtype, device=device),
            )
        return self._on[key]

    def energies(self, second: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Flat ``(M, D)`` from the entrywise second moments ``E_q[w²]`` of the factors."""
        parts = [second[f].sum(dim=[d for d in range(second[f].dim()) if d != axis]) for f, axis in self.members]
        flat = torch.cat(parts)
        index, counts = self.tensors(flat.device, flat.dtype)
        return flat.new_zeros(self.total).index_add(0, index, flat), counts

    def split(self, flat: Tensor) -> list[Tensor]:
        """Per-bond views of a flat vector."""
        return list(flat.split(self.sizes))


@lru_cache(maxsize=512)
def statistics_plan(fmt: str, out_shape: Shape, in_shape: Shape, ranks: tuple[int, ...]) -> StatisticsPlan:
    """The cached :class:`StatisticsPlan` of a format at these shapes and ranks."""
    return StatisticsPlan(fmt, out_shape, in_shape, ranks)
