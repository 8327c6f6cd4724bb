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


def prior_loss(model: nn.Module) -> Tensor:
    r"""Sum over tensorized layers of ``−log p(W, λ)`` (MAP) or ``KL(q ‖ p) − log p(λ)`` (SVI), in nats.

    Add it, divided by the number of training examples, to a batch-mean task loss:

    .. math::

        \mathcal{L} = \frac{1}{B}\sum_{i \in \text{batch}} \ell_i + \frac{β}{N}\,\text{prior\_loss}

    with ``β = 1`` (or a KL warm-up, :func:`kl_weight`); :class:`~bayestensor.inference.ARD` does
    this scaling, the warm-up and the pruning schedule for you.

    The value is a function of the parameters. It uses ``λ`` at its closed-form M-step value for
    the current factors (layers in training mode, ``rank_update="em"``): in a plain loop the first
    evaluation after the factors changed runs that M-step, and evaluating it again at the same
    parameters gives the same number and changes nothing, so the M-step happens once per
    optimizer step however often the loss is evaluated (gradient accumulation, logging, several
    forward passes). :class:`~bayestensor.inference.ARD` runs the M-step right after each
    optimizer step instead, so under it this call writes nothing at all.

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
    compiling = torch.compiler.is_compiling()
    for _, t in found:
        if t.training and not compiling:
            t.refresh_rank_variances_()
        total = total + t.prior_loss()
    return total


@torch.no_grad()
def update_rank_variances(model: nn.Module) -> None:
    """Run the closed-form ``λ`` M-step of every Bayesian tensor of ``model`` now (once per optimizer step)."""
    for _, t in bayesian_tensors(model):
        t.update_rank_variances_()
