"""Reconstruction of a factorized matrix, and its squared norm without forming it; planned once per shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ..formats import get_format
from .constant import assume_constant_result
from .plan_cache import remember
from .planning import Steps, index_symbols, linear_terms, plan_contraction, run_steps

_RECON_CACHE: dict[tuple, tuple[Steps, float]] = {}


def reconstruction(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> tuple[Steps, float]:
    """The planned steps that contract the factors into ``W``, and their FLOP count (cached per shape)."""
    key = (fmt, out_shape, in_shape, ranks)
    if key not in _RECON_CACHE:
        network = get_format(fmt).network(out_shape, in_shape, ranks)
        sym, factors, _, out_modes, in_modes = linear_terms(network)
        sizes = {sym[k]: v for k, v in network.sizes.items()}
        steps, flops, _ = plan_contraction(factors, out_modes + in_modes, sizes)
        remember(_RECON_CACHE, key, (steps, flops))
    return _RECON_CACHE[key]


@assume_constant_result
def reconstruction_steps(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> Steps:
    """Planned steps that contract the factors into ``W`` of shape ``(*out_shape, *in_shape)``."""
    return reconstruction(fmt, out_shape, in_shape, ranks)[0]


def reconstruct_matrix(
    fmt: str, factors: Sequence[Tensor], out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> Tensor:
    """Contract the factors into the dense matrix ``W`` of shape ``(prod(out_shape), prod(in_shape))``."""
    steps = reconstruction_steps(fmt, out_shape, in_shape, ranks)
    full = run_steps(steps, factors)  # (*out_shape, *in_shape)
    return full.reshape(math.prod(out_shape), math.prod(in_shape))


_NORM_CACHE: dict[tuple, Steps] = {}


def squared_norm(
    fmt: str, factors: Sequence[Tensor], out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> Tensor:
    r"""``‖W‖_F²`` of the factorized matrix without forming ``W``.

    The network is contracted with a copy of itself whose bond indices are renamed, over every
    mode index: :math:`\sum_{i} W_i^2 = \sum_{i,r,r'} \prod_f G_f[i, r]\, G_f[i, r']`. For a TT
    table of ``10^7 × 128`` rows at rank 16 this is a chain of small matrix products.
    """
    key = (fmt, out_shape, in_shape, ranks)
    if key not in _NORM_CACHE:
        network = get_format(fmt).network(out_shape, in_shape, ranks)
        modes = set(network.out_indices) | set(network.in_indices)
        primed = {n: f"{n}'" for n in network.sizes if n not in modes}
        sym = index_symbols([*network.sizes, *primed.values()], reserved="")
        sizes = {sym[n]: v for n, v in network.sizes.items()} | {sym[p]: network.sizes[n] for n, p in primed.items()}
        terms = ["".join(sym[i] for i in idx) for idx in network.factor_indices]
        copies = ["".join(sym[primed.get(i, i)] for i in idx) for idx in network.factor_indices]
        remember(_NORM_CACHE, key, plan_contraction(terms + copies, "", sizes)[0])
    return run_steps(_NORM_CACHE[key], [*factors, *factors])
