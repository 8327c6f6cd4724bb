"""Posterior-predictive sampling: SVI weight draws or the particles of an ensemble."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..tensors import FactorizedTensor
from .checks import positive_int
from .ensemble import Ensemble


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
    model: nn.Module,
    x: Tensor,
    num_samples: int | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Posterior-predictive mean and standard deviation of ``transform(model(x))`` over weight samples.

    For a classifier pass ``transform=lambda z: z.softmax(-1)`` to average probabilities
    (the Bayesian model average). ``model`` may be:

    * a model with SVI layers: ``num_samples`` draws of ``q`` (default 32);
    * an :class:`~.ensemble.Ensemble` (SVGD particles, SGHMC samples): its particles, all of them by
      default or the first ``num_samples``, run in one vectorised call;
    * any other model: deterministic, the spread is 0.

    Parameters
    ----------
    num_samples
        Number of posterior samples, ``>= 1`` (at most the ensemble's size for an ensemble).
    """
    if num_samples is not None:
        try:
            num_samples = positive_int("num_samples", num_samples)
        except ValueError:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}") from None
    transform = transform or (lambda z: z)
    if isinstance(model, Ensemble):
        size = model.num_particles
        if num_samples is not None and num_samples > size:
            raise ValueError(
                f"num_samples={num_samples} exceeds the ensemble's {size} particles; an ensemble's samples are its "
                f"particles, so ask for at most {size} (or None for all)"
            )
        draws = transform(model(x))  # (P, ...)
        draws = draws if num_samples is None else draws[:num_samples]
        return draws.mean(0), draws.std(0, unbiased=False)
    stochastic = any(isinstance(m, FactorizedTensor) and m.posterior.stochastic for m in model.modules())
    if not stochastic:
        out = transform(model(x))
        return out, torch.zeros_like(out)
    with sampling(model):
        draws = torch.stack([transform(model(x)) for _ in range(32 if num_samples is None else num_samples)])
    return draws.mean(0), draws.std(0, unbiased=False)
