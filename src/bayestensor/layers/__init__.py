"""Thin tensorized layers over factorized weights."""

from .conv import TensorizedConv2d
from .embedding import TensorizedEmbedding
from .linear import TensorizedLinear

__all__ = ["TensorizedConv2d", "TensorizedEmbedding", "TensorizedLinear"]
