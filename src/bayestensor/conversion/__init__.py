"""Dense → tensorized: ``from_dense`` dispatch over the layer registry and ``tensorize(model)``."""

from ..tensors.decompose import cp_als, cp_exact, decompose, hooi, relative_error, tt_svd, ttm_svd
from .from_dense import from_dense, layer_type_for
from .tensorize import format_summary, tensorize

__all__ = [
    "cp_als",
    "cp_exact",
    "decompose",
    "format_summary",
    "from_dense",
    "hooi",
    "layer_type_for",
    "relative_error",
    "tensorize",
    "tt_svd",
    "ttm_svd",
]
