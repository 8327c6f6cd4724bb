"""Parameter counts of models that mix tensorized and ordinary layers."""

from __future__ import annotations

from torch import nn

from .factorized import FactorizedTensor
from .module import TensorizedModule


def count_params(model: nn.Module) -> int:
    """Parameters actually stored and needed to run the model.

    Counts every parameter once, except the SVI variational scales and gradient-trained
    ``log λ`` (training-only state, not needed for inference).
    """
    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, FactorizedTensor):
            skip.update(id(p) for name, p in m.named_parameters() if not name.startswith("factors."))
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in skip)


def dense_params(model: nn.Module) -> int:
    """Parameters of the equivalent uncompressed model: tensorized layers counted as dense."""
    total = 0
    stack = [model]
    while stack:
        m = stack.pop()
        if isinstance(m, TensorizedModule):
            total += m.dense_params()
            continue
        total += sum(p.numel() for p in m.parameters(recurse=False))
        stack.extend(m.children())
    return total
