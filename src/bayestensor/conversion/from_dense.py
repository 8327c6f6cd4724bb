"""Dense module → its tensorized counterpart, dispatched over the layer registry (``LAYER_TYPES``).

Each layer type owns its conversion (``TensorizedLinear.from_dense`` and so on, see
:class:`~bayestensor.tensors.module.DenseCounterpart`); this module only finds the type that
accepts a module. Types match exactly, never by subclass: a subclass of ``nn.Linear`` (for
instance ``nn.MultiheadAttention``'s ``out_proj``) may be read as a dense weight by its parent.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ..layers import LAYER_TYPES
from ..tensors.module import DenseCounterpart


def layer_type_for(module: nn.Module) -> type[DenseCounterpart] | None:
    """The registered layer type that converts ``module``, or ``None``."""
    return next((t for t in LAYER_TYPES if t.accepts(module)), None)


def from_dense(module: nn.Module, **kwargs: Any) -> nn.Module:
    """The tensorized counterpart of ``module``, started from its weights (``kwargs`` go to its ``from_dense``)."""
    layer_type = layer_type_for(module)
    if layer_type is None:
        names = ", ".join(", ".join(d.__name__ for d in t.dense_types) for t in LAYER_TYPES)
        raise TypeError(f"no tensorized counterpart for {type(module).__name__}; expected exactly one of {names}")
    new = layer_type.from_dense(module, **kwargs)
    _keep_frozen(module, new)
    return new


def _keep_frozen(dense: nn.Module, new: nn.Module) -> None:
    """Carry ``requires_grad=False`` over: a frozen module's new layer is frozen, and so is each part of it.

    A part is the weight (every parameter of ``new.weight``: factors, posterior and prior ones) or the
    bias; a module frozen in some other pattern warns, since its parts have no counterpart to follow.
    """
    frozen = {n for n, p in dense.named_parameters() if not p.requires_grad}
    if not frozen:
        return
    if len(frozen) == len(list(dense.parameters())):
        new.requires_grad_(False)
        return
    parts = {"weight": getattr(new, "weight", None), "bias": getattr(new, "bias", None)}
    if not frozen <= parts.keys() or any(parts[n] is None for n in frozen):
        warnings.warn(
            f"{type(dense).__name__}: its parameters {sorted(frozen)} are frozen and the rest are not; the "
            f"tensorized {type(new).__name__} trains all of its parameters (freeze them after conversion)",
            stacklevel=3,
        )
        return
    for n in frozen:
        parts[n].requires_grad_(False)
