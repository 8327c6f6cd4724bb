"""Independent reconstruction of factor lists with TensorLy (numpy backend, no global state change).

One row per format: adding a format to bayestensor means adding its oracle here.
"""

from __future__ import annotations

import numpy as np
import tensorly as tl
import torch

ORACLES = {
    "cp": lambda fs: tl.cp_to_tensor((np.ones(fs[0].shape[1]), fs)),
    "tucker": lambda fs: tl.tucker_to_tensor((fs[0], fs[1:])),
    "tt": lambda fs: tl.tt_to_tensor(fs),
    "ttm": lambda fs: tl.tt_matrix_to_tensor(fs),
}


def tensorly_full(fmt: str, factors) -> np.ndarray:
    """The full tensor ``(*out_shape, *in_shape)`` of bayestensor factors, computed by TensorLy."""
    return ORACLES[fmt]([f.detach().to(torch.float64).cpu().numpy() for f in factors])
