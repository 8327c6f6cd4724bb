r"""TensorizedEmbedding: an embedding table (or bag) stored in a low-rank tensor format, never materialised.

The table ``E`` of shape ``(V, D)`` is the matrix of a factorized tensor with
``out_shape = row_shape`` and ``in_shape = col_shape`` (the convention of
:class:`~bayestensor.layers.TensorizedLinear`), zero-padded to ``prod(row_shape) ≥ V`` rows and
``prod(col_shape) ≥ D`` columns; padded rows are never addressed. A lookup of row ``v``

1. writes ``v`` in mixed radix over ``row_shape``: ``v = Σ_k v_k Π_{j>k} n_j``;
2. gathers, from every factor that carries row mode ``k``, the slice ``v_k`` (TT core
   ``G_k[:, v_k, :]``, CP / Tucker row ``U_k[v_k, :]``, TTM core ``G_k[:, v_k, :, :]``);
3. contracts the gathered slices with the column factors, batched over the looked-up rows
   (for TT a chain of batched ``(1 × r)(r × r)…`` GEMMs, as in TT-Rec / FBTT-Embedding):

.. math::

    E[v, c] = \sum_{\text{bonds}} \prod_{k} G_k[\ldots, v_k, \ldots] \prod_{j} H_j[\ldots, c_j, \ldots].

Repeated ids in a batch are computed once (``torch.unique``); bags are pooled by
:func:`torch.nn.functional.embedding_bag` over the de-duplicated rows. Cost is
``O(#unique ids · Σ_k |G_k slice| · r)`` time and memory, independent of ``V``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import RankSpec, check_mode_shape, get_format, tensorized_shape
from ..functional import gather_rows
from ..tensors import FactorizedTensor, TensorizedModule
from ..tensors.module import tensor_export_kwargs
from ._from_dense import factory_kwargs, padded, start_from_dense

MODES = (None, "sum", "mean")


def _resolve_shape(n: int, given: Sequence[int] | None, default_modes: int | None, name: str, what: str):
    if given is None:
        return (n,) if default_modes is None else tensorized_shape(n, default_modes)
    return check_mode_shape(given, n, name, what)


class TensorizedEmbedding(TensorizedModule):
    """An embedding table or embedding bag whose ``(V, D)`` table is stored in a tensor format.

    Behaves like :class:`torch.nn.Embedding` when ``mode`` is ``None`` and like
    :class:`torch.nn.EmbeddingBag` when ``mode`` is ``"sum"`` or ``"mean"``, but only the rows a
    batch addresses are ever computed.

    Parameters
    ----------
    num_embeddings, embedding_dim
        ``V`` and ``D``.
    format
        ``"cp"``, ``"tucker"``, ``"tt"`` (default) or ``"ttm"``.
    max_rank
        Int or per-bond sequence.
    row_shape
        Row modes, product ``≥ V`` (e.g. ``(200, 220, 250)`` for 10,131,227 rows); balanced
        (padded if needed) when ``None``.
    col_shape
        Column modes, product ``≥ D``. Default: ``(D,)`` (one column mode, as in TT-Rec) for CP,
        Tucker and TT; balanced modes of the same count as ``row_shape`` for TTM.
    mode
        ``None`` (embedding), ``"sum"`` or ``"mean"`` (bag).
    padding_idx
        Row that reads as zeros and passes no gradient (for bags: left out of the reduction, as
        in ``nn.EmbeddingBag``).
    include_last_offset
        As in :class:`torch.nn.EmbeddingBag`.
    method, prior, prior_kwargs, rank_update, em_step
        Bayesian rank determination, as for :class:`~bayestensor.layers.TensorizedLinear`.
    init_std
        Target std of the table entries; default 1 (as ``nn.Embedding``'s ``N(0, 1)``).
    init
        How the factors start: ``"random"`` (default) or ``"frames"`` (isometric frames in tree formats;
        :class:`~bayestensor.tensors.FactorizedTensor`). ``from_dense`` takes ``init="decompose"`` too.
    dedup
        Compute each distinct id once per batch (skipped under ``torch.compile``, whose graphs
        need static shapes).
    validate
        Check ids and offsets in eager mode (one host sync); never done under ``torch.compile``.

    Under ``torch.autocast`` the rows keep the stored dtype, as ``nn.Embedding``'s do (a lookup
    is not a matrix product that autocast lowers).

    Examples
    --------
    >>> emb = TensorizedEmbedding(1000, 16, max_rank=4)
    >>> emb(torch.tensor([[1, 2], [999, 0]])).shape
    torch.Size([2, 2, 16])
    """

    dense_types = (nn.Embedding, nn.EmbeddingBag)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        format: str = "tt",
        max_rank: RankSpec = 16,
        row_shape: Sequence[int] | None = None,
        col_shape: Sequence[int] | None = None,
        mode: str | None = None,
        padding_idx: int | None = None,
        include_last_offset: bool = False,
        method: str | None = None,
        prior: str = "half_cauchy",
        prior_kwargs: dict[str, float] | None = None,
        rank_update: str = "em",
        em_step: float = 1.0,
        init_std: float | None = None,
        init: str = "random",
        dedup: bool = True,
        validate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, n in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        fmt = get_format(format)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.mode, self.padding_idx, self.include_last_offset = mode, padding_idx, bool(include_last_offset)
        self.dedup, self.validate = bool(dedup), bool(validate)
        self.row_shape = _resolve_shape(num_embeddings, row_shape, fmt.default_modes, "row_shape", "num_embeddings")
        col_modes = len(self.row_shape) if fmt.paired_modes else None
        self.col_shape = _resolve_shape(embedding_dim, col_shape, col_modes, "col_shape", "embedding_dim")
        fmt.check_shapes(self.row_shape, self.col_shape)
        self.weight = FactorizedTensor(
            fmt.name,
            self.row_shape,
            self.col_shape,
            max_rank,
            method=method,
            prior=prior,
            prior_kwargs=prior_kwargs,
            rank_update=rank_update,
            em_step=em_step,
            init_std=1.0 if init_std is None else init_std,
            init=init,
            device=device,
            dtype=dtype,
        )

    def full_weight(self) -> Tensor:
        """The dense ``(V, D)`` table (posterior mean). Materialises the table: for tests and export only."""
        w = self.weight.to_matrix()
        return w[: self.num_embeddings, : self.embedding_dim]

    # ------------------------------------------------------------------ rows
    def rows(self, ids: Tensor, factors: Sequence[Tensor] | None = None) -> Tensor:
        """Rows ``E[ids]`` of the table for a 1-D tensor of (valid) ids, shape ``(len(ids), D)``."""
        factors = self.weight.tensors() if factors is None else factors
        digits = []
        rem = ids
        for size in reversed(self.row_shape):  # mixed radix, last mode fastest
            digits.append(rem % size)
            rem = torch.div(rem, size, rounding_mode="floor")
        digits.reverse()
        with torch.autocast(ids.device.type, enabled=False):  # rows in the stored dtype, as nn.Embedding's
            out = gather_rows(self.format, factors, digits, self.row_shape, self.col_shape, tuple(self.weight.ranks))
        return out[:, : self.embedding_dim] if out.shape[1] != self.embedding_dim else out

    # ------------------------------------------------------------------ validation
    def _check(self, indices: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None) -> None:
        if indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"indices must be int64 or int32, got {indices.dtype}")
        if self.mode is None:
            if offsets is not None or per_sample_weights is not None:
                raise ValueError("offsets and per_sample_weights need mode='sum' or 'mean'; this layer has mode=None")
        else:
            if indices.dim() == 2:
                if offsets is not None:
                    raise ValueError("offsets must be None when indices is 2-D (fixed-length bags)")
            elif indices.dim() == 1:
                if offsets is None:
                    raise ValueError("1-D indices need offsets (the start of every bag)")
                if offsets.dim() != 1 or offsets.dtype not in (torch.int64, torch.int32):
                    raise ValueError(f"offsets must be a 1-D int tensor, got {offsets.dim()}-D {offsets.dtype}")
            else:
                raise ValueError(f"indices must be 1-D (with offsets) or 2-D for a bag, got {indices.dim()}-D")
            if per_sample_weights is not None:
                if self.mode == "mean":
                    raise ValueError("per_sample_weights is only supported with mode='sum', got mode='mean'")
                if per_sample_weights.shape != indices.shape:
                    raise ValueError(
                        f"per_sample_weights must have the shape of indices {tuple(indices.shape)}, "
                        f"got {tuple(per_sample_weights.shape)}"
                    )
        if torch.compiler.is_compiling() or not self.validate:
            return
        if indices.numel():
            bad = (indices < 0) | (indices >= self.num_embeddings)
            if bool(bad.any()):
                pos = bad.flatten().nonzero()[0, 0].item()
                value = indices.flatten()[pos].item()
                where = tuple(int(i) for i in torch.unravel_index(torch.tensor(pos), indices.shape))
                raise IndexError(
                    f"index {value} at position {where} is out of range for num_embeddings={self.num_embeddings}"
                )
        if offsets is not None and offsets.numel():
            n = indices.numel()
            if int(offsets[0]) != 0:
                raise ValueError(f"offsets[0] must be 0, got {int(offsets[0])}")
            steps = offsets[1:] - offsets[:-1]
            if bool((steps < 0).any()):
                k = int((steps < 0).nonzero()[0, 0]) + 1
                raise ValueError(
                    f"offsets must be non-decreasing; offsets[{k}]={int(offsets[k])} < "
                    f"offsets[{k - 1}]={int(offsets[k - 1])}"
                )
            if int(offsets[-1]) > n:
                raise ValueError(f"offsets[-1]={int(offsets[-1])} exceeds the number of indices {n}")
            if self.include_last_offset and int(offsets[-1]) != n:
                raise ValueError(
                    f"with include_last_offset=True, offsets[-1] must equal the number of indices {n}, "
                    f"got {int(offsets[-1])}"
                )

    # ------------------------------------------------------------------ forward
    def forward(
        self, indices: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        """Look up (``mode=None``: shape ``(*indices.shape, D)``) or pool bags (shape ``(bags, D)``)."""
        self._check(indices, offsets, per_sample_weights)
        flat = indices.reshape(-1).long()
        dedup = self.dedup and not torch.compiler.is_compiling()
        if dedup:
            uniq, inverse = torch.unique(flat, return_inverse=True)  # each distinct id computed once
        else:
            uniq, inverse = flat, torch.arange(flat.shape[0], device=flat.device)
        table = self.rows(uniq)  # (U, D)
        pad = self.padding_idx
        if self.mode is None:
            if pad is not None:
                table = table * (uniq != pad).unsqueeze(-1).to(table.dtype)  # zero row, zero gradient
            out = F.embedding(inverse, table) if dedup else table  # (N, D)
            return out.reshape(*indices.shape, self.embedding_dim)
        if pad is not None:
            # an extra zero row at position U stands for padding_idx; embedding_bag leaves it out
            table = torch.cat([table, table.new_zeros(1, self.embedding_dim)])
            inverse = torch.where(flat == pad, table.shape[0] - 1, inverse)
            pad = table.shape[0] - 1
        if indices.dim() == 2:
            inverse = inverse.reshape(indices.shape)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(indices.shape)
        return F.embedding_bag(
            inverse,
            table,
            offsets,
            mode=self.mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=self.include_last_offset,
            padding_idx=pad,
        )

    def dense_params(self) -> int:  # noqa: D102
        return self.num_embeddings * self.embedding_dim

    @staticmethod
    def unsupported_reason(module: nn.Module) -> str | None:  # noqa: D102
        if module.max_norm is not None:
            return "max_norm is set (the table changes during lookups)"
        if isinstance(module, nn.EmbeddingBag) and module.mode == "max":
            return "EmbeddingBag(mode='max'); expected mode 'sum' or 'mean'"
        if module.scale_grad_by_freq:
            return "scale_grad_by_freq is set (it scales a row's gradient by its count; all rows share the factors)"
        return None

    @classmethod
    def from_dense(
        cls,
        embedding: nn.Embedding | nn.EmbeddingBag,
        *,
        format: str = "tt",
        max_rank: RankSpec = 16,
        n_iter: int = 200,
        init: str = "decompose",
        **kwargs,
    ) -> TensorizedEmbedding:
        """A layer started from the table of an embedding or embedding bag; ``init`` as for linear layers.

        ``mode``, ``padding_idx`` and ``include_last_offset`` are taken from the source. ``max_norm``,
        ``mode="max"`` and ``scale_grad_by_freq`` are not supported. The padding row reads as zeros
        (a warning says so when an ``nn.Embedding``'s is not).
        """
        cls.check_convertible(embedding)
        is_bag = isinstance(embedding, nn.EmbeddingBag)
        kwargs.setdefault("mode", embedding.mode if is_bag else None)
        kwargs.setdefault("padding_idx", embedding.padding_idx)
        if is_bag:
            kwargs.setdefault("include_last_offset", embedding.include_last_offset)
        layer = cls(
            embedding.num_embeddings,
            embedding.embedding_dim,
            format=format,
            max_rank=max_rank,
            **factory_kwargs(embedding, kwargs, init),
        )
        table = embedding.weight
        if layer.padding_idx is not None:
            if not is_bag and bool(table[layer.padding_idx].any()):  # a bag leaves padding out whatever it holds
                warnings.warn(
                    f"Embedding row padding_idx={layer.padding_idx} is not zero (max |entry| "
                    f"{float(table[layer.padding_idx].abs().max()):.3g}); the tensorized layer reads it as zeros",
                    stacklevel=2,
                )
            table = table.detach().clone()
            table[layer.padding_idx] = 0.0  # the padding row reads as zeros in the tensorized layer
        matrix = padded(table, math.prod(layer.row_shape), math.prod(layer.col_shape))
        return start_from_dense(layer, matrix, None, init=init, n_iter=n_iter)

    @property
    def export_kwargs(self) -> dict:  # noqa: D102
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "row_shape": list(self.row_shape),
            "col_shape": list(self.col_shape),
            "mode": self.mode,
            "padding_idx": self.padding_idx,
            "include_last_offset": self.include_last_offset,
            "dedup": self.dedup,
            "validate": self.validate,
            **tensor_export_kwargs(self.weight),
        }

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, row_shape={self.row_shape}, col_shape={self.col_shape}, "
            f"mode={self.mode!r}, padding_idx={self.padding_idx}"
        )
