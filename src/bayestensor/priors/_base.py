r"""The rank-prior contract and registry.

A rank prior is a hyper-prior on the rank-controlling variances ``λ``. Factor slices governed
by ``λ_r`` have the Gaussian prior ``N(0, λ_r)``; for one rank index with ``D`` governed
entries of total (expected) energy ``M = Σ E[w²]``, the part of the log joint that depends on
``λ`` is

.. math::

    \ell(λ) = -\frac{D}{2} \log λ - \frac{M}{2λ} + \log p(λ),

and :meth:`RankPrior.map_update` returns its maximiser (the closed-form M-step).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

_REGISTRY: dict[str, type[RankPrior]] = {}

DEFAULT_SCALE_FLOOR = 0.1
"""``scale_floor`` of every prior unless given (``0`` turns it off; ``scale_free=1`` replaces it)."""


def positive_hyperparameter(name: str, value: float, prior: str) -> float:
    """Check that a hyper-parameter is a finite positive number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"prior {prior!r}: {name} must be a positive number, got {value!r}") from None
    if not v > 0 or v == float("inf"):
        raise ValueError(f"prior {prior!r}: {name} must be a finite positive number, got {value!r}")
    return v


class RankPrior(nn.Module, ABC):
    """A hyper-prior on rank variances ``λ`` with its hyper-parameters stored as buffers.

    Attributes
    ----------
    placed_on
        ``"variance"`` when the density is over ``λ``; ``"scale"`` when it is over the standard
        deviation ``s = √λ`` (then :meth:`log_prob` evaluates that density at ``s = √λ``).
    """

    name: ClassVar[str]
    placed_on: ClassVar[str]

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in _REGISTRY:
            raise ValueError(f"rank prior {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls

    @abstractmethod
    def log_prob(self, variance: Tensor) -> Tensor:
        """Element-wise log density of the hyper-prior at ``λ = variance`` (up to a constant if improper)."""

    def distribution(self, build: Callable[[torch.dtype], Distribution], dtype: torch.dtype) -> Distribution:
        """``build(dtype)``, the prior's ``torch.distributions`` object, built once per hyper-parameter state.

        Building one (its constraints and, for a transformed distribution, its transforms) costs
        more than evaluating it, and the prior term runs every step; so the object is kept until a
        hyper-parameter buffer is replaced or changed in place, or another ``dtype`` is asked for.
        Under ``torch.compile`` or a ``torch.func`` transform (an ensemble's ``vmap``, where the
        buffers are the particles' own) it is built afresh.
        """
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return build(dtype)
        buffers = tuple(self._buffers.values())  # compared by identity: .to() or a load with assign replaces them
        state = (dtype, tuple(b._version for b in buffers if b is not None))
        entry = self.__dict__.get("_distribution")
        if (
            entry is None
            or entry[1] != state
            or len(entry[0]) != len(buffers)
            or any(a is not b for a, b in zip(entry[0], buffers, strict=True))
        ):
            entry = (buffers, state, build(dtype))
            self.__dict__["_distribution"] = entry
        return entry[2]

    def __getstate__(self) -> dict:
        """The module's state without the kept distribution object (pickling, ``copy.deepcopy``)."""
        state = dict(self.__dict__)
        state.pop("_distribution", None)
        return state

    @abstractmethod
    def map_update(self, energy: Tensor, count: Tensor) -> Tensor:
        """Closed-form ``argmax_λ  -(D/2) log λ - M/(2λ) + log p(λ)`` for ``M = energy``, ``D = count``."""

    def extra_repr(self) -> str:  # noqa: D102
        return ", ".join(f"{k}={v.item():g}" for k, v in self.named_buffers())


def get_prior(name: str, **kwargs: float) -> RankPrior:
    r"""Build a registered rank prior by name with its hyper-parameters.

    Every prior also takes ``scale_floor`` (``φ`` in ``[0, 1)``, default
    :data:`DEFAULT_SCALE_FLOOR` ``= 0.1``): the prior is the fixed-scale one until the weight has
    shrunk to ``φ`` of its initial RMS and scale-free below that, so it can prune components but
    cannot shrink the whole layer further; ``0`` turns the floor off. And ``scale_free``
    (``0``, the default, or ``1``): with ``1`` the prior ignores the factors' overall scale at
    every size and acts only on the components' relative sizes (no floor then). See
    :meth:`~bayestensor.FactorizedTensor.prior_loss`. Both are stored as buffers like the other
    hyper-parameters, so checkpoints and exported layers keep them.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown prior {name!r}; expected one of {available_priors()}")
    kwargs = dict(kwargs)
    scale_free = kwargs.pop("scale_free", 0.0)
    if scale_free not in (0, 1):
        raise ValueError(f"prior {name!r}: scale_free must be 0 or 1, got {scale_free!r}")
    scale_floor = kwargs.pop("scale_floor", 0.0 if scale_free else DEFAULT_SCALE_FLOOR)
    if isinstance(scale_floor, bool) or not isinstance(scale_floor, int | float) or not 0 <= scale_floor < 1:
        raise ValueError(f"prior {name!r}: scale_floor must be a number in [0, 1), got {scale_floor!r}")
    if scale_free and scale_floor:
        raise ValueError(
            f"prior {name!r}: scale_free=1 already ignores the overall scale at every size; "
            f"scale_floor={scale_floor!r} cannot be combined with it (pass one of the two)"
        )
    try:
        prior = _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad hyper-parameters {kwargs} for prior {name!r}: {err}") from None
    if scale_free:
        prior.register_buffer("scale_free", as_buffer(1.0))
    else:  # also when 0, so that an exported or saved "no floor" stays one
        prior.register_buffer("scale_floor", as_buffer(float(scale_floor)))
    return prior


def available_priors() -> list[str]:
    """Names of the registered rank priors."""
    return sorted(_REGISTRY)


def as_buffer(value: float) -> Tensor:
    """A float64 scalar buffer (cast to the statistics' dtype on use)."""
    return torch.tensor(value, dtype=torch.float64)
