"""Compress trained dense layers into tensorized ones ("train, then compress"), optionally as an ARD warm start.

Each function builds the tensorized layer with the requested format and ranks, decomposes the
dense weight (:func:`~bayestensor.conversion.decompose.decompose`) into its factors, copies the
bias, and re-initialises the Bayesian state from the decomposed factors: the rank variances
``λ`` take their closed-form MAP value for the new factors and SVI posterior scales start at
a small fraction of each factor's scale. The relative reconstruction error
``‖W − Ŵ‖_F / ‖W‖_F`` is stored on the layer as ``reconstruction_error``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.conv import TensorizedConv2d
from ..layers.embedding import TensorizedEmbedding
from ..layers.linear import TensorizedLinear
from ..tensors import FactorizedTensor
from ..tensors.factorized import SVI_INIT_SCALE, _inverse_softplus
from .decompose import decompose, relative_error


@torch.no_grad()
def load_factors_(weight: FactorizedTensor, matrix: Tensor, *, n_iter: int = 200) -> float:
    """Decompose ``matrix`` (shape ``(prod(out_shape), prod(in_shape))``, zero-padded) into ``weight``.

    Returns the relative reconstruction error. ``λ`` and SVI scales are re-initialised from the
    new factors (see the module docstring).
    """
    out_shape, in_shape, ranks = weight.out_shape, weight.in_shape, list(weight.ranks)
    work = matrix.detach().to(torch.float64)  # decompose in double, store in the layer's dtype
    tensor = work.reshape(*out_shape, *in_shape)
    factors = decompose(weight.fmt.name, tensor, out_shape, in_shape, ranks, n_iter=n_iter)
    error = relative_error(weight.fmt.name, factors, tensor, out_shape, in_shape, ranks)
    for p, f in zip(weight.factors, factors, strict=True):
        p.copy_(f.to(p))
    if weight.method == "svi":
        for raw, f in zip(weight.raw_scales, weight.factors, strict=True):
            scale = float(f.float().std()) if f.numel() > 1 else float(f.float().abs().mean())
            raw.fill_(_inverse_softplus(max(SVI_INIT_SCALE * scale, 1e-8)))
    if weight.method is not None:
        energies, counts = weight.rank_statistics()
        for b, (e, c) in enumerate(zip(energies, counts, strict=True)):
            lam_ref = weight.rank_variances()[b]
            lam = weight.prior.map_update(e.to(lam_ref.dtype), c.to(lam_ref.dtype))
            lam = lam.clamp_min(torch.finfo(lam.dtype).tiny ** 0.5)
            if weight.rank_update == "em":
                getattr(weight, f"rank_variance_{b}").copy_(lam)
            else:
                getattr(weight, f"log_rank_variance_{b}").copy_(lam.log())
        weight._lambda_versions = weight._versions()
    return error


def _padded(matrix: Tensor, rows: int, cols: int) -> Tensor:
    return F.pad(matrix, (0, cols - matrix.shape[1], 0, rows - matrix.shape[0]))


#: How a tensorized layer built from a dense one starts: ``"decompose"`` its weight, or draw ``"random"`` factors.
INITS = ("decompose", "random")


def dense_init_std(weight: Tensor) -> float:
    """The entry std of a dense weight, the target std of ``init="random"`` factors.

    For a freshly built ``nn.Linear`` / ``nn.Conv2d`` this is the std of PyTorch's default
    initialisation, ``1/√(3·fan_in)``, and for ``nn.Embedding`` it is 1; for a user's own
    initialisation it is whatever that initialisation drew.
    """
    w = weight.detach().to(torch.float64)
    return float(w.std()) if w.numel() > 1 else float(w.abs().mean())


def _factory(module: nn.Module, kwargs: dict, init: str) -> dict:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    ref = next(module.parameters())
    kwargs.setdefault("device", ref.device)
    kwargs.setdefault("dtype", ref.dtype)
    if init == "random":
        kwargs.setdefault("init_std", dense_init_std(module.weight))
    return kwargs


def _load(layer: nn.Module, matrix: torch.Tensor, bias: torch.Tensor | None, n_iter: int, init: str) -> nn.Module:
    """Initialise ``layer`` from the dense ``matrix`` and copy ``bias``.

    ``init="decompose"`` decomposes ``matrix`` into the factors and records the relative error;
    ``init="random"`` keeps the layer's random factors, which were drawn so that the
    reconstructed weight has the dense weight's standard deviation (see :func:`dense_init_std`),
    and records the relative error of that random weight against ``matrix`` (about
    ``√2`` for independent draws).
    """
    if init == "decompose":
        layer.reconstruction_error = load_factors_(layer.weight, matrix, n_iter=n_iter)
    else:
        with torch.no_grad():
            w = layer.weight.to_matrix().to(torch.float64)
            ref = matrix.detach().to(torch.float64)
            layer.reconstruction_error = float((w - ref).norm() / ref.norm().clamp_min(1e-300))
    if bias is not None:
        with torch.no_grad():
            layer.bias.copy_(bias)
    return layer


def linear_from_dense(
    linear: nn.Linear,
    *,
    format: str = "ttm",
    max_rank: int | list[int] | None = 16,
    n_iter: int = 200,
    init: str = "decompose",
    **kwargs,
) -> TensorizedLinear:
    """A :class:`TensorizedLinear` initialised from ``linear``.

    ``init="decompose"`` (default) decomposes ``linear.weight``; ``init="random"`` draws random
    factors whose reconstruction has ``linear.weight``'s std (for training from scratch).
    ``max_rank=None`` sizes the ranks from a parameter budget (see :class:`TensorizedLinear`).
    ``kwargs`` go to :class:`TensorizedLinear` (``in_shape``, ``out_shape``, ``method``,
    ``prior``, …). At full rank the layer reproduces ``linear`` to floating-point tolerance.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
    layer = TensorizedLinear(
        linear.in_features,
        linear.out_features,
        format=format,
        max_rank=max_rank,
        bias=linear.bias is not None,
        **_factory(linear, kwargs, init),
    )
    matrix = _padded(linear.weight, math.prod(layer.out_shape), math.prod(layer.in_shape))
    return _load(layer, matrix, linear.bias, n_iter, init)


