"""Binary-classification metrics for click prediction: ROC AUC by a rank statistic, log loss, accuracy."""

from __future__ import annotations

import torch
from torch import Tensor

from ..inference import roc_auc

__all__ = ["binary_accuracy", "binary_log_loss", "roc_auc"]


def binary_log_loss(logits: Tensor, labels: Tensor) -> float:
    """Mean binary cross-entropy of click logits (nats)."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def binary_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows where ``logit > 0`` matches the label."""
    return float(((logits > 0) == (labels > 0.5)).double().mean())
