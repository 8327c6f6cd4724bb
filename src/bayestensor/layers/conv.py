r"""TensorizedConv2d: a 2-D convolution whose kernel lives in a low-rank tensor format.

The kernel ``K`` of shape ``(out, in, kh, kw)`` is stored as the matrix

.. math::

    W[o, (s, i)] = K[o, i, s_h, s_w], \qquad s = s_h k_w + s_w,

that is ``K.permute(0, 2, 3, 1).reshape(out, kh·kw·in)``, viewed as the tensor
``W.reshape(*out_shape, kh·kw, *in_shape)``. The spatial mode ``s`` is the first input mode
(the kernel modes ``[kh·kw, in modes…, out modes…]`` of Garipov et al. 2016), so a TT kernel
is ``C[o, r] S[r, s, r'] A[r', i]`` with the spatial core between the output and input cores.
TTM pairs the spatial mode with an extra output mode of size 1.

The forward either reconstructs ``K`` and calls :func:`torch.nn.functional.conv2d`, or runs a
*factorized sequence*: the factors are split into three groups ``P | S | Q`` (``S`` holds the
spatial factor), each group is pre-contracted into a super-factor, and

.. math::

    u = x \times_{I} S_P \;(\text{1×1}), \qquad v = u \ast S_S \;(\text{grouped } k_h × k_w),
    \qquad y = v \times S_Q \;(\text{1×1}),

where indices of ``u`` that ``S_S`` does not touch are folded into the batch, and indices
shared by ``u``, ``S_S`` and ``S_Q`` (CP's hyper-edge) become convolution groups. This is the
CP / Tucker-2 decomposed convolution (Lebedev et al. 2015; Kim et al. 2016) generalised to any
index network. The split and the strategy are chosen by a FLOP + memory-traffic cost model
(:mod:`bayestensor.functional.conv_plan`) and cached per ``(format, shapes, ranks, batch bucket,
spatial size)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..formats import RankSpec, check_mode_shape, get_format, tensorized_shape
from ..functional import cast_all, compute_dtype, conv_plan_constant, grad_in_own_format, reconstruct_matrix, run_steps
from ..tensors import FactorizedTensor, TensorizedModule
from ..tensors.module import tensor_export_kwargs
from ._from_dense import factory_kwargs, padded, start_from_dense

STRATEGIES = ("auto", "factorized", "reconstruct")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


IntPair = int | tuple[int, int]


def _pair(v: IntPair | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        out = (v, v)
    elif isinstance(v, Sequence) and len(v) == 2 and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        out = (int(v[0]), int(v[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return out


def _conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + pad - dil * (k - 1) - 1) // stride + 1  # pad: both sides together


def _side_padding(
    padding: IntPair | str, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` for ``padding`` as :class:`torch.nn.Conv2d` takes it.

    ``"same"`` (stride 1 only, as in torch) pads ``d (k − 1)`` per dimension, the odd one on the
    bottom / right side, as :func:`torch.nn.functional.conv2d` does; ``"valid"`` pads nothing.
    """
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' is not supported for strided convolutions, got stride={stride}")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel_size, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)  # type: ignore[return-value]
    if padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    pad = _pair(padding, "padding")
    return ((pad[0], pad[0]), (pad[1], pad[1]))


