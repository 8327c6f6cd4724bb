"""Inverse-gamma hyper-prior on the rank variance ``λ`` (the authors' ``gamma`` option)."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import InverseGamma

from ._base import RankPrior, as_buffer, positive_hyperparameter


class InverseGammaPrior(RankPrior, name="inverse_gamma"):
    """``λ ~ InverseGamma(α, β)``; M-step ``λ* = (M + 2β) / (D + 2α + 2)``.

    Parameters
    ----------
    alpha, beta
        Shape ``α > 0`` and scale ``β > 0``.
    """

    placed_on = "variance"

    def __init__(self, alpha: float = 1.0, beta: float = 1e-3) -> None:
        super().__init__()
        self.register_buffer("alpha", as_buffer(positive_hyperparameter("alpha", alpha, self.name)))
        self.register_buffer("beta", as_buffer(positive_hyperparameter("beta", beta, self.name)))

    def log_prob(self, variance: Tensor) -> Tensor:  # noqa: D102
        dist = self.distribution(
            lambda dtype: InverseGamma(self.alpha.to(dtype), self.beta.to(dtype), validate_args=False), variance.dtype
        )
        return dist.log_prob(variance)

    def map_update(self, energy: Tensor, count: Tensor) -> Tensor:  # noqa: D102
        return (energy + 2 * self.beta.to(energy.dtype)) / (count + 2 * self.alpha.to(energy.dtype) + 2)
