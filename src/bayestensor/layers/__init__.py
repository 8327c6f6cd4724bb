"""Thin tensorized layers over factorized weights."""

from .linear import TensorizedLinear

__all__ = ["TensorizedLinear"]
