"""Log-uniform (Jeffreys) hyper-prior on the rank scale ``s = √λ``."""

from __future__ import annotations

from torch import Tensor

from ._base import RankPrior


class LogUniformPrior(RankPrior, name="log_uniform"):
    """Improper ``p(s) ∝ 1/s`` on ``s = √λ``, so ``log p = -½ log λ``; M-step ``λ* = M / (D + 1)``.

    ``torch.distributions`` has no improper densities, so the one-line log density is written here.
    """

    placed_on = "scale"

    def log_prob(self, variance: Tensor) -> Tensor:  # noqa: D102
        return -0.5 * variance.log()

    def map_update(self, energy: Tensor, count: Tensor) -> Tensor:  # noqa: D102
        return energy / (count + 1)
