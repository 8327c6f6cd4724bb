"""TensorizedLinear: ``y = x Wᵀ + b`` with ``W`` stored in a low-rank tensor format."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import RankSpec, check_mode_shape, get_format, tensorized_shape
from ..functional import cast_all, compute_dtype, factorized_linear
from ..tensors import FactorizedTensor, TensorizedModule
from ..tensors.module import tensor_export_kwargs
from ._from_dense import factory_kwargs, padded, start_from_dense

STRATEGIES = ("auto", "factorized", "reconstruct", "einsum", "two_stage")


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is Hugging Face's ``Conv1D`` (GPT-2): ``y = x W + b`` with ``W`` of shape ``(in, out)``."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def resolve_shapes(
    in_features: int,
    out_features: int,
    in_shape: Sequence[int] | None,
    out_shape: Sequence[int] | None,
    format: str,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate given mode shapes (a product above the size is zero-padded) or choose balanced ones."""
    for name, n in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    fmt = get_format(format)
    shapes = []
    for side, features, given, other in (
        ("in", in_features, in_shape, out_shape),
        ("out", out_features, out_shape, in_shape),
    ):
        if given is not None:
            given = check_mode_shape(given, features, f"{side}_shape", f"{side}_features")
            shapes.append(given)
        else:
            modes = len(other) if (fmt.paired_modes and other is not None) else fmt.default_modes
            shapes.append(tensorized_shape(features, modes))
    in_s, out_s = shapes
    fmt.check_shapes(out_s, in_s)
    return in_s, out_s


