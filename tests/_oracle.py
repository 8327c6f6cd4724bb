"""Independent reconstruction of factor lists with TensorLy (numpy backend, no global state change)."""

from __future__ import annotations

import numpy as np
import tensorly as tl
import torch


def tensorly_full(fmt: str, factors) -> np.ndarray:
    """The full tensor ``(*out_shape, *in_shape)`` of bayestensor factors, computed by TensorLy."""
    fs = [f.detach().to(torch.float64).numpy() for f in factors]
    if fmt == "tt":
        return tl.tt_to_tensor(fs)
    if fmt == "ttm":
        return tl.tt_matrix_to_tensor(fs)
    if fmt == "tucker":
        return tl.tucker_to_tensor((fs[0], fs[1:]))
    if fmt == "cp":
        return tl.cp_to_tensor((np.ones(fs[0].shape[1]), fs))
    raise ValueError(fmt)
