r"""TensorizedMultiheadAttention: ``nn.MultiheadAttention`` with its four projections in a tensor format.

For queries ``Q``, keys ``K`` and values ``V`` (batch-major inside, ``(N, L, E)`` and ``(N, S, ·)``)
and ``H`` heads of size ``D = E / H``:

.. math::

    q = Q W_q^T + b_q, \quad k = K W_k^T + b_k, \quad v = V W_v^T + b_v, \qquad
    A_h = \operatorname{softmax}\!\big(q_h k_h^T / \sqrt{D} + M\big), \qquad
    y = \big[A_1 v_1, \dots, A_H v_H\big] W_o^T + b_o,

with ``M`` the additive mask: ``attn_mask`` (``(L, S)`` or ``(N·H, L, S)``, boolean ``True`` =
masked, or float) plus ``key_padding_mask`` (``(N, S)``). Each ``W`` is a
:class:`~bayestensor.layers.TensorizedLinear` with its own ranks, so ARD decides the rank of
``W_q``, ``W_k``, ``W_v`` and ``W_o`` separately; the projections are contracted without forming
``W``. The semantics are those of :class:`torch.nn.MultiheadAttention`: ``batch_first``,
unbatched inputs, ``need_weights`` / ``average_attn_weights``, ``is_causal`` (a hint that needs
``attn_mask``, as there), dropout on the attention weights, and ``kdim`` / ``vdim``. Without
``need_weights`` the product runs in :func:`torch.nn.functional.scaled_dot_product_attention`
(the fused kernels); ``nn.MultiheadAttention``'s native inference fast path needs dense packed
weights and does not apply, so ``_qkv_same_embed_dim`` is ``False`` (Q, K and V are separate
projections) and ``nn.TransformerEncoderLayer`` takes its regular path.
``add_bias_kv`` and ``add_zero_attn`` are not supported.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import RankSpec
from ..tensors.module import DenseCounterpart
from .linear import TensorizedLinear

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _additive(mask: Tensor | None, dtype: torch.dtype, name: str) -> Tensor | None:
    """A boolean (``True`` = masked) or float mask as a float mask to add to the scores."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise ValueError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")
    return mask.to(dtype)


