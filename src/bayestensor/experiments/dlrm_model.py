"""DLRM (Naumov et al. 2019) with its largest embedding tables in a tensor format (as TT-Rec).

``forward(dense, sparse)``: the bottom MLP maps the 13 dense features to a vector ``z`` of size
``D``; each of the 26 categorical features is looked up in its table (an embedding bag of one id),
giving 27 vectors ``[z, e_1, …, e_26]``; their pairwise dot products below the diagonal
(``27·26/2 = 351``) are concatenated with ``z`` and fed to the top MLP, whose single output is the
click logit.

The ``tensorized`` largest tables are :class:`~bayestensor.TensorizedEmbedding` bags (TT or
TTM, row shape of ``table_modes`` balanced modes, e.g. 216×217×217 for 10,131,227 rows), never
materialised; the others are plain :class:`torch.nn.EmbeddingBag` with sparse gradients (trained by
:class:`~.optim.LazyAdam`, so a step touches only the rows a batch uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..formats import tensorized_shape
from ..layers import TensorizedEmbedding


def _mlp(sizes: Sequence[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if last_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def largest_tables(cardinalities: Sequence[int], k: int) -> list[int]:
    """Indices of the ``k`` largest tables (ties broken by index)."""
    return sorted(sorted(range(len(cardinalities)), key=lambda t: (-cardinalities[t], t))[:k])


class DLRM(nn.Module):
    """DLRM with dot interactions and tensorized large tables.

    Parameters
    ----------
    cardinalities
        Rows of each embedding table.
    num_dense
        Dense input features (13 for Criteo).
    embedding_dim
        ``D``; the bottom MLP's last size.
    bottom, top
        Hidden sizes of the bottom MLP (ending in ``D``) and the top MLP (ending in 1).
    tensorized
        How many of the largest tables are tensorized (0 with ``tensor=None``).
    table_modes
        Row modes of a tensorized table.
    tensor
        Keyword arguments of the tensorized tables (format, max_rank, method, prior, prior_kwargs);
        ``None`` makes every table a plain ``nn.EmbeddingBag`` (the dense twin).
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_dense: int = 13,
        embedding_dim: int = 128,
        bottom: Sequence[int] = (512, 256, 128),
        top: Sequence[int] = (512, 256, 1),
        tensorized: int = 5,
        table_modes: int = 3,
        tensor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cards = [int(c) for c in cardinalities]
        if not bottom or bottom[-1] != embedding_dim:
            raise ValueError(f"the bottom MLP must end in embedding_dim={embedding_dim}, got sizes {list(bottom)}")
        if not top or top[-1] != 1:
            raise ValueError(f"the top MLP must end in 1 (the click logit), got sizes {list(top)}")
        if not 0 <= tensorized <= len(cards):
            raise ValueError(f"tensorized must be in [0, {len(cards)}], got {tensorized}")
        self.export_kwargs = {
            "cardinalities": cards, "num_dense": num_dense, "embedding_dim": embedding_dim, "bottom": list(bottom),
            "top": list(top), "tensorized": tensorized, "table_modes": table_modes, "tensor": tensor,
        }  # fmt: skip
        self.tensorized_ids = largest_tables(cards, tensorized) if tensor is not None else []
        std = 1.0 / math.sqrt(embedding_dim)  # unit-scale dot products at initialisation
        tables: list[nn.Module] = []
        for t, rows in enumerate(cards):
            if t in self.tensorized_ids:
                tables.append(
                    TensorizedEmbedding(
                        rows,
                        embedding_dim,
                        row_shape=tensorized_shape(rows, table_modes),
                        mode="sum",
                        init_std=std,
                        validate=False,
                        **tensor,
                    )  # fmt: skip
                )
            else:
                bag = nn.EmbeddingBag(rows, embedding_dim, mode="sum", sparse=True)
                nn.init.normal_(bag.weight, std=std)
                tables.append(bag)
        self.tables = nn.ModuleList(tables)
        self.bottom = _mlp([num_dense, *bottom], last_relu=True)
        f = len(cards) + 1
        self.top = _mlp([embedding_dim + f * (f - 1) // 2, *top], last_relu=False)
        rows, cols = torch.tril_indices(f, f, offset=-1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        """Click logits ``(B,)`` for dense features ``(B, 13)`` and table ids ``(B, 26)``."""
        z = self.bottom(dense)  # (B, D)
        vectors = [z] + [table(sparse[:, t : t + 1]) for t, table in enumerate(self.tables)]
        v = torch.stack(vectors, dim=1)  # (B, 27, D)
        gram = torch.bmm(v, v.transpose(1, 2))  # (B, 27, 27)
        pairs = gram[:, self.pair_rows, self.pair_cols]  # (B, 351)
        return self.top(torch.cat([z, pairs], dim=1)).squeeze(1)
