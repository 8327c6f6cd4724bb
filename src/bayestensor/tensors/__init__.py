"""Factorized weights with their Bayesian state, and the base class of tensorized layers."""

from .counting import count_params, dense_params
from .factorized import DEFAULT_PRUNE_THRESHOLD, FactorizedTensor
from .module import TensorizedModule
from .posteriors import POSTERIORS, MeanFieldGaussian, PointMass, Posterior, get_posterior

__all__ = [
    "DEFAULT_PRUNE_THRESHOLD",
    "POSTERIORS",
    "FactorizedTensor",
    "MeanFieldGaussian",
    "PointMass",
    "Posterior",
    "TensorizedModule",
    "count_params",
    "dense_params",
    "get_posterior",
]
