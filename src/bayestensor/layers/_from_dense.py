"""What every layer's ``from_dense`` shares: factory arguments taken from the dense module, and the start.

A layer type owns its conversion (``TensorizedLinear.from_dense(nn.Linear)``, …): it knows how its
dense counterpart's weight maps onto its matrix view. The steps common to all of them live here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import TensorizedModule
from ..tensors.init import RANDOM_INITS, check_init, dense_init_std


def factory_kwargs(module: nn.Module, kwargs: dict, init: str) -> dict:
    """``kwargs`` plus the dense module's device and dtype and, for a random ``init``, its weight std."""
    check_init(init)
    for p in module.parameters():  # (a lazy module is a subclass, which no layer type accepts)
        if p.is_meta:
            raise ValueError(
                f"{type(module).__name__} has parameters on the meta device, with no values to start from; "
                "materialize the model first (model.to_empty(device=...) and its initialisation)"
            )
    ref = next(module.parameters())
    kwargs.setdefault("device", ref.device)
    kwargs.setdefault("dtype", ref.dtype)
    if init in RANDOM_INITS:
        kwargs.setdefault("init_std", dense_init_std(module.weight))
    return kwargs


def padded(matrix: Tensor, rows: int, cols: int) -> Tensor:
    """``matrix`` zero-padded at the bottom and right to ``(rows, cols)``."""
    return F.pad(matrix, (0, cols - matrix.shape[1], 0, rows - matrix.shape[0]))


def start_from_dense(
    layer: TensorizedModule, matrix: Tensor, bias: Tensor | None, *, init: str, n_iter: int
) -> TensorizedModule:
    """Start ``layer.weight`` from the dense ``matrix``, copy ``bias``, record ``reconstruction_error``."""
    layer.reconstruction_error = layer.weight.init_from_matrix_(matrix, init=init, n_iter=n_iter)
    if bias is not None:
        with torch.no_grad():
            layer.bias.copy_(bias)
    return layer
