r"""The mean-field Gaussian posterior of SVI: ``q(w) = Π N(w; μ, σ²)``, ``σ = softplus(ρ)``.

Per entry, ``E_q[w²] = μ² + σ²`` and ``H[q] = Σ ½ log(2πe σ²)``. A draw is reparameterised,
``w = μ + σ ε`` with ``ε ~ N(0, I)``. Under a gauge change of the rank axis, ``G → G T``, the
entries stay independent Gaussians only approximately; the scales follow the exact variance of
the mapped entries, ``σ'² = σ² (T ∘ T)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from ..statistics import slice_sums
from ._base import Posterior

#: Initial posterior std of SVI factors, relative to the factor's initial std.
SVI_INIT_SCALE = 1e-2


def inverse_softplus(std: Tensor) -> Tensor:
    """``ρ`` with ``softplus(ρ) = std`` (identity above 20, where softplus is)."""
    return torch.where(std > 20, std, std.expm1().clamp_min(1e-30).log())


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _entry_std(t: Tensor) -> float:
    return float(t.float().std()) if t.numel() > 1 else float(t.float().abs().mean())


class MeanFieldGaussian(Posterior):
    """``q(w) = Π N(w; μ, softplus(ρ)²)`` over every factor entry; ``raw_scales`` holds ``ρ`` per factor."""

    stochastic = True

    def __init__(self) -> None:
        super().__init__()
        self.raw_scales = nn.ParameterList()

    def scales(self) -> list[Tensor]:
        """Posterior stds ``σ = softplus(ρ)``, one tensor per factor."""
        return [F.softplus(r) for r in self.raw_scales]

    def sample(self, means: Sequence[Tensor]) -> list[Tensor]:  # noqa: D102
        return [m + s * torch.randn_like(m) for m, s in zip(means, self.scales(), strict=True)]

    def second_moments(self, means: Sequence[Tensor]) -> list[Tensor]:  # noqa: D102
        return [m.square() + s.square() for m, s in zip(means, self.scales(), strict=True)]

    def entropy(self, means: Sequence[Tensor]) -> Tensor:  # noqa: D102
        total = means[0].new_zeros((), dtype=torch.float64 if means[0].dtype == torch.float64 else torch.float32)
        for m, s in zip(means, self.scales(), strict=True):
            total = total + Normal(m, s).entropy().sum().to(total.dtype)
        return total

    def signal_to_noise(self, means: Sequence[Tensor], factor: int, axis: int) -> Tensor:  # noqa: D102
        spread = F.softplus(self.raw_scales[factor].detach())  # this factor's σ only (scales() maps them all)
        return slice_sums(means[factor].detach().square(), axis) / slice_sums(spread.square(), axis)

    def factor_parameters(self) -> list[nn.ParameterList]:  # noqa: D102
        return [self.raw_scales]

    @torch.no_grad()
    def create_(self, means: Sequence[Tensor], stds: Sequence[float]) -> None:  # noqa: D102
        self.raw_scales = nn.ParameterList(
            [
                nn.Parameter(torch.full_like(m, _inverse_softplus(SVI_INIT_SCALE * sd)))
                for m, sd in zip(means, stds, strict=True)
            ]
        )

    @torch.no_grad()
    def reset_(self, means: Sequence[Tensor]) -> None:  # noqa: D102
        for raw, m in zip(self.raw_scales, means, strict=True):
            raw.fill_(_inverse_softplus(max(SVI_INIT_SCALE * _entry_std(m), 1e-8)))

    @torch.no_grad()
    def rotate_(self, factor: int, axis: int, matrix: Tensor, leading: bool) -> None:  # noqa: D102
        raw = self.raw_scales[factor]
        r = raw.shape[axis]
        var = F.softplus(raw).to(matrix.dtype).square()
        if leading:
            moved = var.movedim(axis, 0)
            new = (matrix.square() @ moved.reshape(r, -1)).reshape(moved.shape).movedim(0, axis)
        else:
            moved = var.movedim(axis, -1)
            new = (moved.reshape(-1, r) @ matrix.square()).reshape(moved.shape).movedim(-1, axis)
        raw.copy_(inverse_softplus(new.sqrt()).to(raw.dtype))

    @torch.no_grad()
    def rescale_(self, factor: int, axis: int, scale: Tensor) -> None:  # noqa: D102
        raw = self.raw_scales[factor]
        shape = [1] * raw.dim()
        shape[axis] = -1
        raw.copy_(inverse_softplus(F.softplus(raw) * scale.view(shape).to(raw.dtype)))
