"""Posterior-predictive sampling."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..tensors import FactorizedTensor


@contextmanager
def sampling(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, SVI layers draw weight samples even in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, FactorizedTensor)]
    old = [m.sample_in_eval for m in layers]
    for m in layers:
        m.sample_in_eval = enabled
    try:
        yield model
    finally:
        for m, o in zip(layers, old, strict=True):
            m.sample_in_eval = o


@torch.no_grad()
def predict(
    model: nn.Module, x: Tensor, num_samples: int = 32, transform: Callable[[Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Posterior-predictive mean and standard deviation of ``transform(model(x))`` over weight samples.

    For a classifier pass ``transform=lambda z: z.softmax(-1)`` to average probabilities
    (the Bayesian model average). Models without SVI layers are deterministic: the spread is 0.

    Parameters
    ----------
    num_samples
        Number of posterior samples, ``>= 1``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    transform = transform or (lambda z: z)
    stochastic = any(isinstance(m, FactorizedTensor) and m.method == "svi" for m in model.modules())
    if not stochastic:
        out = transform(model(x))
        return out, torch.zeros_like(out)
    with sampling(model):
        draws = torch.stack([transform(model(x)) for _ in range(num_samples)])
    return draws.mean(0), draws.std(0, unbiased=False)
