"""Planted low-rank teachers: regression data whose true tensor ranks are known."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..formats import get_format
from ..functional import reconstruct_matrix


def planted_teacher(
    format: str,
    out_shape: Sequence[int],
    in_shape: Sequence[int],
    ranks: Sequence[int],
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A random ``(prod(out_shape), prod(in_shape))`` matrix of exactly the given ranks in ``format``.

    Factors are i.i.d. Gaussian scaled so the entries have unit variance; the result is then
    normalised to unit RMS, so the planted rank components are well separated from zero.
    """
    fmt = get_format(format)
    out_shape, in_shape = tuple(out_shape), tuple(in_shape)
    r = fmt.resolve_ranks(list(ranks), out_shape, in_shape)
    if list(r) != list(ranks):
        raise ValueError(f"planted ranks {list(ranks)} exceed the full ranks {fmt.full_ranks(out_shape, in_shape)}")
    gen = torch.Generator().manual_seed(seed)
    stds = fmt.factor_stds(1.0, out_shape, in_shape, r)
    factors = [
        torch.randn(s, generator=gen, dtype=dtype) * sd
        for s, sd in zip(fmt.factor_shapes(out_shape, in_shape, r), stds, strict=True)
    ]
    w = reconstruct_matrix(fmt.name, factors, out_shape, in_shape, tuple(r))
    return w / w.pow(2).mean().sqrt()


def planted_regression(teacher: Tensor, num_samples: int, noise: float = 0.01, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``x ~ N(0, I)``, ``y = x Wᵀ + noise · ε``, for a teacher ``W`` of shape ``(M, N)``."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_samples, teacher.shape[1], generator=gen, dtype=teacher.dtype)
    y = x @ teacher.T + noise * torch.randn(num_samples, teacher.shape[0], generator=gen, dtype=teacher.dtype)
    return x, y
