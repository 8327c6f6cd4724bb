"""One optimisation step of the training objective, shared by the task loops."""

from __future__ import annotations

import torch
from torch import Tensor

from ..inference import ARD


def objective_step(task_loss: Tensor, ard: ARD, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """Minimise ``task_loss + β(t) · prior_loss(model) / N`` (:meth:`ARD.objective`) by one optimizer step.

    The λ M-step runs in ``ard``'s optimizer hook, after the step. Returns the total loss and
    the prior term (0 without Bayesian layers) as floats, for logging.
    """
    loss, reg = ard.objective(task_loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(reg.detach())
