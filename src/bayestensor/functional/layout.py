"""The gradient of an input handed back in the input's own memory format, as ``nn.Conv2d`` hands it back.

A factorized convolution contracts the input's channel modes with an einsum. Its output comes out
channels innermost, so a ReLU or max pool after it hands the gradient back laid out so, and the
einsum's backward then returns the input's gradient as a permuted view with the strides of
``channels_last``. The layer before it (a max pool, a ReLU, a dense convolution) works on a gradient
whose layout differs from its own input's, and a max pool's backward copies its whole, 4× larger,
input to match. In a LeNet-style net (TT conv 32→64 after a 2×2 max pool) a MAP step takes
0.61× the dense step with the layout restored here and 0.67× without (91 against 108 ms, side by side:
``python benchmarks/train_step.py --model cnn --rounds 9``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-d tensor laid out so (and not also contiguous), else ``contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _GradInFormat(torch.autograd.Function):
    """Identity in the forward; the backward returns the gradient in ``memory_format``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, memory_format: torch.memory_format) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, torch.memory_format], output: Tensor) -> None:  # noqa: D102
        ctx.memory_format = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad.contiguous(memory_format=ctx.memory_format), None


def grad_in_own_format(x: Tensor) -> Tensor:
    """``x``, with its gradient handed back in ``x``'s memory format (:func:`memory_format_of`); no copy forward."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _GradInFormat.apply(x, memory_format_of(x))
