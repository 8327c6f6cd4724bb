"""Binary-classification metrics for click prediction: ROC AUC by a rank statistic, log loss, accuracy."""

from __future__ import annotations

import torch
from torch import Tensor


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    r"""Area under the ROC curve via the Mann–Whitney statistic (ties get average ranks).

    .. math::

        \text{AUC} = \frac{\sum_{i: y_i = 1} \text{rank}(s_i) - n_+(n_+ + 1)/2}{n_+ n_-}

    equals the probability that a random positive scores above a random negative (ties count
    half). ``nan`` when one class is absent.
    """
    s = scores.detach().reshape(-1).double().cpu()
    y = labels.detach().reshape(-1).cpu() > 0.5
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same number of entries, got {s.numel()} and {y.numel()}")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1.0) / 2.0  # 1-based average rank of each distinct value
    rank_sum = avg_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_log_loss(logits: Tensor, labels: Tensor) -> float:
    """Mean binary cross-entropy of click logits (nats)."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def binary_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows where ``logit > 0`` matches the label."""
    return float(((logits > 0) == (labels > 0.5)).double().mean())