class TensorizedLinear(TensorizedModule):
    """A linear layer whose weight lives in CP, Tucker, TT or TT-matrix format.

    The weight ``W`` (``out × in``) is the tensor ``W.reshape(*out_shape, *in_shape)`` (C order)
    for CP, Tucker and TT; TTM pairs ``(out_shape[k], in_shape[k])`` in core ``k``. The forward
    computes ``x Wᵀ + b`` by contracting ``x`` with the factors or by reconstructing ``W``,
    whichever the cost model finds cheaper at this batch size.

    Parameters
    ----------
    in_features, out_features
        Sizes as in :class:`torch.nn.Linear`.
    format
        ``"cp"``, ``"tucker"``, ``"tt"`` or ``"ttm"``.
    max_rank
        Int or per-bond sequence (CP: 1 bond; Tucker: one per mode; TT, TTM: ``d − 1``).
        ``None`` (default): the largest uniform rank whose factors hold at most ``start_fraction``
        (default 0.1) of the dense weight's entries.
    start_fraction
        Parameter budget of ``max_rank=None``, relative to the dense weight.
    in_shape, out_shape
        Mode shapes; chosen automatically (balanced, zero-padded if needed) when ``None``.
    bias
        Whether to learn an additive bias.
    method
        ``None`` (fixed ranks), ``"map"`` or ``"svi"`` for Bayesian rank determination.
    prior, prior_kwargs
        Rank prior name and hyper-parameters (see :mod:`bayestensor.priors`).
    rank_update, em_step
        How ``λ`` is updated; see :class:`~bayestensor.tensors.FactorizedTensor`.
    init_std
        Target std of the reconstructed weight; default ``sqrt(2 / in_features)`` (He).
    init
        How the factors start: ``"random"`` (default) or ``"frames"`` (isometric frames in tree formats;
        :class:`~bayestensor.tensors.FactorizedTensor`). ``from_dense`` takes ``init="decompose"`` too.
    strategy
        ``"auto"`` (cost model), ``"factorized"`` or ``"reconstruct"``.

    Under ``torch.autocast`` the forward computes and returns the autocast dtype, as
    ``nn.Linear`` does; the stored factors stay in their dtype (:mod:`~bayestensor.functional.precision`).

    Examples
    --------
    >>> layer = TensorizedLinear(64, 256, format="ttm", max_rank=8)
    >>> layer(torch.randn(5, 64)).shape
    torch.Size([5, 256])
    """

    dense_types = (nn.Linear,)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        format: str = "ttm",
        max_rank: RankSpec | None = None,
        start_fraction: float | None = None,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
        bias: bool = True,
        method: str | None = None,
        prior: str = "half_cauchy",
        prior_kwargs: dict[str, float] | None = None,
        rank_update: str = "em",
        em_step: float = 1.0,
        init_std: float | None = None,
        init: str = "random",
        strategy: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        self.in_features, self.out_features = in_features, out_features
        self.in_shape, self.out_shape = resolve_shapes(in_features, out_features, in_shape, out_shape, format)
        self.strategy = strategy
        self.weight = FactorizedTensor(
            format,
            self.out_shape,
            self.in_shape,
            max_rank,
            start_fraction=start_fraction,
            method=method,
            prior=prior,
            prior_kwargs=prior_kwargs,
            rank_update=rank_update,
            em_step=em_step,
            init_std=math.sqrt(2.0 / in_features) if init_std is None else init_std,
            init=init,
            device=device,
            dtype=dtype,
        )
        if bias:
            bound = 1.0 / math.sqrt(in_features)
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def full_weight(self) -> Tensor:
        """The dense ``(out_features, in_features)`` weight that :meth:`forward` applies (posterior mean)."""
        w = self.weight.to_matrix()
        return w[: self.out_features, : self.in_features]

    def _check_input(self, x: Tensor) -> torch.dtype:
        """Validate ``x``; returns the dtype to compute in (see :func:`~bayestensor.functional.compute_dtype`)."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        ref = self.weight.factors[0]
        if x.device != ref.device:
            raise ValueError(f"input is on {x.device} but the layer is on {ref.device}")
        return compute_dtype(x, ref.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x Wᵀ + b`` for ``x`` of shape ``(..., in_features)``."""
        dtype = self._check_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(dtype)  # (B, in)
        n_pad = math.prod(self.in_shape) - self.in_features
        if n_pad:
            x2 = F.pad(x2, (0, n_pad))  # (B, N) with zero columns that meet never-used weights
        bias = None if self.bias is None else self.bias.to(dtype)
        m_pad = math.prod(self.out_shape) - self.out_features
        if bias is not None and m_pad:
            bias = F.pad(bias, (0, m_pad))  # (M,): zeros on the output rows that are cut off below
        y = factorized_linear(
            x2,
            self.format,
            cast_all(dtype, self.weight.tensors()),
            self.out_shape,
            self.in_shape,
            tuple(self.weight.ranks),
            self.strategy,
            bias,
        )  # (B, M), the bias added within the last product
        if m_pad:
            y = y[:, : self.out_features]
        return y.reshape(*lead, self.out_features)

    def dense_params(self) -> int:  # noqa: D102
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        *,
        format: str = "ttm",
        max_rank: RankSpec | None = 16,
        n_iter: int = 200,
        init: str = "decompose",
        **kwargs,
    ) -> TensorizedLinear:
        """A layer started from ``linear`` (``y = x Wᵀ + b``; also Hugging Face's ``Conv1D``, ``y = x W + b``).

        ``init="decompose"`` (default, "train, then compress") decomposes ``linear.weight``, so at
        full rank the layer reproduces ``linear`` to floating-point tolerance; ``init="random"``
        draws random factors whose reconstruction has ``linear.weight``'s std (for training from
        scratch). ``max_rank=None`` sizes the ranks from a parameter budget. ``kwargs`` go to the
        constructor (``in_shape``, ``out_shape``, ``method``, ``prior``, …).
        """
        cls.check_convertible(linear)
        weight = linear.weight.T if is_hf_conv1d(linear) else linear.weight  # (out, in)
        layer = cls(
            weight.shape[1],
            weight.shape[0],
            format=format,
            max_rank=max_rank,
            bias=linear.bias is not None,
            **factory_kwargs(linear, kwargs, init),
        )
        matrix = padded(weight, math.prod(layer.out_shape), math.prod(layer.in_shape))  # (M, N)
        return start_from_dense(layer, matrix, linear.bias, init=init, n_iter=n_iter)

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:  # noqa: D102
        return type(module) in cls.dense_types or is_hf_conv1d(module)

    @property
    def export_kwargs(self) -> dict:  # noqa: D102
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "bias": self.bias is not None,
            "strategy": self.strategy,
            **tensor_export_kwargs(self.weight),
        }

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, strategy={self.strategy!r}"
        )
