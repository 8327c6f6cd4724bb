"""CP (canonical polyadic) format: ``W[i_1..i_D] = Σ_r Π_n U_n[i_n, r]``, factors ``(I_n, R)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._base import Network, Shape, TensorFormat, mode_names


class CP(TensorFormat, name="cp"):
    """CP over the modes ``out_shape + in_shape`` with one shared rank ``R`` (one bond).

    Parameters: ``R · Σ_n I_n``. No weights vector is stored (it is absorbed in the factors),
    matching TensorLy's ``(weights, factors)`` with unit weights.
    """

    default_modes = 3

    def num_bonds(self, out_shape: Shape, in_shape: Shape) -> int:  # noqa: D102
        return 1

    def full_ranks(self, out_shape: Shape, in_shape: Shape) -> list[int]:  # noqa: D102
        modes = (*out_shape, *in_shape)
        return [math.prod(modes) // max(modes)]

    def network(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> Network:  # noqa: D102
        outs, ins = mode_names(out_shape, in_shape)
        modes = outs + ins
        sizes = dict(zip(modes, (*out_shape, *in_shape), strict=True)) | {"r0": int(ranks[0])}
        return Network(tuple((m, "r0") for m in modes), outs, ins, ("r0",), sizes)

    def factor_stds(  # noqa: D102
        self, target_std: float, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]
    ) -> list[float]:
        d = len(out_shape) + len(in_shape)
        # Var(W) = R · σ^(2d)
        return [(target_std**2 / ranks[0]) ** (1.0 / (2 * d))] * d
