"""Reference models of the papers' experiments, built from a :class:`ModelConfig`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..layers import TensorizedLinear
from .config import ModelConfig


def linear(in_features: int, out_features: int, cfg: ModelConfig) -> nn.Module:
    """A dense ``nn.Linear`` (``cfg.dense``) or a :class:`TensorizedLinear` configured by ``cfg``."""
    if cfg.dense:
        return nn.Linear(in_features, out_features)
    return TensorizedLinear(
        in_features,
        out_features,
        format=cfg.format,
        max_rank=cfg.max_rank,
        method=None if cfg.method == "none" else cfg.method,
        prior=cfg.prior,
        prior_kwargs=dict(cfg.prior_kwargs),
    )


def fc_classifier(sizes: Sequence[int], cfg: ModelConfig) -> nn.Sequential:
    """``sizes[0] → sizes[1] → ... → sizes[-1]`` with ReLU (and dropout) between layers, all tensorized."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(linear(a, b, cfg))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
    return nn.Sequential(*layers)
