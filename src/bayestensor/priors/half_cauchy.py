"""Half-Cauchy hyper-prior on the rank scale ``s = √λ`` (the default)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import HalfCauchy

from ._base import RankPrior, as_buffer, positive_hyperparameter


class HalfCauchyPrior(RankPrior, name="half_cauchy"):
    r"""``s = √λ ~ HalfCauchy(η)``, ``p(s) ∝ 1 / (1 + s²/η²)``.

    The M-step solves ``(D+2) λ² - (M - D η²) λ - M η² = 0`` for its positive root:

    .. math::

        λ^* = \frac{M - Dη^2 + \sqrt{M^2 + (2D + 8) η^2 M + η^4 D^2}}{2D + 4}.

    Parameters
    ----------
    eta
        Scale ``η > 0`` of the half-Cauchy on ``√λ``.
    """

    placed_on = "scale"

    def __init__(self, eta: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("eta", as_buffer(positive_hyperparameter("eta", eta, self.name)))

    def log_prob(self, variance: Tensor) -> Tensor:  # noqa: D102
        return HalfCauchy(self.eta.to(variance.dtype)).log_prob(variance.sqrt())

    def map_update(self, energy: Tensor, count: Tensor) -> Tensor:  # noqa: D102
        eta2 = self.eta.to(energy.dtype) ** 2
        disc = energy**2 + (2 * count + 8) * eta2 * energy + eta2**2 * count**2
        return (energy - count * eta2 + torch.sqrt(disc)) / (2 * count + 4)
