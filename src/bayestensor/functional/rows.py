r"""Rows of a factorized embedding table: per-format lookup kernels in a registry, and a planned fallback.

A table ``E`` of shape ``(V, D)`` is the matrix of a factorized tensor with ``out_shape =
row_shape`` and ``in_shape = col_shape``. Looking up rows whose ids are written in mixed radix
over ``row_shape`` (``digits[k]`` holds mode ``k`` of every id) gathers, from each factor carrying
row mode ``k``, the slice ``v_k``, then contracts the gathered slices with the column factors.

:func:`gather_rows` routes a format to its registered kernel (:func:`register_row_kernel`; TT
and TTM have chains of small products, as in TT-Rec) or, for any other format, to one
``opt_einsum``-planned contraction of the gathered slices (:func:`embedding_plan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..formats import get_format
from .constant import assume_constant_result
from .plan_cache import remember
from .planning import batch_bucket, index_symbols, plan_contraction, run_steps

#: ``kernel(row_shape, factors, digits, n) -> (n, prod(col_shape))``
RowKernel = Callable[[tuple[int, ...], Sequence[Tensor], list[Tensor], int], Tensor]
ROW_KERNELS: dict[str, RowKernel] = {}
#: TTM merges its last two cores when ``m_{d-1} m_d ≤ TTM_MERGE · n``.
TTM_MERGE = 4


def register_row_kernel(fmt: str) -> Callable[[RowKernel], RowKernel]:
    """Register ``kernel`` as the row lookup of format ``fmt`` (used by :func:`gather_rows`)."""

    def register(kernel: RowKernel) -> RowKernel:
        ROW_KERNELS[fmt] = kernel
        return kernel

    return register


_EMB_PLANS: dict[tuple, tuple] = {}


def _embedding_plan(
    fmt: str, row_shape: tuple[int, ...], col_shape: tuple[int, ...], ranks: tuple[int, ...], rows: int
) -> tuple:
    key = (fmt, row_shape, col_shape, ranks, batch_bucket(rows))
    if key in _EMB_PLANS:
        return _EMB_PLANS[key]
    network = get_format(fmt).network(row_shape, col_shape, ranks)
    sym = index_symbols(list(network.sizes))  # 'b' is the looked-up row
    sizes = {sym[k]: v for k, v in network.sizes.items()} | {"b": batch_bucket(rows)}
    gathers, terms = [], []
    for idx in network.factor_indices:
        rows_here = [(axis, network.out_indices.index(n)) for axis, n in enumerate(idx) if n in network.out_indices]
        if len(rows_here) > 1:
            raise ValueError(f"format {fmt!r} has a factor with several row modes; cannot gather rows")
        rest = "".join(sym[n] for n in idx if n not in network.out_indices)
        if rows_here:
            axis, mode = rows_here[0]
            gathers.append((mode, axis))
            terms.append("b" + rest)  # gathered slice: (rows, remaining axes)
        else:
            gathers.append((-1, -1))
            terms.append(rest)
    steps, _, _ = plan_contraction(terms, "b" + "".join(sym[n] for n in network.in_indices), sizes)
    plan = (tuple(gathers), steps)
    return remember(_EMB_PLANS, key, plan)


@assume_constant_result
def embedding_plan(
    fmt: str, row_shape: tuple[int, ...], col_shape: tuple[int, ...], ranks: tuple[int, ...], rows: int
) -> tuple:
    """Gather spec ``((row mode, axis) or (-1, -1) per factor)`` and contraction steps for ``rows`` lookups.

    The steps contract the gathered slices (each with a leading row index ``b``) and the column
    factors into ``(rows, *col_shape)``; planned by ``opt_einsum`` at the power-of-two bucket of
    ``rows`` and cached. A constant under ``torch.compile``.
    """
    return _embedding_plan(fmt, row_shape, col_shape, ranks, rows)


@register_row_kernel("tt")
def tt_rows(row_shape: tuple[int, ...], factors: Sequence[Tensor], digits: list[Tensor], n: int) -> Tensor:
    r"""TT rows as a chain of vector-matrix products (TT-Rec), with the first two cores pre-merged.

    With row cores ``G_1..G_d`` and column cores ``H_1..H_c``,
    ``E[v] = G_1[v_1] G_2[v_2] ⋯ G_d[v_d] · C`` where ``C = H_1 ⋯ H_c`` is ``(r_d, D)``. When
    ``n_1 n_2 ≤ 4 n`` the pair ``L = G_1 G_2`` (``(n_1 n_2, r_2)``, one GEMM) is formed first,
    so a lookup starts from a row of ``L``. Each remaining step is an elementwise product and
    a sum over ``r`` (faster than ``n`` tiny batched GEMMs on CPU).
    """
    d = len(row_shape)
    rows, cols = list(factors[:d]), list(factors[d:])
    c = cols[0]  # (r_d, c_1, r)
    for h in cols[1:]:
        c = torch.tensordot(c, h, dims=1)  # (r_d, c_1, ..., c_k, r)
    c = c.reshape(c.shape[0], -1)  # (r_d, D_pad)
    n1 = row_shape[0]
    if d >= 2 and n1 * row_shape[1] <= 4 * max(n, 1):
        n2 = row_shape[1]
        g1 = rows[0].reshape(n1, -1)  # (n_1, r_1)
        merged = (g1 @ rows[1].reshape(g1.shape[1], -1)).reshape(n1 * n2, -1)  # (n_1 n_2, r_2)
        v = merged.index_select(0, digits[0] * n2 + digits[1])  # (n, r_2)
        start = 2
    else:
        v = rows[0][0].index_select(0, digits[0])  # (n, r_1)
        start = 1
    for k in range(start, d):
        g = rows[k].permute(1, 0, 2).index_select(0, digits[k])  # (n, r_{k-1}, r_k)
        v = (v.unsqueeze(-1) * g).sum(1)  # (n, r_k)
    return v @ c  # (n, r_d) @ (r_d, D_pad) -> (n, D_pad)


@register_row_kernel("ttm")
def ttm_rows(row_shape: tuple[int, ...], factors: Sequence[Tensor], digits: list[Tensor], n: int) -> Tensor:
    r"""TTM rows as a chain of batched GEMMs, with the last two cores pre-merged when that is cheaper.

    Core ``k`` gathered at ``v_k`` is ``(r_{k-1}, c_k r_k)``; the state ``S`` of shape
    ``(n, c_1⋯c_k, r_k)`` advances as ``S ← S · G_{k+1}[v_{k+1}]``. When
    ``m_{d-1} m_d ≤ 4 n`` the pair ``R = G_{d-1} G_d`` (``(m_{d-1} m_d, r_{d-2}, c_{d-1} c_d)``)
    is formed once, so each lookup does one GEMM fewer and gathers one slice fewer.
    """
    d = len(row_shape)
    cores = [g.permute(1, 0, 2, 3) for g in factors]  # (m_k, r_{k-1}, c_k, r_k)
    idx = list(digits)
    if d >= 3 and row_shape[-2] * row_shape[-1] <= TTM_MERGE * max(n, 1):
        a, b = cores[-2], cores[-1]
        ma, mb = a.shape[0], b.shape[0]
        merged = torch.einsum("mrcs,nsdt->mnrcdt", a, b)  # (m_{d-1}, m_d, r, c_{d-1}, c_d, r_d)
        merged = merged.reshape(ma * mb, a.shape[1], a.shape[2] * b.shape[2], b.shape[3])
        cores = cores[:-2] + [merged]
        idx = idx[:-2] + [idx[-2] * mb + idx[-1]]
    s = None
    for g, i in zip(cores, idx, strict=True):
        gi = g.index_select(0, i)  # (n, r_{k-1}, c_k, r_k)
        if s is None:
            s = gi.reshape(n, gi.shape[2], gi.shape[3])  # (n, c_1, r_1)
        else:
            s = torch.bmm(s, gi.reshape(n, gi.shape[1], -1))  # (n, A, r) @ (n, r, c r') -> (n, A, c r')
            s = s.reshape(n, -1, gi.shape[3])  # (n, A c, r')
    return s.reshape(n, -1)  # (n, D_pad)


def gather_rows(
    fmt: str,
    factors: Sequence[Tensor],
    digits: list[Tensor],
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    ranks: tuple[int, ...],
) -> Tensor:
    """Rows of the table for ids given by their mixed-radix ``digits``, shape ``(n, prod(col_shape))``."""
    n = digits[0].shape[0]
    kernel = ROW_KERNELS.get(fmt)
    if kernel is not None:
        return kernel(row_shape, factors, digits, n)
    gathers, steps = embedding_plan(fmt, row_shape, col_shape, ranks, int(n) if n > 0 else 1)
    ops = []
    for t, (mode, axis) in zip(factors, gathers, strict=True):
        ops.append(t if mode < 0 else t.movedim(axis, 0).index_select(0, digits[mode]))  # (n, other axes)
    out = run_steps(steps, ops)  # (n, c_1, ..., c_d)
    return out.reshape(n, math.prod(col_shape))
