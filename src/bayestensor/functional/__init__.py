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

__all__ = [
    "assume_constant_result",
    "LinearPlan",
    "batch_bucket",
    "factorized_linear",
    "index_symbols",
    "linear_plan",
    "plan_contraction",
    "reconstruct_matrix",
    "run_steps",
    "squared_norm",
]
