"""Thin tensorized layers over factorized weights; each owns its conversion from the dense layer and its export."""

from .attention import TensorizedMultiheadAttention
from .conv import TensorizedConv2d
from .conv1d import TensorizedConv1d
from .embedding import TensorizedEmbedding
from .linear import TensorizedLinear

#: Every layer type that replaces ``torch.nn`` modules (see :class:`~bayestensor.tensors.module.DenseCounterpart`).
#: A new layer type adds its own file and one entry here.
LAYER_TYPES = (TensorizedLinear, TensorizedConv2d, TensorizedConv1d, TensorizedEmbedding, TensorizedMultiheadAttention)

__all__ = [
    "LAYER_TYPES",
    "TensorizedConv1d",
    "TensorizedConv2d",
    "TensorizedEmbedding",
    "TensorizedLinear",
    "TensorizedMultiheadAttention",
]
