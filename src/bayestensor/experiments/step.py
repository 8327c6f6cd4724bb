"""One optimisation step of the training objective, shared by the task loops."""

from __future__ import annotations

import torch
from torch import Tensor


def optimizer_step(loss: Tensor, reg: Tensor, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """Minimise an objective ``loss`` (:meth:`~bayestensor.inference.ARD.objective`) by one optimizer step.

    The λ M-step runs in ARD's optimizer hook, after the step. Returns ``loss`` and the prior
    term ``reg`` (0 without Bayesian layers) as floats, for logging.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(reg.detach())
