"""The mini-batch format shared by the Criteo reader and the synthetic click generator."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

#: Integer ("dense") features per Criteo row.
NUM_DENSE = 13
#: Categorical ("sparse") features per Criteo row, one embedding table each.
NUM_SPARSE = 26


class ClickBatch(NamedTuple):
    """One mini-batch of click-through data in the DLRM layout.

    Attributes
    ----------
    dense
        ``float32`` ``(B, 13)``: ``log(1 + max(x, 0))`` of the integer features (missing → 0).
    sparse
        ``int64`` ``(B, 26)``: per-table row ids, ``0 <= sparse[:, t] < cardinalities[t]``.
    label
        ``float32`` ``(B,)``: 1 for a click, 0 otherwise.

    Notes
    -----
    A tuple, so ``dense, sparse, label = batch`` works.
    """

    dense: Tensor
    sparse: Tensor
    label: Tensor
