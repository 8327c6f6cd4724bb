"""``x Wᵀ`` for a factorized ``W``, by the strategy the cost model chose (:mod:`.cost_model`).

The strategies live beside this dispatcher: reconstruction (:mod:`.reconstruction`), one planned
contraction (:mod:`.planning`) and the two-stage product (:mod:`.two_stage`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cost_model import linear_plan_constant
from .planning import Steps, run_steps
from .reconstruction import reconstruct_matrix
from .two_stage import two_stage_linear


def _einsum_all(steps: Steps, x: Tensor, *factors: Tensor) -> Tensor:
    return run_steps(steps, (x, *factors))


def factorized_linear(
    x: Tensor,
    fmt: str,
    factors: Sequence[Tensor],
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    ranks: tuple[int, ...],
    strategy: str = "auto",
    bias: Tensor | None = None,
) -> Tensor:
    """``x Wᵀ + bias`` for ``x`` of shape ``(B, prod(in_shape))``, without forming ``W`` unless cheaper.

    Parameters
    ----------
    x
        Input of shape ``(B, N)`` with ``N = prod(in_shape)``.
    fmt
        Format name.
    factors
        The format's factors, consistent with ``ranks``.
    strategy
        ``"auto"`` (cost model), ``"factorized"``, ``"reconstruct"``, ``"einsum"`` or ``"two_stage"``.
    bias
        ``(prod(out_shape),)`` or ``None``. A reconstructed ``W`` and the two-stage product add it
        within their last matrix product (as ``nn.Linear`` does), not by another pass over ``y``.

    Returns
    -------
    Tensor
        ``(B, M)`` with ``M = prod(out_shape)``.
    """
    batch = x.shape[0]
    if bias is not None and tuple(bias.shape) != (math.prod(out_shape),):
        raise ValueError(
            f"bias must have shape ({math.prod(out_shape)},), the product of out_shape={tuple(out_shape)}; "
            f"got {tuple(bias.shape)}"
        )
    chosen, payload = linear_plan_constant(fmt, out_shape, in_shape, ranks, int(batch), strategy)
    if chosen == "reconstruct":
        weight = reconstruct_matrix(fmt, factors, out_shape, in_shape, ranks)  # (M, N)
        return F.linear(x, weight, bias)  # (B, N) @ (N, M) -> (B, M)
    xt = x.reshape(batch, *in_shape)  # (B, n_1, ..., n_d)
    if chosen == "two_stage":
        return two_stage_linear(xt, factors, payload, bias).reshape(batch, math.prod(out_shape))  # (B, M)
    if payload.recompute and torch.is_grad_enabled():
        y = torch.utils.checkpoint.checkpoint(_einsum_all, payload.steps, xt, *factors, use_reentrant=False)
    else:
        y = _einsum_all(payload.steps, xt, *factors)  # (B, m_1, ..., m_d)
    y = y.reshape(batch, math.prod(out_shape))
    return y if bias is None else y + bias
