"""Tucker format: ``W = G ×_1 U_1 ×_2 U_2 ... ×_D U_D``, core ``(R_1..R_D)``, factors ``(I_n, R_n)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._base import Network, Shape, TensorFormat, mode_names


class Tucker(TensorFormat, name="tucker"):
    """Tucker over the modes ``out_shape + in_shape``; one bond per mode.

    Factor order: ``[core, U_1, ..., U_D]``. Bond ``n`` governs column ``r`` of ``U_n`` and the
    core's slice ``r`` along mode ``n``.
    """

    default_modes = 2

    def num_bonds(self, out_shape: Shape, in_shape: Shape) -> int:  # noqa: D102
        return len(out_shape) + len(in_shape)

    def full_ranks(self, out_shape: Shape, in_shape: Shape) -> list[int]:  # noqa: D102
        modes = (*out_shape, *in_shape)
        total = math.prod(modes)
        return [min(m, total // m) for m in modes]

    def network(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> Network:  # noqa: D102
        outs, ins = mode_names(out_shape, in_shape)
        modes = outs + ins
        bonds = tuple(f"r{n}" for n in range(len(modes)))
        sizes = dict(zip(modes, (*out_shape, *in_shape), strict=True))
        sizes |= {b: int(r) for b, r in zip(bonds, ranks, strict=True)}
        factors = (bonds, *((m, b) for m, b in zip(modes, bonds, strict=True)))
        return Network(factors, outs, ins, bonds, sizes)

    def factor_stds(  # noqa: D102
        self, target_std: float, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]
    ) -> list[float]:
        d = len(out_shape) + len(in_shape)
        # Var(W) = Π_n R_n · σ^(2(d+1)) with one σ for the core and every factor
        return [(target_std**2 / math.prod(ranks)) ** (1.0 / (2 * (d + 1)))] * (d + 1)
