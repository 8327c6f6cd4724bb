"""The two matrix products of a :class:`~.cost_model.TwoStage` plan, with a memory-lean autograd function.

``y = (x · S_P) · S_Q``: the factors of each group are pre-contracted into a super-factor, then
each stage is one GEMM or one batched GEMM (see :class:`~.cost_model.TwoStage` for the layouts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .cost_model import TwoStage
from .planning import run_steps


def _is_identity(perm: tuple[int, ...]) -> bool:
    return perm == tuple(range(len(perm)))


def _stage(a: Tensor, w: Tensor, kind: str, out: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """One stage on ``a`` of shape ``(B, R, C)``, written into ``out`` when given, plus ``bias`` in every row.

    ``gemm``: ``(B·R, C) @ (C, D) -> (B, R, D)``; ``bmm``: ``(D, R) @ a[b] -> (B, D, C)`` for every ``b``.
    ``bias`` has the per-row shape of the result; the product adds into it (one pass over the result
    fewer than adding it afterwards, and BLAS's ``β = 1`` path).
    """
    batch, rows, cols = a.shape
    if bias is not None:
        y = a.new_empty((batch, *_stage_shape(kind, rows, cols, tuple(w.shape)))) if out is None else out
        if kind == "gemm" and rows == 1:
            return torch.addmm(bias.reshape(-1), a.reshape(batch, cols), w, out=y.view(batch, -1)).view(y.shape)
        y.copy_(bias.expand(y.shape))
        if kind == "gemm":
            y.view(batch * rows, w.shape[1]).addmm_(a.reshape(batch * rows, cols), w)  # += (B·R, C) @ (C, D)
        else:
            y.baddbmm_(w.expand(batch, *w.shape), a)  # += (B, D, R) @ (B, R, C)
        return y
    if kind == "gemm":
        flat = None if out is None else out.view(batch * rows, w.shape[1])
        return torch.mm(a.reshape(batch * rows, cols), w, out=flat).view(batch, rows, w.shape[1])  # (B·R, C) @ (C, D)
    return torch.bmm(w.expand(batch, *w.shape), a, out=out)  # (B, D, R) @ (B, R, C) -> (B, D, C)


def _stage_shape(kind: str, rows: int, cols: int, w_shape: tuple[int, int]) -> tuple[int, int]:
    """Per-row shape of :func:`_stage`'s output for ``a`` viewed ``(·, rows, cols)``."""
    return (rows, w_shape[1]) if kind == "gemm" else (w_shape[0], cols)


def _stage_backward(
    a: Tensor, w: Tensor, g: Tensor, kind: str, ga: Tensor | None, gw: Tensor | None, scratch: Tensor | None = None
) -> None:
    """Gradients of :func:`_stage` from the output gradient ``g``: written into ``ga``, added to ``gw``.

    Either buffer may be ``None`` when that gradient is not needed. ``scratch``, of at least
    ``B·D·R`` elements, holds the per-row products of a ``bmm`` stage's weight gradient.
    """
    batch, rows, cols = a.shape
    if kind == "gemm":
        g2 = g.reshape(batch * rows, w.shape[1])  # (B·R, D)
        if ga is not None:
            torch.mm(g2, w.T, out=ga.view(batch * rows, cols))  # (B·R, D) @ (D, C)
        if gw is not None:
            gw.addmm_(a.reshape(batch * rows, cols).T, g2)  # (C, B·R) @ (B·R, D)
        return
    if ga is not None:
        torch.bmm(w.T.expand(batch, rows, w.shape[0]), g, out=ga)  # (B, R, D) @ (B, D, C)
    if gw is not None:
        if batch * w.shape[0] * rows <= g.numel() + a.numel():
            per_row = None if scratch is None else scratch[: batch * w.numel()].view(batch, *w.shape)
            gw += torch.bmm(g, a.transpose(1, 2), out=per_row).sum(0)  # Σ_b (D, C) @ (C, R)
        else:
            gw += torch.einsum("bdc,brc->dr", g, a)


class _TwoStageProduct(torch.autograd.Function):
    """The two matrix products of :class:`TwoStage`, ``chunk`` batch rows at a time.

    Only ``x`` and the two super-factors are kept for backward; the waist ``t`` is recomputed
    (one stage-1 product), so the batch-dependent memory saved equals dense ``nn.Linear``'s.
    Running the batch in chunks whose waist fits in cache (:data:`WAIST_CHUNK_ELEMS`) keeps the
    waist, often several times the size of ``x``, from ever travelling to main memory. Every
    chunk writes its rows of ``y`` (the bias, when given, added by the second product) and of ``∂x``
    in place and adds to the super-factors' gradients.
    The waist and its gradient live in buffers allocated once per call and reused by every chunk:
    a fresh allocation of that size per chunk is fresh pages from the OS, and faulting them in
    cost about a third of the backward pass for TTM rank 4 at 1024 × 1024 on 2 CPU cores (the
    whole fwd+bwd step went from 0.61× to 0.53× dense's; ``benchmarks/linear_ab.py``).
    """

    @staticmethod
    def forward(
        ctx,
        xm: Tensor,
        sp: Tensor,
        sq: Tensor,
        bias: Tensor | None,
        kinds: tuple[str, str],
        dims: tuple[int, ...],
        chunk: int,
    ) -> Tensor:
        ctx.meta = (kinds, dims, chunk, bias is not None)
        ctx.save_for_backward(xm, sp, sq)
        batch = xm.shape[0]
        y = xm.new_empty((batch, *_stage_shape(kinds[1], dims[2], dims[3], tuple(sq.shape))))
        waist = xm.new_empty((min(chunk, batch), *_stage_shape(kinds[0], dims[0], dims[1], tuple(sp.shape))))
        for start in range(0, batch, chunk):
            xc = xm[start : start + chunk]
            t = _stage(xc, sp, kinds[0], out=waist[: xc.shape[0]])
            t = t.view(xc.shape[0], dims[2], dims[3])  # the waist (b, R2, C2)
            _stage(t, sq, kinds[1], out=y[start : start + chunk], bias=bias)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        xm, sp, sq = ctx.saved_tensors
        kinds, dims, chunk, has_bias = ctx.meta
        need_x, need_sp, need_sq, need_bias = ctx.needs_input_grad[:4]
        batch = xm.shape[0]
        gx = xm.new_empty(xm.shape) if need_x else None  # contiguous, whatever xm's strides
        gsp = torch.zeros_like(sp) if need_sp else None
        gsq = torch.zeros_like(sq) if need_sq else None
        rows = min(chunk, batch)
        waist_shape = _stage_shape(kinds[0], dims[0], dims[1], tuple(sp.shape))
        waist, g_waist = xm.new_empty((rows, *waist_shape)), xm.new_empty((rows, *waist_shape))
        scratch = xm.new_empty(rows * sp.numel()) if need_sp and kinds[0] == "bmm" else None
        # ``y.sum().backward()`` hands in a stride-0 gradient, which every GEMM would copy again
        g_rows = None if gy.is_contiguous() else gy.new_empty((rows, *gy.shape[1:]))
        for start in range(0, batch, chunk):
            xc = xm[start : start + chunk]
            n = xc.shape[0]
            t1 = _stage(xc, sp, kinds[0], out=waist[:n])  # recomputed rather than kept
            t, gt = t1.view(n, dims[2], dims[3]), g_waist[:n].view(n, dims[2], dims[3])
            gyc = gy[start : start + chunk] if g_rows is None else g_rows[:n].copy_(gy[start : start + chunk])
            _stage_backward(t, sq, gyc, kinds[1], gt, gsq)
            gxc = None if gx is None else gx[start : start + chunk]
            _stage_backward(xc, sp, g_waist[:n], kinds[0], gxc, gsp, scratch)
        gbias = gy.sum(0) if has_bias and need_bias else None  # (·, ·): the bias's per-row layout
        return gx, gsp, gsq, gbias, None, None, None


def _as_matrix(t: Tensor, shape: tuple[int, int], kind: str, traced: bool) -> Tensor:
    """A super-factor as its stage's ``shape`` matrix, read in place where BLAS can, else a contiguous copy.

    A ``gemm`` stage reads a transposed matrix in place (its planner lays super-factors out so,
    :func:`~.planning.plan_contraction`'s ``chain_order``); a ``bmm`` stage, a traced graph or a
    ``torch.func`` transform gets a contiguous one.
    """
    m = t.reshape(shape)
    if m.is_contiguous() or (kind == "gemm" and not traced and m.T.is_contiguous()):
        return m
    return m.contiguous()


def _bias_in_stage_layout(bias: Tensor, plan: TwoStage) -> Tensor:
    """``bias`` ``(prod(out_shape),)`` in the per-row layout of the second stage's output (before ``y_perm``)."""
    to_out = tuple(p - 1 for p in plan.y_perm[1:])  # output mode j is stage-2 mode to_out[j]
    if not _is_identity(to_out):
        bias = bias.reshape([plan.y_modes[k] for k in to_out]).permute([to_out.index(k) for k in range(len(to_out))])
    return bias.reshape(_stage_shape(plan.kinds[1], plan.dims[2], plan.dims[3], plan.matrices[1]))


def two_stage_linear(xt: Tensor, factors: Sequence[Tensor], plan: TwoStage, bias: Tensor | None = None) -> Tensor:
    """``x Wᵀ (+ bias)`` by the two products of ``plan``, for ``xt`` ``(B, *in_shape)``; returns ``(B, *out_shape)``.

    ``bias`` (``(prod(out_shape),)`` or ``None``) is added by the second product (:func:`_stage`).
    """
    batch = xt.shape[0]
    dims, kinds = plan.dims, plan.kinds
    traced = torch.jit.is_tracing() or torch.compiler.is_exporting() or torch._C._are_functorch_transforms_active()
    sp = _as_matrix(run_steps(plan.p_steps, [factors[f] for f in plan.p_factors]), plan.matrices[0], kinds[0], traced)
    sq = _as_matrix(run_steps(plan.q_steps, [factors[f] for f in plan.q_factors]), plan.matrices[1], kinds[1], traced)
    xm = xt if _is_identity(plan.x_perm) else xt.permute(plan.x_perm)  # (B, stage-1 mode order)
    chunk = plan.chunk_rows if xt.device.type == "cpu" else batch  # one pass on GPUs: no cache to fit
    xm = xm.reshape(batch, dims[0], dims[1])
    by = None if bias is None else _bias_in_stage_layout(bias, plan)  # (·, ·)
    if traced:
        # graph export (ONNX, torch.export) or torch.func transforms (vmap over an ensemble's
        # particles): the same two products, without chunks or in-place buffers
        y = _stage(_stage(xm, sp, kinds[0]).reshape(batch, dims[2], dims[3]), sq, kinds[1])  # (B, ·, ·)
        y = y if by is None else y + by
    else:
        y = _TwoStageProduct.apply(xm, sp, sq, by, kinds, dims, chunk)  # (B, ·, ·)
    y = y.reshape(batch, *plan.y_modes)
    return y if _is_identity(plan.y_perm) else y.permute(plan.y_perm)  # (B, m_1, ..., m_d)
