"""Base class of every layer whose weight is a :class:`FactorizedTensor`."""

from __future__ import annotations

from torch import nn

from .factorized import FactorizedTensor


class TensorizedModule(nn.Module):
    """A layer with a factorized weight stored as ``self.weight`` (a :class:`FactorizedTensor`).

    Model-level utilities (``prior_loss``, ``ranks``, ``prune``, ``count_params``,
    ``dense_params``) find these layers by walking ``model.modules()``.
    """

    weight: FactorizedTensor

    @property
    def format(self) -> str:
        """Name of the tensor format."""
        return self.weight.fmt.name

    def dense_params(self) -> int:
        """Parameters of the equivalent uncompressed layer (weight and bias)."""
        raise NotImplementedError

    def get_num_params(self) -> int:
        """Parameters stored by this layer: factor means and bias (not variational scales)."""
        bias = getattr(self, "bias", None)
        return self.weight.n_params() + (bias.numel() if bias is not None else 0)
