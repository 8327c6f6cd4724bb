"""Tensor-train format: ``W[i_1..i_D] = G_1[:, i_1, :] G_2[:, i_2, :] ... G_D[:, i_D, :]``.

Cores have the layout ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_D = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._base import Network, Shape, TensorFormat, mode_names


def chain_network(
    out_shape: Shape, in_shape: Shape, ranks: Sequence[int], core_modes: Sequence[tuple[str, ...]]
) -> Network:
    """A train of cores ``(r_{k-1}, *core_modes[k], r_k)`` with boundary ranks of size 1."""
    outs, ins = mode_names(out_shape, in_shape)
    n = len(core_modes)
    links = ("e0", *(f"r{k}" for k in range(n - 1)), "e1")
    sizes = dict(zip(outs + ins, (*out_shape, *in_shape), strict=True)) | {"e0": 1, "e1": 1}
    sizes |= {f"r{k}": int(r) for k, r in enumerate(ranks)}
    factors = tuple((links[k], *core_modes[k], links[k + 1]) for k in range(n))
    return Network(factors, outs, ins, links[1:-1], sizes)


def chain_stds(target_std: float, num_cores: int, ranks: Sequence[int]) -> list[float]:
    """Per-core std for a train: ``Var(W) = Π_k r_k · σ^(2·num_cores)``."""
    return [(target_std**2 / math.prod(ranks)) ** (1.0 / (2 * num_cores))] * num_cores


class TT(TensorFormat, name="tt"):
    """TT over the modes ``out_shape + in_shape``: ``D - 1`` bonds for ``D`` modes.

    The bond between the last output core and the first input core splits ``W = C · A``, which
    the contraction planner exploits: ``y = (x Aᵀ) Cᵀ`` costs ``2 B r (N + M)``.
    """

    default_modes = 3

    def num_bonds(self, out_shape: Shape, in_shape: Shape) -> int:  # noqa: D102
        return len(out_shape) + len(in_shape) - 1

    def full_ranks(self, out_shape: Shape, in_shape: Shape) -> list[int]:  # noqa: D102
        modes = (*out_shape, *in_shape)
        return [min(math.prod(modes[: k + 1]), math.prod(modes[k + 1 :])) for k in range(len(modes) - 1)]

    def network(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> Network:  # noqa: D102
        outs, ins = mode_names(out_shape, in_shape)
        return chain_network(out_shape, in_shape, ranks, [(m,) for m in outs + ins])

    def factor_stds(  # noqa: D102
        self, target_std: float, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]
    ) -> list[float]:
        return chain_stds(target_std, len(out_shape) + len(in_shape), ranks)
