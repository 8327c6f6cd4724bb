"""TensorizedConv1d: a 1-D convolution as a :class:`~.conv.TensorizedConv2d` of kernel height 1.

An ``nn.Conv1d`` kernel ``(out, in / groups, k)`` is the 2-D kernel ``(out, in / groups, 1, k)``
on inputs ``(B, C, 1, L)``: the same factorization (the spatial mode is ``k``), the same
strategies and the same export, with the 1-D arguments and shapes of :class:`torch.nn.Conv1d`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .conv import TensorizedConv2d


def _one(v: int | tuple[int] | list[int], name: str) -> int:
    """``v`` or the only element of a one-element tuple (as ``nn.Conv1d`` stores it)."""
    if isinstance(v, tuple | list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an int (or a one-element tuple), got {v!r}")
    return v


class TensorizedConv1d(TensorizedConv2d):
    """A 1-D convolution whose kernel is stored in CP, Tucker, TT or TT-matrix format.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode
        As in :class:`torch.nn.Conv1d` (``padding`` an int, ``"valid"`` or ``"same"``).
    **kwargs
        As for :class:`~bayestensor.layers.TensorizedConv2d` (``format``, ``max_rank``,
        ``method``, ``prior``, ``strategy``, …).

    Examples
    --------
    >>> conv = TensorizedConv1d(16, 32, 5, padding="same", format="tt", max_rank=8)
    >>> conv(torch.randn(2, 16, 40)).shape
    torch.Size([2, 32, 40])
    """

    dense_types = (nn.Conv1d,)
    spatial_names = ("height", "length")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] | str = 0,
        dilation: int | tuple[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        **kwargs: Any,
    ) -> None:
        pad = padding if isinstance(padding, str) else (0, _one(padding, "padding"))
        super().__init__(
            in_channels,
            out_channels,
            (1, _one(kernel_size, "kernel_size")),
            (1, _one(stride, "stride")),
            pad,
            (1, _one(dilation, "dilation")),
            groups,
            bias,
            padding_mode,
            **kwargs,
        )

    def full_weight(self) -> Tensor:
        """The dense ``(out_channels, in_channels / groups, k)`` kernel (posterior mean)."""
        return super().full_weight().squeeze(2)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` of shape ``(B, in_channels, L)`` or ``(in_channels, L)``; returns ``(…, out, L')``."""
        if x.dim() not in (2, 3) or x.shape[-2] != self.in_channels:
            raise ValueError(
                f"expected input of shape (batch, {self.in_channels}, L) or ({self.in_channels}, L), "
                f"got {tuple(x.shape)}"
            )
        return super().forward(x.unsqueeze(-2)).squeeze(-2)  # (…, C, 1, L) -> (…, out, 1, L') -> (…, out, L')

    @property
    def export_kwargs(self) -> dict:  # noqa: D102
        args = super().export_kwargs
        for key in ("kernel_size", "stride", "dilation"):
            args[key] = args[key][1]
        if not isinstance(self.padding, str):
            args["padding"] = args["padding"][1]
        return args

    def extra_repr(self) -> str:  # noqa: D102
        padding = self.padding if isinstance(self.padding, str) else self.padding[1]
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[1]}, stride={self.stride[1]}, "
            f"padding={padding}, dilation={self.dilation[1]}, groups={self.groups}, bias={self.bias is not None}, "
            f"padding_mode={self.padding_mode!r}, strategy={self.strategy!r}"
        )


__all__ = ["TensorizedConv1d"]
