"""The prior / KL term of the training objective, found by walking the module tree."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..tensors import FactorizedTensor

_warned_empty: set[int] = set()


def bayesian_tensors(model: nn.Module) -> list[tuple[str, FactorizedTensor]]:
    """Named factorized tensors of ``model`` that carry a prior (``method`` is not ``None``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FactorizedTensor) and m.method is not None]


def prior_loss(model: nn.Module, *, update_rank_variances: bool = True) -> Tensor:
    r"""Sum over tensorized layers of ``−log p(W, λ)`` (MAP) or ``KL(q ‖ p) − log p(λ)`` (SVI), in nats.

    Add it, divided by the number of training examples, to a batch-mean task loss:

    .. math::

        \mathcal{L} = \frac{1}{B}\sum_{i \in \text{batch}} \ell_i + \frac{β}{N}\,\text{prior\_loss}

    with ``β = 1`` (or a KL warm-up, :func:`kl_weight`). For layers in training mode with
    ``rank_update="em"``, this call first runs the closed-form M-step on ``λ`` (no gradient),
    so a plain PyTorch loop needs no extra call. Pass ``update_rank_variances=False`` to only
    evaluate.

    A model without Bayesian tensorized layers gives 0 (with a one-time warning).
    """
    found = bayesian_tensors(model)
    if not found:
        if id(model) not in _warned_empty:
            _warned_empty.add(id(model))
            warnings.warn(
                "prior_loss: the model has no tensorized layers with method='map' or 'svi'; returning 0",
                stacklevel=2,
            )
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    total = 0.0
    for _, t in found:
        if update_rank_variances and t.training:
            t.update_rank_variances_()
        total = total + t.prior_loss()
    return total
