r"""Planted-rank recovery: train one tensorized layer with ARD on data from a teacher of known ranks.

The data are ``y = x Wᵀ + σ ε`` with ``x, ε ~ N(0, I)`` and a teacher ``W`` of exactly the planted
ranks (:func:`~bayestensor.data.planted_teacher`), so the Bayesian objective is known exactly: the
negative log likelihood of a batch is ``Σ_i ‖y_i − W x_i‖² / (2σ²B)`` per example, and
:class:`~bayestensor.ARD` adds ``β · prior / N`` with ``β = 1``. A case *passes* when the relative
test error ``‖Ŷ − Y‖ / ‖Y‖ < 0.1`` and no bond ends more than 1 above its planted rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data import PlantedCase, planted_regression, planted_teacher
from ..inference import ARD, ranks
from ..layers import TensorizedLinear
from .optim import LR_SCHEDULES

#: Relative test error under which a case counts as fitted.
FIT_TOLERANCE = 0.1


def fit_planted(
    case: PlantedCase,
    method: str,
    *,
    num_train: int = 2048,
    noise: float = 0.01,
    epochs: int = 60,
    batch_size: int = 256,
    lr: float = 1e-2,
    lr_schedule: str = "cosine",
    tolerance: float | None = None,
    optimizer_state: str = "reset",
) -> dict[str, Any]:
    """Train ``case`` with ``method`` (``"map"`` / ``"svi"``); returns found ranks, the test error and ``passed``.

    Adam with ``lr``, decayed to 0 over the run by a cosine (:class:`torch.optim.lr_scheduler.CosineAnnealingLR`,
    ``lr_schedule="cosine"``) or held (``"constant"``). With a constant step the components ARD switches
    off do not reach zero: the prior's pull ``w / (N λ_r)`` on them is stiff, and Adam's normalised step
    keeps them jittering at about ``lr`` around it, which holds their ``λ_r`` near ``lr²`` (above the
    pruning threshold when the kept components are not much larger than ``lr``) and adds that jitter to ``W``.

    With ``tolerance``, ARD runs with that loss tolerance and every pruning pass removes components for
    as long as the negative log likelihood of 512 held-out validation samples (not the test samples)
    stays within it (``ARD.end_epoch(evaluate=...)``). ``optimizer_state`` is ARD's (``"reset"`` or
    ``"transport"``: what its pruning passes do with the regauged factors' Adam moments).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    torch.manual_seed(case.seed)
    teacher = planted_teacher(case.format, case.out_shape, case.in_shape, case.planted, seed=case.seed,
                              dtype=torch.float32)  # fmt: skip
    x, y = planted_regression(teacher, num_train, noise=noise, seed=case.seed)
    x_test, y_test = planted_regression(teacher, 512, noise=noise, seed=case.seed + 10_000)
    x_val, y_val = planted_regression(teacher, 512, noise=noise, seed=case.seed + 20_000)
    n_out, n_in = math.prod(case.out_shape), math.prod(case.in_shape)
    layer = TensorizedLinear(n_in, n_out, format=case.format, max_rank=list(case.max_rank), in_shape=case.in_shape,
                             out_shape=case.out_shape, bias=False, method=method)  # fmt: skip
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if lr_schedule == "cosine" else None
    ard = ARD(layer, opt, num_data=num_train, epochs=epochs, tolerance=tolerance, optimizer_state=optimizer_state)

    def validation_nll() -> float:
        layer.eval()
        nll = float((layer(x_val) - y_val).square().sum() / (2 * noise**2 * len(x_val)))
        layer.train()
        return nll

    for _ in range(epochs):
        for idx in torch.randperm(num_train).split(batch_size):
            nll = (layer(x[idx]) - y[idx]).square().sum() / (2 * noise**2 * len(idx))
            loss = ard.loss(nll)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if decay is not None:
            decay.step()
        ard.end_epoch(validation_nll if tolerance is not None else None)
    ard.close()
    layer.eval()
    with torch.no_grad():
        rel = float((layer(x_test) - y_test).norm() / y_test.norm())
    found = ranks(layer)[""]
    over = all(f <= p + 1 for f, p in zip(found, case.planted, strict=True))
    return {
        "seed": case.seed,
        "format": case.format,
        "method": method,
        "out_shape": case.out_shape,
        "in_shape": case.in_shape,
        "planted": list(case.planted),
        "max_rank": list(case.max_rank),
        "lr_schedule": lr_schedule,
        "optimizer_state": optimizer_state,
        "found": found,
        "rel_error": rel,
        "collapsed": bool(ard.collapsed),
        "passed": rel < FIT_TOLERANCE and over,
    }
