"""Dense → tensorized: decompositions of trained weights, ``from_dense`` constructors and ``tensorize(model)``."""

from .decompose import cp_als, cp_exact, decompose, hooi, relative_error, tt_svd, ttm_svd
from .from_dense import conv2d_from_dense, embedding_from_dense, from_dense, linear_from_dense, load_factors_
from .tensorize import format_summary, tensorize

__all__ = [
    "conv2d_from_dense",
    "cp_als",
    "cp_exact",
    "decompose",
    "embedding_from_dense",
    "format_summary",
    "from_dense",
    "hooi",
    "linear_from_dense",
    "load_factors_",
    "relative_error",
    "tensorize",
    "tt_svd",
    "ttm_svd",
]
