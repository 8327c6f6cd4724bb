"""Stateless contractions of factorized weights with inputs, planned once per shape."""

from .contraction import (
    LinearPlan,
    batch_bucket,
    factorized_linear,
    index_symbols,
    linear_plan,
    plan_contraction,
    reconstruct_matrix,
    run_steps,
)

__all__ = [
    "LinearPlan",
    "batch_bucket",
    "factorized_linear",
    "index_symbols",
    "linear_plan",
    "plan_contraction",
    "reconstruct_matrix",
    "run_steps",
]
