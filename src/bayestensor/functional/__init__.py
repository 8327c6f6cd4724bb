"""Stateless contractions of factorized weights with inputs, planned once per shape."""

from .constant import assume_constant_result
from .contraction import (
    LinearPlan,
    batch_bucket,
    factorized_linear,
    index_symbols,
    linear_plan,
    plan_contraction,
    reconstruct_matrix,
    run_steps,
    squared_norm,
)
from .precision import cast_all, compute_dtype
from .rows import ROW_KERNELS, embedding_plan, gather_rows, register_row_kernel

__all__ = [
    "assume_constant_result",
    "LinearPlan",
    "ROW_KERNELS",
    "batch_bucket",
    "cast_all",
    "compute_dtype",
    "embedding_plan",
    "factorized_linear",
    "gather_rows",
    "index_symbols",
    "linear_plan",
    "plan_contraction",
    "reconstruct_matrix",
    "register_row_kernel",
    "run_steps",
    "squared_norm",
]
