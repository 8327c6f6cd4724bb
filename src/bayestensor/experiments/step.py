"""One optimisation step of the training objective, shared by the task loops."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..inference import prior_loss


def objective_step(
    task_loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, beta: float, bayes: bool, num_train: int
) -> tuple[float, float]:
    """Minimise ``task_loss + β · prior_loss(model) / N`` by one optimizer step.

    :func:`bayestensor.prior_loss` also runs the closed-form λ M-step first. Returns the total
    loss and the prior term (0 without Bayesian layers) as floats, for logging.
    """
    loss, reg_value = task_loss, 0.0
    if bayes:
        reg = prior_loss(model)
        loss = loss + beta * reg / num_train
        reg_value = float(reg.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), reg_value
