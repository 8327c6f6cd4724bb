"""Planted low-rank teachers: regression data whose true tensor ranks are known."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..formats import available_formats, get_format
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


@dataclass(frozen=True)
class PlantedCase:
    """One randomly drawn planted-rank regression problem (see :func:`draw_planted_case`)."""

    seed: int
    format: str
    out_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    planted: tuple[int, ...]
    max_rank: tuple[int, ...]


def draw_planted_case(seed: int, format: str | None = None) -> PlantedCase:
    """A random shape, planted ranks and starting ranks for ``format`` (cycled over the registry if ``None``).

    Mode sizes are drawn from 2–8, with 2 or 3 modes per side (Tucker: 2, i.e. 4 modes in all);
    each planted rank from 1 to ``min(4, full rank)``, then clipped to what the format can hold;
    each student rank 2–5 above the planted one (at most the full rank). Nothing is tuned to a case.
    """
    rng = random.Random(seed)
    names = available_formats()
    name = names[seed % len(names)] if format is None else format
    fmt = get_format(name)
    modes = 2 if name == "tucker" else rng.choice([2, 3])
    out_shape = tuple(rng.randint(2, 8) for _ in range(modes))
    in_shape = tuple(rng.randint(2, 8) for _ in range(modes))
    full = fmt.full_ranks(out_shape, in_shape)
    planted = fmt.resolve_ranks([rng.randint(1, min(4, f)) for f in full], out_shape, in_shape)
    max_rank = [min(f, p + rng.randint(2, 5)) for p, f in zip(planted, full, strict=True)]
    return PlantedCase(seed, name, out_shape, in_shape, tuple(planted), tuple(max_rank))
