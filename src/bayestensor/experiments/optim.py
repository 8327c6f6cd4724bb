"""The training loop's optimizer (Adam, or a lazy Adam for sparse-gradient embedding bags) and its lr schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


class LazyAdam(torch.optim.Optimizer):
    """Adam that also takes sparse gradients, updating only the rows they touch ("lazy" Adam).

    Dense gradients get the usual Adam update (Kingma & Ba, no weight decay). For a sparse gradient
    (``nn.EmbeddingBag(sparse=True)``) only the rows present in it update their moments and
    values, as :class:`torch.optim.SparseAdam` does, so a step costs ``O(rows touched)`` instead of
    ``O(table size)``. Unlike ``SparseAdam`` one optimizer serves both kinds of parameters, so
    checkpoints and pruning (:func:`bayestensor.prune` with ``optimizer=``) see a single state.

    Parameters
    ----------
    params
        Parameters or parameter groups.
    lr, betas, eps
        As in :class:`torch.optim.Adam`.
    """

    def __init__(
        self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if not lr > 0 or not eps > 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"expected lr > 0, eps > 0 and betas in [0, 1), got lr={lr}, eps={eps}, betas={betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad
                if g.is_sparse:
                    g = g.coalesce()
                    rows, vals = g.indices()[0], g.values()
                    m_rows = m.index_select(0, rows).mul_(b1).add_(vals, alpha=1.0 - b1)
                    v_rows = v.index_select(0, rows).mul_(b2).addcmul_(vals, vals, value=1.0 - b2)
                    m.index_copy_(0, rows, m_rows)
                    v.index_copy_(0, rows, v_rows)
                    denom = (v_rows / bc2).sqrt_().add_(eps)
                    p.index_add_(0, rows, m_rows.div_(denom), alpha=-lr / bc1)
                else:
                    m.mul_(b1).add_(g, alpha=1.0 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                    denom = (v / bc2).sqrt_().add_(eps)
                    p.addcdiv_(m, denom, value=-lr / bc1)
        return loss


def has_sparse_gradients(model: nn.Module) -> bool:
    """Whether any embedding (bag) of ``model`` produces sparse gradients."""
    return any(isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse for m in model.modules())


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """:class:`torch.optim.Adam`, or :class:`LazyAdam` for models with sparse-gradient embeddings."""
    if has_sparse_gradients(model):
        return LazyAdam(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr)


#: ``train.lr_schedule`` values: the learning rate of every epoch (:func:`epoch_learning_rate`).
LR_SCHEDULES = ("constant", "cosine")


def epoch_learning_rate(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    r"""The learning rate of ``epoch`` (0-based) of ``epochs``: ``lr`` held, or decayed by a cosine.

    .. math::

        η_e = η \cdot \tfrac12\big(1 + \cos(π e / E)\big) \quad (\texttt{"cosine"}),

    so the first epoch trains at ``η`` and the last at a few per cent of it. A function of the
    epoch alone: a resumed run needs no scheduler state. The decay matters to ARD: under a held
    Adam step a component the prior switches off keeps jittering at about ``η`` around zero
    (the prior's pull ``w / (N λ_r)`` is stiff and Adam's step is normalised), which holds its
    ``λ_r`` near ``η²`` and so above the pruning threshold when the kept ones are not much larger.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule: expected one of {', '.join(map(repr, LR_SCHEDULES))}, got {schedule!r}")
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
