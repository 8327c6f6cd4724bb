"""TT-matrix format (Novikov et al. 2015): ``W[(i_1,j_1)..(i_d,j_d)] = Π_k G_k[:, i_k, j_k, :]``.

Cores have the layout ``(r_{k-1}, m_k, n_k, r_k)`` where ``m = out_shape`` and ``n = in_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._base import Network, Shape, TensorFormat, mode_names
from .tt import chain_network, chain_stds


class TTM(TensorFormat, name="ttm"):
    """TT-matrix: core ``k`` pairs ``(out_shape[k], in_shape[k])``; ``d - 1`` bonds."""

    default_modes = 3
    paired_modes = True

    def num_bonds(self, out_shape: Shape, in_shape: Shape) -> int:  # noqa: D102
        return len(out_shape) - 1

    def full_ranks(self, out_shape: Shape, in_shape: Shape) -> list[int]:  # noqa: D102
        pairs = [m * n for m, n in zip(out_shape, in_shape, strict=True)]
        return [min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)]

    def network(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> Network:  # noqa: D102
        outs, ins = mode_names(out_shape, in_shape)
        return chain_network(out_shape, in_shape, ranks, list(zip(outs, ins, strict=True)))

    def factor_stds(  # noqa: D102
        self, target_std: float, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]
    ) -> list[float]:
        return chain_stds(target_std, len(out_shape), ranks)
