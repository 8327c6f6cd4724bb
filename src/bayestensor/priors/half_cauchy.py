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
        dist = self.distribution(lambda dtype: HalfCauchy(self.eta.to(dtype), validate_args=False), variance.dtype)
        return dist.log_prob(variance.sqrt())

    def map_update(self, energy: Tensor, count: Tensor) -> Tensor:
        """Positive root of the M-step quadratic, in a cancellation-free form.

        With ``b = M − Dη²``, ``λ* = (b + √disc) / (2D + 4)`` when ``b ≥ 0`` and, equivalently,
        ``λ* = 2Mη² / (√disc − b)`` when ``b < 0``: a weak component (``M ≪ Dη²``) would otherwise
        lose all its digits to cancellation and get ``λ = 0``.
        """
        m, d = energy.double(), count.double()
        eta2 = self.eta.double() ** 2
        b = m - d * eta2
        root = torch.sqrt(m**2 + (2 * d + 8) * eta2 * m + eta2**2 * d**2)
        lam = torch.where(b >= 0, (b + root) / (2 * d + 4), 2 * m * eta2 / (root - b))
        return lam.to(energy.dtype)
