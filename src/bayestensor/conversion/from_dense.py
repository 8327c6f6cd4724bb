"""Dense module → its tensorized counterpart, dispatched over the layer registry (``LAYER_TYPES``).

Each layer type owns its conversion (``TensorizedLinear.from_dense`` and so on, see
:class:`~bayestensor.tensors.module.DenseCounterpart`); this module only finds the type that
accepts a module. Types match exactly, never by subclass: a subclass of ``nn.Linear`` (for
instance ``nn.MultiheadAttention``'s ``out_proj``) may be read as a dense weight by its parent.
"""

from __future__ import annotations

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
    return layer_type.from_dense(module, **kwargs)
