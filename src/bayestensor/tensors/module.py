"""Base classes of tensorized layers: what a layer type owns (conversion, export) and the factorized-weight layer."""

from __future__ import annotations

from typing import Any

from torch import nn

from .factorized import FactorizedTensor


class DenseCounterpart:
    """What a layer type that replaces a ``torch.nn`` module owns: its conversion and its export.

    * ``dense_types``: the ``torch.nn`` classes it replaces (matched exactly, never subclasses,
      since a subclass or its parent may read ``.weight`` as a dense tensor);
    * ``unsupported_reason(module)``: why a module of those types cannot be converted, or ``None``;
    * ``from_dense(module, ...)``: the tensorized layer, started from the module's weight;
    * ``export_kwargs``: constructor arguments that rebuild the layer at its current ranks.
    """

    dense_types: tuple[type[nn.Module], ...] = ()

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        """Whether this layer type converts ``module``: its type is exactly one of ``dense_types``."""
        return type(module) in cls.dense_types

    @staticmethod
    def unsupported_reason(module: nn.Module) -> str | None:
        """Why ``module`` (of one of ``dense_types``) cannot be converted, or ``None`` when it can."""
        return None

    @classmethod
    def check_convertible(cls, module: nn.Module) -> None:
        """``TypeError`` unless this type accepts ``module``; ``ValueError`` with the reason if it cannot convert it."""
        if not cls.accepts(module):
            names = " or ".join(f"nn.{t.__name__}" for t in cls.dense_types)
            raise TypeError(f"{cls.__name__}.from_dense expects {names}, got {type(module).__name__}")
        reason = cls.unsupported_reason(module)
        if reason is not None:
            raise ValueError(f"cannot convert this {type(module).__name__}: {reason}")

    @classmethod
    def from_dense(cls, module: nn.Module, **kwargs: Any) -> TensorizedModule:
        """The tensorized counterpart of the dense ``module``."""
        raise NotImplementedError

    @property
    def export_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer (untrained) at its current ranks and settings."""
        raise NotImplementedError


class TensorizedModule(DenseCounterpart, nn.Module):
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


def tensor_export_kwargs(t: FactorizedTensor) -> dict[str, Any]:
    """The constructor arguments of a layer that its :class:`FactorizedTensor` determines (current ranks)."""
    args = {
        "format": t.fmt.name,
        "max_rank": list(t.ranks),
        "method": t.method,
        "rank_update": t.rank_update,
        "em_step": t.em_step,
    }
    if t.method is not None:
        # a prior's hyper-parameters are its buffers, named as its constructor arguments
        args |= {"prior": t.prior.name, "prior_kwargs": {k: float(v) for k, v in t.prior.named_buffers()}}
    return args
