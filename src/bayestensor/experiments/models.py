"""Reference models of the papers' experiments, built from a :class:`ModelConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..formats import available_formats
from ..layers import TensorizedConv2d, TensorizedLinear
from ..tensors.init import RANDOM_INITS
from .config import ConfigError, ModelConfig

#: Methods that train MAP layers and then sample the posterior over them (:mod:`.posterior`).
SAMPLERS = ("svgd", "sghmc")
#: ``model.method`` values: fixed ranks, the two rank posteriors, and MAP followed by a sampler.
RUN_METHODS = ("map", "svi", "none", *SAMPLERS)


def layer_method(method: str) -> str | None:
    """The layers' ``method`` for a run's ``model.method``: ``"none"`` is fixed ranks, a sampler's particles are MAP."""
    if method not in RUN_METHODS:
        raise ConfigError(f"model.method: expected one of {', '.join(RUN_METHODS)}, got {method!r}")
    if method == "none":
        return None
    return "map" if method in SAMPLERS else method


def tensor_kwargs(cfg: ModelConfig) -> dict[str, Any] | None:
    """Keyword arguments shared by the tensorized layers (``None`` for the dense twin).

    A plain, JSON-serialisable dict, so models that take it can be rebuilt by :func:`bayestensor.io.load`.
    """
    if cfg.dense:
        return None
    if cfg.max_rank < 0:  # an int: TOML and --set values are type-checked when read (config._check_type)
        raise ConfigError(
            f"model.max_rank: expected a rank >= 1, or 0 for ranks from a parameter budget, got {cfg.max_rank!r}"
        )
    if cfg.init not in RANDOM_INITS:
        raise ConfigError(f"model.init: expected one of {RANDOM_INITS}, got {cfg.init!r}")
    if cfg.format not in available_formats():
        raise ConfigError(f"model.format: expected one of {', '.join(available_formats())}, got {cfg.format!r}")
    return {
        "format": cfg.format,
        "max_rank": cfg.max_rank or None,
        "method": layer_method(cfg.method),
        "prior": cfg.prior,
        "prior_kwargs": dict(cfg.prior_kwargs),
        **({"init": cfg.init} if cfg.init != "random" else {}),  # the kwargs of runs saved before the option
    }


def linear(in_features: int, out_features: int, cfg: ModelConfig | dict[str, Any] | None) -> nn.Module:
    """A dense ``nn.Linear`` (``cfg.dense`` or ``None``) or a :class:`TensorizedLinear` configured by ``cfg``."""
    kwargs = tensor_kwargs(cfg) if isinstance(cfg, ModelConfig) else cfg
    if kwargs is None:
        return nn.Linear(in_features, out_features)
    return TensorizedLinear(in_features, out_features, **kwargs)


def conv3x3(in_channels: int, out_channels: int, tensor: dict[str, Any] | None, stride: int = 1) -> nn.Module:
    """A bias-free 3×3 convolution with padding 1 (followed by batch norm): dense or tensorized."""
    if tensor is None:
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    return TensorizedConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, **tensor)


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


def scaled(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least 4 (``--smoke`` shrinks the CNNs with ``model.width``)."""
    if not width > 0:
        raise ValueError(f"model.width must be > 0, got {width}")
    return max(4, round(channels * width))
