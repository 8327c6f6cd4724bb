"""Stateless contractions of factorized weights with inputs, planned once per shape."""

from .constant import assume_constant_result
from .contraction import factorized_linear
from .conv_plan import ConvSplit, ConvSteps, conv_plan, conv_plan_constant
from .cost_model import EinsumPlan, LinearPlan, TwoStage, linear_plan
from .layout import grad_in_own_format
from .plan_cache import MAX_PLANS, remember
from .planning import batch_bucket, index_symbols, plan_contraction, run_steps
from .precision import cast_all, compute_dtype
from .reconstruction import reconstruct_matrix, squared_norm
from .rows import ROW_KERNELS, embedding_plan, gather_rows, register_row_kernel

__all__ = [
    "assume_constant_result",
    "ConvSplit",
    "ConvSteps",
    "EinsumPlan",
    "LinearPlan",
    "TwoStage",
    "ROW_KERNELS",
    "batch_bucket",
    "cast_all",
    "compute_dtype",
    "conv_plan",
    "conv_plan_constant",
    "embedding_plan",
    "factorized_linear",
    "gather_rows",
    "grad_in_own_format",
    "index_symbols",
    "linear_plan",
    "MAX_PLANS",
    "plan_contraction",
    "reconstruct_matrix",
    "register_row_kernel",
    "remember",
    "run_steps",
    "squared_norm",
]
