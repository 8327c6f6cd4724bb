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
    return error


def _padded(matrix: Tensor, rows: int, cols: int) -> Tensor:
    return F.pad(matrix, (0, cols - matrix.shape[1], 0, rows - matrix.shape[0]))


def _factory(module: nn.Module, kwargs: dict) -> dict:
    ref = next(module.parameters())
    kwargs.setdefault("device", ref.device)
    kwargs.setdefault("dtype", ref.dtype)
    return kwargs


def _load(layer: nn.Module, matrix: torch.Tensor, bias: torch.Tensor | None, n_iter: int) -> nn.Module:
    """Decompose ``matrix`` into ``layer``'s factors (recording the relative error) and copy ``bias``."""
    layer.reconstruction_error = load_factors_(layer.weight, matrix, n_iter=n_iter)
    if bias is not None:
        with torch.no_grad():
            layer.bias.copy_(bias)
    return layer


def linear_from_dense(
    linear: nn.Linear, *, format: str = "ttm", max_rank: int | list[int] = 16, n_iter: int = 200, **kwargs
) -> TensorizedLinear:
    """A :class:`TensorizedLinear` initialised by decomposing ``linear.weight``.

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
        **_factory(linear, kwargs),
    )
    matrix = _padded(linear.weight, math.prod(layer.out_shape), math.prod(layer.in_shape))
    return _load(layer, matrix, linear.bias, n_iter)


def conv2d_from_dense(
    conv: nn.Conv2d, *, format: str = "tt", max_rank: int | list[int] = 16, n_iter: int = 200, **kwargs
) -> TensorizedConv2d:
    """A :class:`TensorizedConv2d` initialised by decomposing ``conv.weight`` (zero padding mode only)."""
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
        **_factory(conv, kwargs),
    )
    kh, kw = layer.kernel_size
    matrix = conv.weight.permute(0, 2, 3, 1)  # (out, kh, kw, in / groups)
    matrix = F.pad(matrix, (0, math.prod(layer.in_shape) - matrix.shape[-1]))
    matrix = matrix.reshape(conv.out_channels, kh * kw * math.prod(layer.in_shape))
    matrix = _padded(matrix, math.prod(layer.out_shape), matrix.shape[1])
    return _load(layer, matrix, conv.bias, n_iter)


def embedding_from_dense(
    embedding: nn.Embedding | nn.EmbeddingBag,
    *,
    format: str = "tt",
    max_rank: int | list[int] = 16,
    n_iter: int = 200,
    **kwargs,
) -> TensorizedEmbedding:
    """A :class:`TensorizedEmbedding` initialised by decomposing the table of an embedding or embedding bag.

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
        **_factory(embedding, kwargs),
    )
    table = embedding.weight
    if layer.padding_idx is not None:
        table = table.detach().clone()
        table[layer.padding_idx] = 0.0  # the padding row reads as zeros in the tensorized layer
    matrix = _padded(table, math.prod(layer.row_shape), math.prod(layer.col_shape))
    return _load(layer, matrix, None, n_iter)


def from_dense(module: nn.Module, **kwargs) -> nn.Module:
    """Dispatch to :func:`linear_from_dense`, :func:`conv2d_from_dense` or :func:`embedding_from_dense`."""
    if isinstance(module, nn.Linear):
        return linear_from_dense(module, **kwargs)
    if isinstance(module, nn.Conv2d):
        return conv2d_from_dense(module, **kwargs)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return embedding_from_dense(module, **kwargs)
    raise TypeError(f"no tensorized counterpart for {type(module).__name__}")