def _as_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``weight`` (``(out, in)``) and ``bias``, for ``from_dense``."""
    factory = {"device": weight.device, "dtype": weight.dtype}
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **factory)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


class TensorizedMultiheadAttention(DenseCounterpart, nn.Module):
    """Multi-head attention whose Q, K, V and output projections are :class:`TensorizedLinear` layers.

    Parameters
    ----------
    embed_dim, num_heads, dropout, bias, kdim, vdim, batch_first
        As in :class:`torch.nn.MultiheadAttention`.
    format
        Tensor format of the four projections (default ``"ttm"``).
    max_rank
        Rank of every projection (int, per-bond list or ``None`` for the parameter budget of
        :class:`TensorizedLinear`), or a dict from projection name (``"q_proj"``, ``"k_proj"``,
        ``"v_proj"``, ``"out_proj"``) to its rank.
    **layer_kwargs
        Passed to every projection (``method``, ``prior``, ``strategy``, ``device``, ``dtype``, …).

    Examples
    --------
    >>> mha = TensorizedMultiheadAttention(64, 4, batch_first=True, max_rank=8)
    >>> x = torch.randn(2, 10, 64)
    >>> mha(x, x, x)[0].shape
    torch.Size([2, 10, 64])
    """

    dense_types = (nn.MultiheadAttention,)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        format: str = "ttm",
        max_rank: RankSpec | None | dict[str, RankSpec | None] = None,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, n in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(max_rank, dict):
            unknown = sorted(set(max_rank) - set(PROJECTIONS))
            if unknown:
                raise ValueError(f"max_rank keys must be among {PROJECTIONS}, got {unknown}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self._qkv_same_embed_dim = False  # separate projections: no packed in_proj_weight, no native fast path
        ins = {"q_proj": embed_dim, "k_proj": self.kdim, "v_proj": self.vdim, "out_proj": embed_dim}
        for name in PROJECTIONS:
            rank = max_rank.get(name) if isinstance(max_rank, dict) else max_rank
            layer = TensorizedLinear(ins[name], embed_dim, format=format, max_rank=rank, bias=bias, **layer_kwargs)
            setattr(self, name, layer)

    @property
    def in_proj_bias(self) -> Tensor | None:
        """The packed ``(3E,)`` bias of Q, K and V, as ``nn.MultiheadAttention`` exposes it (``None`` without bias)."""
        if self.q_proj.bias is None:
            return None
        return torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])

    def _batch_major(self, t: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return t.unsqueeze(0)  # (1, L, E)
        return t if self.batch_first else t.transpose(0, 1)  # (N, L, E)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention output and (with ``need_weights``) weights, shaped as ``nn.MultiheadAttention``'s."""
        if query.dim() not in (2, 3) or query.shape[-1] != self.embed_dim:
            raise ValueError(
                f"expected query of shape (L, {self.embed_dim}) or 3-D with last dimension {self.embed_dim}, "
                f"got {tuple(query.shape)}"
            )
        unbatched = query.dim() == 2
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"query, key and value must all be {query.dim()}-D, got {query.dim()}-D, {key.dim()}-D, {value.dim()}-D"
            )
        q = self.q_proj(self._batch_major(query, unbatched))  # (N, L, E)
        k = self.k_proj(self._batch_major(key, unbatched))  # (N, S, E)
        v = self.v_proj(self._batch_major(value, unbatched))  # (N, S, E)
        n, tgt, src = q.shape[0], q.shape[1], k.shape[1]
        q = q.view(n, tgt, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, L, D)
        k = k.view(n, src, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, S, D)
        v = v.view(n, src, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, S, D)
        if unbatched and key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "need attn_mask when is_causal=True (a hint, as in nn.MultiheadAttention); build one with "
                "nn.Transformer.generate_square_subsequent_mask"
            )
        mask = None
        if not (is_causal and key_padding_mask is None and not need_weights):
            is_causal = False  # the mask itself is applied
            mask = _additive(attn_mask, q.dtype, "attn_mask")
            if mask is not None:
                if mask.dim() == 2 and tuple(mask.shape) == (tgt, src):
                    mask = mask.view(1, 1, tgt, src)  # (1, 1, L, S)
                elif mask.dim() == 3 and tuple(mask.shape) == (n * self.num_heads, tgt, src):
                    mask = mask.view(n, self.num_heads, tgt, src)  # (N, H, L, S)
                elif mask.dim() == 3 and tuple(mask.shape) == (1, tgt, src):
                    mask = mask.unsqueeze(0)  # (1, 1, L, S)
                else:
                    raise ValueError(
                        f"attn_mask must have shape ({tgt}, {src}) or ({n * self.num_heads}, {tgt}, {src}), "
                        f"got {tuple(attn_mask.shape)}"
                    )
            pad = _additive(key_padding_mask, q.dtype, "key_padding_mask")
            if pad is not None:
                if tuple(pad.shape) != (n, src):
                    got = tuple(key_padding_mask.shape)
                    raise ValueError(f"key_padding_mask must have shape ({n}, {src}), got {got}")
                pad = pad.view(n, 1, 1, src)
                mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)  # (N, H, L, S)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if p > 0.0:
                weights = F.dropout(weights, p=p)
            out = weights @ v  # (N, H, L, D)
            if average_attn_weights:
                weights = weights.mean(dim=1)  # (N, L, S)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt, self.embed_dim))  # (N, L, E)
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    # ------------------------------------------------------------------ conversion
    @staticmethod
    def unsupported_reason(module: nn.Module) -> str | None:  # noqa: D102
        if module.bias_k is not None:
            return "add_bias_kv=True is not supported"
        if module.add_zero_attn:
            return "add_zero_attn=True is not supported"
        return None

    @classmethod
    def from_dense(
        cls,
        mha: nn.MultiheadAttention,
        *,
        format: str = "ttm",
        max_rank: RankSpec | None | dict[str, RankSpec | None] = 16,
        n_iter: int = 200,
        init: str = "decompose",
        **kwargs: Any,
    ) -> TensorizedMultiheadAttention:
        """An attention layer whose projections start from ``mha``'s (packed or separate) Q, K, V and output weights.

        ``init`` as for :meth:`TensorizedLinear.from_dense`, per projection (``"random"`` draws each
        at the std of its own dense weight).
        """
        cls.check_convertible(mha)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)  # packed (3E, E)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        dense = [_as_linear(w, b) for w, b in zip(weights, biases, strict=True)]
        dense.append(_as_linear(mha.out_proj.weight, mha.out_proj.bias))
        ref = mha.out_proj.weight
        kwargs.setdefault("device", ref.device)
        kwargs.setdefault("dtype", ref.dtype)
        layer = cls(
            mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.kdim, mha.vdim,
            mha.batch_first, format=format, max_rank=1, **kwargs,
        )  # fmt: skip
        for name, lin in zip(PROJECTIONS, dense, strict=True):
            rank = max_rank.get(name) if isinstance(max_rank, dict) else max_rank
            proj = TensorizedLinear.from_dense(lin, format=format, max_rank=rank, n_iter=n_iter, init=init, **kwargs)
            setattr(layer, name, proj.train(mha.training))
        return layer

    @property
    def export_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer at its current ranks (one entry per projection)."""
        shared = {
            k: v
            for k, v in self.q_proj.export_kwargs.items()
            if k not in ("in_features", "out_features", "in_shape", "out_shape", "bias", "max_rank")
        }
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "bias": self.q_proj.bias is not None,
            "kdim": self.kdim,
            "vdim": self.vdim,
            "batch_first": self.batch_first,
            **shared,
            "max_rank": {name: list(getattr(self, name).weight.ranks) for name in PROJECTIONS},
        }

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"kdim={self.kdim}, vdim={self.vdim}, batch_first={self.batch_first}"
        )
