"""Tensor formats: pure index-network descriptions of factorized matrices, and a registry.

Importing this package registers the four built-in formats; it changes no global state.
"""

from . import cp, tt, ttm, tucker  # noqa: F401  (registration by class definition)
from ._base import Network, RankGroup, RankSpec, Shape, TensorFormat, available_formats, get_format
from .shapes import as_int, balanced_factors, check_mode_shape, tensorized_shape

__all__ = [
    "Network",
    "RankGroup",
    "RankSpec",
    "Shape",
    "TensorFormat",
    "as_int",
    "available_formats",
    "balanced_factors",
    "check_mode_shape",
    "get_format",
    "tensorized_shape",
]
