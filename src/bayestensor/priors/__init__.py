"""Hyper-priors on the rank-controlling variances ``λ``."""

from . import half_cauchy, inverse_gamma, log_uniform  # noqa: F401  (registration)
from ._base import DEFAULT_SCALE_FLOOR, RankPrior, available_priors, get_prior
from .half_cauchy import HalfCauchyPrior
from .inverse_gamma import InverseGammaPrior
from .log_uniform import LogUniformPrior

__all__ = [
    "DEFAULT_SCALE_FLOOR",
    "HalfCauchyPrior",
    "InverseGammaPrior",
    "LogUniformPrior",
    "RankPrior",
    "available_priors",
    "get_prior",
]