def conv2d_from_dense(
    conv: nn.Conv2d,
    *,
    format: str = "tt",
    max_rank: int | list[int] | None = 16,
    n_iter: int = 200,
    init: str = "decompose",
    **kwargs,
) -> TensorizedConv2d:
    """A :class:`TensorizedConv2d` initialised from ``conv`` (zero padding mode only); ``init`` as for linear."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) and conv.padding != "valid":
        raise ValueError(
            f"only padding_mode='zeros' with explicit or 'valid' padding can be converted, got "
            f"padding_mode={conv.padding_mode!r}, padding={conv.padding!r}"
        )
    layer = TensorizedConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        format=format,
        max_rank=max_rank,
        **_factory(conv, kwargs, init),
    )
    kh, kw = layer.kernel_size
    matrix = conv.weight.permute(0, 2, 3, 1)  # (out, kh, kw, in / groups)
    matrix = F.pad(matrix, (0, math.prod(layer.in_shape) - matrix.shape[-1]))
    matrix = matrix.reshape(conv.out_channels, kh * kw * math.prod(layer.in_shape))
    matrix = _padded(matrix, math.prod(layer.out_shape), matrix.shape[1])
    return _load(layer, matrix, conv.bias, n_iter, init)


def embedding_from_dense(
    embedding: nn.Embedding | nn.EmbeddingBag,
    *,
    format: str = "tt",
    max_rank: int | list[int] = 16,
    n_iter: int = 200,
    init: str = "decompose",
    **kwargs,
) -> TensorizedEmbedding:
    """A :class:`TensorizedEmbedding` initialised from the table of an embedding or embedding bag.

    ``init`` as for :func:`linear_from_dense`.
    ``mode``, ``padding_idx`` and ``include_last_offset`` are taken from the source. ``max_norm``
    and ``mode="max"`` are not supported.
    """
    if not isinstance(embedding, nn.Embedding | nn.EmbeddingBag):
        raise TypeError(f"expected an nn.Embedding or nn.EmbeddingBag, got {type(embedding).__name__}")
    if embedding.max_norm is not None:
        raise ValueError("embeddings with max_norm cannot be converted (their table changes during lookups)")
    is_bag = isinstance(embedding, nn.EmbeddingBag)
    mode = embedding.mode if is_bag else None
    if mode == "max":
        raise ValueError("EmbeddingBag(mode='max') cannot be converted; expected mode 'sum' or 'mean'")
    kwargs.setdefault("mode", mode)
    kwargs.setdefault("padding_idx", embedding.padding_idx)
    if is_bag:
        kwargs.setdefault("include_last_offset", embedding.include_last_offset)
    layer = TensorizedEmbedding(
        embedding.num_embeddings,
        embedding.embedding_dim,
        format=format,
        max_rank=max_rank,
        **_factory(embedding, kwargs, init),
    )
    table = embedding.weight
    if layer.padding_idx is not None:
        table = table.detach().clone()
        table[layer.padding_idx] = 0.0  # the padding row reads as zeros in the tensorized layer
    matrix = _padded(table, math.prod(layer.row_shape), math.prod(layer.col_shape))
    return _load(layer, matrix, None, n_iter, init)


def from_dense(module: nn.Module, **kwargs) -> nn.Module:
    """Dispatch to :func:`linear_from_dense`, :func:`conv2d_from_dense` or :func:`embedding_from_dense`."""
    if isinstance(module, nn.Linear):
        return linear_from_dense(module, **kwargs)
    if isinstance(module, nn.Conv2d):
        return conv2d_from_dense(module, **kwargs)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return embedding_from_dense(module, **kwargs)
    raise TypeError(f"no tensorized counterpart for {type(module).__name__}")
