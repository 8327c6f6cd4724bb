"""Calibration metrics for probabilistic classifiers."""

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
