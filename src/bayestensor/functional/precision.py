"""Mixed precision: the dtype a tensorized layer computes in, following ``torch.autocast`` as ``nn.Linear`` does.

Under ``torch.autocast(device_type, dtype=d)`` the matrix products of ``nn.Linear`` and
``nn.Conv2d`` run in ``d`` and return ``d``, whatever the dtype of the stored weight. A tensorized
layer does the same by casting its input, factors and bias to ``d`` before contracting; the
stored factors, ``λ`` and the prior term stay in their own (float32) dtype. Outside autocast, the
input must match the stored dtype (float32, bfloat16 or float16 weights alike).
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor, stored: torch.dtype) -> torch.dtype:
    """The dtype to contract ``x`` with weights stored in ``stored``: autocast's when enabled, else ``stored``.

    Raises ``ValueError`` when autocast is off and ``x`` has another floating dtype than ``stored``.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and stored.is_floating_point:
        return torch.get_autocast_dtype(device_type)
    if x.dtype != stored:
        raise ValueError(
            f"input dtype {x.dtype} does not match the layer's dtype {stored} (convert one of them, or run "
            "under torch.autocast)"
        )
    return stored


def cast_all(dtype: torch.dtype, tensors: list[Tensor]) -> list[Tensor]:
    """Every tensor of ``tensors`` in ``dtype`` (no copy where it already is)."""
    return [t.to(dtype) for t in tensors]
