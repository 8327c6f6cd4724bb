"""bayestensor: compact neural networks trained in low-rank tensor formats with Bayesian rank determination.

Importing the package registers the built-in formats and priors and changes no global state.
"""

from .conversion import format_summary, from_dense, tensorize
from .formats import available_formats, get_format
from .inference import (
    ARD,
    SGHMC,
    SVGD,
    CollapseWarning,
    Ensemble,
    expected_calibration_error,
    kl_weight,
    negative_log_likelihood,
    predict,
    prior_loss,
    prune,
    ranks,
    update_rank_variances,
)
from .io import ExportError, load, save
from .layers import (
    LAYER_TYPES,
    TensorizedConv1d,
    TensorizedConv2d,
    TensorizedEmbedding,
    TensorizedLinear,
    TensorizedMultiheadAttention,
)
from .onnx_export import export_onnx
from .priors import available_priors, get_prior
from .tensors import FactorizedTensor, TensorizedModule, count_params, dense_params

__version__ = "0.1.0"

__all__ = [
    "ARD",
    "LAYER_TYPES",
    "SGHMC",
    "SVGD",
    "CollapseWarning",
    "Ensemble",
    "ExportError",
    "FactorizedTensor",
    "TensorizedConv1d",
    "TensorizedConv2d",
    "TensorizedEmbedding",
    "TensorizedLinear",
    "TensorizedModule",
    "TensorizedMultiheadAttention",
    "__version__",
    "available_formats",
    "available_priors",
    "count_params",
    "dense_params",
    "expected_calibration_error",
    "export_onnx",
    "format_summary",
    "from_dense",
    "get_format",
    "get_prior",
    "kl_weight",
    "load",
    "negative_log_likelihood",
    "predict",
    "prior_loss",
    "prune",
    "ranks",
    "save",
    "tensorize",
    "update_rank_variances",
]
