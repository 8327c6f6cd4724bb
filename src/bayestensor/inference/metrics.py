"""Calibration and ranking metrics: NLL, ECE, ROC AUC, predictive entropy and its out-of-distribution AUROC."""

from __future__ import annotations

import torch
from torch import Tensor


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """Mean ``−log p(y_i | x_i)`` of predicted class probabilities ``probs`` (N, C)."""
    picked = probs.gather(1, labels.long().view(-1, 1)).squeeze(1)
    return float(-picked.clamp_min(torch.finfo(probs.dtype).tiny).log().mean())


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    """ECE: ``Σ_bins (n_b / N) · |accuracy_b − confidence_b|`` over equal-width confidence bins."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    confidence, predicted = probs.max(1)
    correct = (predicted == labels.view(-1)).to(probs.dtype)
    bins = torch.clamp((confidence * num_bins).long(), max=num_bins - 1)
    ece = torch.zeros((), dtype=probs.dtype)
    for b in range(num_bins):
        sel = bins == b
        if sel.any():
            ece += sel.to(probs.dtype).mean() * (correct[sel].mean() - confidence[sel].mean()).abs()
    return float(ece)


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


def predictive_entropy(probs: Tensor) -> Tensor:
    """``H[p] = −Σ_c p_c log p_c`` per row of class probabilities ``probs`` (N, C), in nats."""
    p = probs.double()
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(1)


def ood_auroc(probs_in: Tensor, probs_out: Tensor) -> float:
    """AUROC of predictive entropy separating out-of-distribution inputs (positives) from in-distribution ones.

    ``0.5`` is chance; ``1`` means every OOD input is less certain than every in-distribution one.
    """
    for name, p in (("probs_in", probs_in), ("probs_out", probs_out)):
        if p.dim() != 2 or len(p) == 0:
            raise ValueError(f"{name} must be class probabilities of shape (N >= 1, C), got {tuple(p.shape)}")
        total = p.detach().double().sum(1)
        if bool((p < 0).any()) or not torch.allclose(total, torch.ones_like(total), atol=1e-2):  # half precision
            raise ValueError(f"{name} must be class probabilities (rows of entries >= 0 summing to 1; softmax logits)")
    if probs_in.shape[1] != probs_out.shape[1]:
        raise ValueError(
            f"probs_in and probs_out must have the same classes, got {probs_in.shape[1]} and {probs_out.shape[1]}"
        )
    scores = torch.cat([predictive_entropy(probs_in), predictive_entropy(probs_out)])
    labels = torch.cat([torch.zeros(len(probs_in)), torch.ones(len(probs_out))])
    return roc_auc(scores, labels)