class TensorizedConv2d(TensorizedModule):
    """A 2-D convolution whose kernel is stored in CP, Tucker, TT or TT-matrix format.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode
        As in :class:`torch.nn.Conv2d`: ``padding`` an int, a pair, ``"valid"`` or ``"same"``
        (stride 1; an odd total pads one more on the bottom / right, as torch does);
        ``padding_mode`` ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``. Zero padding
        that is the same on both sides goes to the convolution; any other is applied to the input
        first (:func:`torch.nn.functional.pad`). With ``groups > 1`` the kernel
        ``(out, in / groups, kh, kw)`` is factorized and the forward always reconstructs it (every
        format).
    format
        ``"cp"``, ``"tucker"``, ``"tt"`` or ``"ttm"``.
    max_rank
        Int or per-bond sequence for the kernel tensor (see the module docstring for its modes).
        ``None`` (default): the largest uniform rank whose factors hold at most ``start_fraction``
        (default 0.1) of the dense weight's entries.
    start_fraction
        Parameter budget of ``max_rank=None``, relative to the dense weight.
    in_shape, out_shape
        Channel mode shapes (products ``in_channels / groups`` and ``out_channels``); chosen
        automatically (balanced, zero-padded if needed) when ``None``.
    method, prior, prior_kwargs, rank_update, em_step
        Bayesian rank determination, as for :class:`~bayestensor.layers.TensorizedLinear`.
    init_std
        Target std of the kernel entries; default ``sqrt(2 / (in / groups · kh · kw))`` (He).
    init
        How the factors start: ``"random"`` (default) or ``"frames"`` (isometric frames in tree formats;
        :class:`~bayestensor.tensors.FactorizedTensor`). ``from_dense`` takes ``init="decompose"`` too.
    strategy
        ``"auto"`` (cost model), ``"factorized"`` or ``"reconstruct"``.

    Under ``torch.autocast`` the forward computes and returns the autocast dtype, as
    ``nn.Conv2d`` does.

    Examples
    --------
    >>> conv = TensorizedConv2d(16, 32, 3, padding=1, format="tucker", max_rank=8)
    >>> conv(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
    """

    dense_types = (nn.Conv2d,)
    spatial_names = ("height", "width")  # in error messages

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        format: str = "tt",
        max_rank: RankSpec | None = None,
        start_fraction: float | None = None,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
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
        for name, n in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible by "
                f"groups ({groups})"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        fmt = get_format(format)
        if groups > 1 and strategy == "factorized":
            raise ValueError(
                f"groups={groups} with format {fmt.name!r}: the factorized sequence needs groups=1; "
                "use strategy='auto' or 'reconstruct' (grouped kernels are reconstructed for every format)"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding: tuple[int, int] | str = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.side_padding = _side_padding(padding, self.kernel_size, self.stride, self.dilation)
        smallest_pad = min(min(pair) for pair in self.side_padding)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or smallest_pad < 0:
            raise ValueError(
                f"expected kernel_size, stride, dilation >= 1 and padding >= 0, got kernel_size={self.kernel_size}, "
                f"stride={self.stride}, dilation={self.dilation}, padding={self.padding}"
            )
        # zero padding equal on both sides goes to the convolution; any other is F.pad of the input first
        symmetric = all(a == b for a, b in self.side_padding)
        self._conv_padding = tuple(a for a, _ in self.side_padding) if symmetric and padding_mode == "zeros" else (0, 0)
        (top, bottom), (left, right) = self.side_padding
        self._input_padding = (
            None if any(self._conv_padding) or not (top or bottom or left or right) else (left, right, top, bottom)
        )
        self.strategy = strategy
        per_group = in_channels // groups
        khkw = self.kernel_size[0] * self.kernel_size[1]
        self.in_shape = self._channel_shape(per_group, in_shape, "in", fmt)
        modes = len(self.in_shape) if fmt.paired_modes else fmt.default_modes
        self.out_shape = self._channel_shape(out_channels, out_shape, "out", fmt, modes)
        if fmt.paired_modes and len(self.in_shape) != len(self.out_shape):
            raise ValueError(
                f"format {fmt.name!r} pairs channel modes, so in_shape and out_shape need the same length; got "
                f"in_shape={self.in_shape} and out_shape={self.out_shape}"
            )
        # tensor modes of the kernel matrix: (out modes [+ 1 for TTM]) x (kh·kw, in modes)
        self.tensor_out_shape = ((1,) if fmt.paired_modes else ()) + self.out_shape
        self.tensor_in_shape = (khkw, *self.in_shape)
        self.weight = FactorizedTensor(
            fmt.name,
            self.tensor_out_shape,
            self.tensor_in_shape,
            max_rank,
            start_fraction=start_fraction,
            method=method,
            prior=prior,
            prior_kwargs=prior_kwargs,
            rank_update=rank_update,
            em_step=em_step,
            init_std=math.sqrt(2.0 / (per_group * khkw)) if init_std is None else init_std,
            init=init,
            device=device,
            dtype=dtype,
        )
        if bias:
            bound = 1.0 / math.sqrt(per_group * khkw)
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def _channel_shape(
        n: int, given: Sequence[int] | None, side: str, fmt, modes: int | None = None
    ) -> tuple[int, ...]:
        if given is None:
            return tensorized_shape(n, modes or fmt.default_modes)
        what = "in_channels / groups" if side == "in" else "out_channels"
        return check_mode_shape(given, n, f"{side}_shape", what)

    def _kernel(self, factors: Sequence[Tensor]) -> Tensor:
        w = reconstruct_matrix(
            self.format, factors, self.tensor_out_shape, self.tensor_in_shape, tuple(self.weight.ranks)
        )  # (M, kh·kw·N)
        kh, kw = self.kernel_size
        w = w.reshape(math.prod(self.out_shape), kh, kw, math.prod(self.in_shape))  # (M, kh, kw, N)
        w = w[: self.out_channels, :, :, : self.in_channels // self.groups]
        return w.permute(0, 3, 1, 2)  # (out, in / groups, kh, kw)

    def full_weight(self) -> Tensor:
        """The dense ``(out_channels, in_channels / groups, kh, kw)`` kernel (posterior mean)."""
        return self._kernel(list(self.weight.factors))

    def _check_input(self, x: Tensor) -> torch.dtype:
        """Validate ``x``; returns the dtype to compute in (see :func:`~bayestensor.functional.compute_dtype`)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (batch, {self.in_channels}, H, W), got {tuple(x.shape)}")
        ref = self.weight.factors[0]
        if x.device != ref.device:
            raise ValueError(f"input is on {x.device} but the layer is on {ref.device}")
        for d, name in enumerate(self.spatial_names):
            span = self.dilation[d] * (self.kernel_size[d] - 1) + 1
            before, after = self.side_padding[d]
            padded = x.shape[2 + d] + before + after
            if span > padded:
                raise ValueError(
                    f"kernel {name} {self.kernel_size[d]} (dilated span {span}) is larger than the padded input "
                    f"{name} {padded} (input {x.shape[2 + d]} + padding {before} + {after})"
                )
            limit = {"reflect": x.shape[2 + d] - 1, "circular": x.shape[2 + d]}.get(self.padding_mode)
            if limit is not None and max(before, after) > limit:
                raise ValueError(
                    f"padding_mode={self.padding_mode!r} needs padding {max(before, after)} below the input {name} "
                    f"{x.shape[2 + d]}{' (strictly)' if self.padding_mode == 'reflect' else ''}"
                )
        return compute_dtype(x, ref.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` of shape ``(B, in_channels, H, W)``; returns ``(B, out_channels, H', W')``."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        dtype = self._check_input(x)
        x = x.to(dtype)
        if self._input_padding is not None:  # (B, C, H + top + bottom, W + left + right)
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._input_padding, mode=mode)
        pad = self._conv_padding  # what the convolution itself pads, per side
        bias = None if self.bias is None else self.bias.to(dtype)
        batch, _, height, width = x.shape
        h_out = _conv_out(height, self.kernel_size[0], self.stride[0], 2 * pad[0], self.dilation[0])
        w_out = _conv_out(width, self.kernel_size[1], self.stride[1], 2 * pad[1], self.dilation[1])
        factors = cast_all(dtype, self.weight.tensors())
        ranks = tuple(self.weight.ranks)
        strategy = "reconstruct" if self.groups > 1 else self.strategy
        chosen, payload = conv_plan_constant(
            self.format,
            self.tensor_out_shape,
            self.tensor_in_shape,
            ranks,
            int(batch),
            int(height * width),
            int(h_out * w_out),
            strategy,
        )
        if chosen == "reconstruct":
            y = F.conv2d(x, self._kernel(factors), bias, self.stride, pad, self.dilation, self.groups)
            return y.squeeze(0) if unbatched else y
        plan = payload  # a ConvSteps
        n_pass, n_grp, n_cout, n_cin = plan.sizes
        n_pad = math.prod(self.in_shape) - self.in_channels
        if n_pad:
            x = F.pad(x, (0, 0, 0, 0, 0, n_pad))  # zero channels meet never-used kernel entries
        # the einsum's backward would hand x's gradient back channels-innermost; nn.Conv2d returns it in x's format
        x = grad_in_own_format(x)
        xt = x.reshape(batch, *self.in_shape, height * width)  # (B, n_1..n_d, P_in)
        if plan.p:
            sp = run_steps(plan.p_steps, [factors[f] for f in plan.p])  # super-factor of group P
            u = torch.einsum(plan.eq1, xt, sp)  # (B, pass, grp, cin, P_in): 1×1 channel contraction
        else:
            u = torch.einsum(plan.eq1, xt)  # (B, pass, grp, cin, P_in): a permutation
        u = u.reshape(batch * n_pass, n_grp * n_cin, height, width)
        kh, kw = self.kernel_size
        ss = run_steps(plan.s_steps, [factors[f] for f in plan.s])  # (grp, cout, cin, kh·kw)
        ss = ss.reshape(n_grp * n_cout, n_cin, kh, kw)
        v = F.conv2d(u, ss, None, self.stride, pad, self.dilation, n_grp)  # (B·pass, grp·cout, H', W')
        v = v.reshape(batch, *plan.v_modes, h_out * w_out)  # (B, pass, grp, cout, P_out)
        if plan.q:
            sq = run_steps(plan.q_steps, [factors[f] for f in plan.q])  # super-factor of group Q
            y = torch.einsum(plan.eq3, v, sq)  # (B, m_1..m_d, P_out)
        else:
            y = torch.einsum(plan.eq3, v)
        y = y.reshape(batch, math.prod(self.out_shape), h_out, w_out)
        if y.shape[1] != self.out_channels:
            y = y[:, : self.out_channels]
        if bias is not None:
            y = y + bias.reshape(1, -1, 1, 1)
        return y.squeeze(0) if unbatched else y

    def dense_params(self) -> int:  # noqa: D102
        kh, kw = self.kernel_size
        weight = self.out_channels * (self.in_channels // self.groups) * kh * kw
        return weight + (self.out_channels if self.bias is not None else 0)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        *,
        format: str = "tt",
        max_rank: RankSpec | None = 16,
        n_iter: int = 200,
        init: str = "decompose",
        **kwargs,
    ) -> TensorizedConv2d:
        """A layer started from ``conv`` (any padding and padding mode); ``init`` as for linear layers."""
        cls.check_convertible(conv)
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            format=format,
            max_rank=max_rank,
            **factory_kwargs(conv, kwargs, init),
        )
        kh, kw = layer.kernel_size
        kernel = conv.weight.reshape(conv.out_channels, -1, kh, kw)  # (out, in / groups, kh, kw); Conv1d: kh = 1
        matrix = kernel.permute(0, 2, 3, 1)  # (out, kh, kw, in / groups)
        matrix = F.pad(matrix, (0, math.prod(layer.in_shape) - matrix.shape[-1]))
        matrix = matrix.reshape(conv.out_channels, kh * kw * math.prod(layer.in_shape))
        matrix = padded(matrix, math.prod(layer.out_shape), matrix.shape[1])  # (M, kh·kw·N)
        return start_from_dense(layer, matrix, conv.bias, init=init, n_iter=n_iter)

    @property
    def export_kwargs(self) -> dict:  # noqa: D102
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None,
            "padding_mode": self.padding_mode,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "strategy": self.strategy,
            **tensor_export_kwargs(self.weight),
        }

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, padding_mode={self.padding_mode!r}, strategy={self.strategy!r}"
        )
