"""Planned tensor-network contractions, cached per shape, with a FLOP/memory cost model.

A contraction is planned once per (network, batch bucket) with ``opt_einsum``'s dynamic
programming optimiser and stored as a tuple of pairwise einsum steps; executing it is a loop of
``torch.einsum`` calls with no path search. The planner is wrapped in
:func:`~.constant.assume_constant_result`, so under ``torch.compile`` the plan is a constant
and the traced graph holds only the einsum calls.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import opt_einsum
import torch
from torch import Tensor

from ..formats import Network, get_format
from .constant import assume_constant_result

#: Index letter reserved for the (flattened) batch dimension.
BATCH = "b"

# Relative per-FLOP cost of each strategy on a 2-core CPU (one large GEMM = 1): a chain of many
# small pairwise einsums with their permutes runs at lower efficiency (see benchmarks/linear.py).
EINSUM_PENALTY = 2.0
TWO_STAGE_PENALTY = 1.1

Steps = tuple[tuple[tuple[int, ...], str], ...]


def batch_bucket(batch: int) -> int:
    """Round a batch size up to a power of two, so plans are shared across nearby sizes."""
    return 1 << max(0, int(batch) - 1).bit_length()


def index_symbols(names: Sequence[str], reserved: str = BATCH) -> dict[str, str]:
    """Map index names (sorted) to distinct einsum letters, skipping the ``reserved`` ones."""
    letters = [c for c in string.ascii_letters if c not in reserved]
    if len(names) > len(letters):
        raise ValueError(f"network with {len(names)} indices is too large to contract with einsum")
    return dict(zip(sorted(names), letters, strict=False))


def plan_contraction(
    inputs: Sequence[str], output: str, sizes: dict[str, int]
) -> tuple[Steps, float, list[tuple[str, ...]]]:
    """Plan an einsum with opt_einsum's ``dp`` optimiser.

    opt_einsum chooses the pairwise order; the index order of every intermediate is ours: the
    output's indices first, in output order, then the others by first appearance. Mode indices
    thus stay grouped as in the result, so the final permute into the output layout moves a few
    long contiguous runs instead of interleaved ``(m_k, n_k)`` pairs, 4-5x faster for a 1024 × 1024
    TTM weight (``benchmarks/linear_ab.py``).

    Returns the pairwise steps (the positions of the step's operands in the current operand
    list, in argument order, then the step's equation; see :func:`run_steps`), the planned FLOP
    count, and the input terms of every step.
    """
    eq = ",".join(inputs) + "->" + output
    shapes = [tuple(sizes[c] for c in term) for term in inputs]
    if len(inputs) == 1:
        return (((0,), f"{inputs[0]}->{output}"),), float(math.prod(shapes[0])), [(inputs[0],)]
    optimize = "dp" if len(inputs) > 2 else "optimal"
    _, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)
    rank = {c: k for k, c in enumerate(dict.fromkeys(output + "".join(inputs)))}
    current, steps, terms = list(inputs), [], []
    for k, contraction in enumerate(info.contraction_list):
        inds = tuple(contraction[0])
        popped = [current.pop(i) for i in inds]
        if k == len(info.contraction_list) - 1:
            result = output
        else:
            keep = set(output).union(*current)
            result = "".join(sorted({c for t in popped for c in t if c in keep}, key=rank.__getitem__))
        if len(popped) == 2 and result and result[-1] in popped[0] and result[-1] not in popped[1]:
            # the operand carrying the innermost result index goes right, so that torch.einsum's
            # GEMM writes that index contiguously and the final permute keeps it innermost
            inds, popped = inds[::-1], popped[::-1]
        steps.append((inds, ",".join(popped) + "->" + result))
        terms.append(tuple(popped))
        current.append(result)
    return tuple(steps), float(info.opt_cost), terms


def run_steps(steps: Steps, operands: Sequence[Tensor]) -> Tensor:
    """Execute planned pairwise einsum steps.

    Each step names the positions of its operands in the current list, in argument order; they
    are removed and the step's result is appended.
    """
    ops = list(operands)
    for inds, eq in steps:
        args = [ops[i] for i in inds]
        for i in sorted(inds, reverse=True):
            del ops[i]
        ops.append(torch.einsum(eq, *args))
    return ops[0]


def _linear_terms(network: Network) -> tuple[dict[str, str], list[str], str, str, str]:
    sym = index_symbols(list(network.sizes))
    factors = ["".join(sym[i] for i in idx) for idx in network.factor_indices]
    in_modes = "".join(sym[i] for i in network.in_indices)
    out_modes = "".join(sym[i] for i in network.out_indices)
    return sym, factors, BATCH + in_modes, out_modes, in_modes


@dataclass(frozen=True)
class TwoStage:
    """``y = (x · S_P) · S_Q`` as two matrix products, with the factors split into groups ``P | Q``.

    Each group is pre-contracted (independently of the batch) into a super-factor. With ``X1``
    the input modes in ``P``, ``X2`` those in ``Q``, ``O1`` / ``O2`` the output modes in ``P`` /
    ``Q`` and ``K`` the bonds joining the groups, each stage is one matrix product of a batched
    operand ``a`` viewed ``(B, R, C)`` with a shared matrix, of one of two kinds:

    * ``"gemm"``: ``a.view(B·R, C) @ S``, one GEMM with the batch folded into the rows;
    * ``"bmm"``: ``S @ a[b]`` for every ``b``, one batched GEMM with ``S`` broadcast.

    The super-factors' index orders are chosen so that the waist ``t`` between the stages is
    produced in exactly the layout the second stage reads; no intermediate is ever transposed::

        gemm, bmm:  t = x[b, X2, X1] @ S_P[X1, (K O1)]          # (B, X2·K, O1)
                    y[b] = S_Q[O2, (X2 K)] @ t[b]              # (B, O2, O1)
        bmm, gemm:  t[b] = S_P[(O1 K), X1] @ x[b, X1, X2]       # (B, O1, K·X2)
                    y = t[b·O1, (K X2)] @ S_Q[(K X2), O2]      # (B, O1, O2)
        gemm, gemm: (when X2 or O1 is empty) t = x @ S_P, y = t @ S_Q

    At most ``x`` (when ``X1`` is not a leading or trailing block of the input modes) and ``y``
    are permuted, both of the size of the layer's input or output. This covers the TT bond
    split ``y = (x Aᵀ) Cᵀ``, TTM splits at any bond without moving data, CP through Khatri-Rao
    products and Tucker through (input factors) / (core + output factors).

    On CPU both stages run ``chunk_rows`` batch rows at a time, with ``chunk_rows · R2 · C2`` at
    most :data:`WAIST_CHUNK_ELEMS`, so the waist (4× the size of ``x`` for TTM rank 4 at 1024 ×
    1024) stays in cache between the stage that writes it and the one that reads it.
    """

    p_factors: tuple[int, ...]
    q_factors: tuple[int, ...]
    p_steps: Steps
    q_steps: Steps
    kinds: tuple[str, str]  # ("gemm" | "bmm") for stage 1 and stage 2
    x_perm: tuple[int, ...]  # x (B, *in_shape) -> stage-1 layout
    dims: tuple[int, int, int, int]  # (R1, C1, R2, C2): x viewed (B, R1, C1), the waist (B, R2, C2)
    matrices: tuple[tuple[int, int], tuple[int, int]]  # S_P and S_Q as matrices
    y_perm: tuple[int, ...]  # stage-2 output (B, *y_modes) -> (B, *out_shape)
    y_modes: tuple[int, ...]
    chunk_rows: int  # batch rows per pass on CPU, so that one pass's waist fits in cache


@dataclass(frozen=True)
class LinearPlan:
    """How a factorized linear map is evaluated at one batch bucket.

    Attributes
    ----------
    strategy
        ``"two_stage"``, ``"einsum"`` (one planned contraction of ``x`` with all factors) or
        ``"reconstruct"`` (build ``W`` once, then one matmul).
    costs
        Cost-model estimates (penalised forward FLOPs) of every strategy considered.
    einsum_steps, recompute
        The planned full contraction, and whether it recomputes its intermediates in backward
        (activation checkpointing) because keeping them would exceed the ``B · N`` input.
    two_stage
        The best two-stage split, if any.
    """

    strategy: str
    costs: dict[str, float]
    einsum_steps: Steps
    recompute: bool
    two_stage: TwoStage | None


#: Per-FLOP cost of a broadcast batched GEMM relative to one large GEMM (many small products).
BMM_PENALTY = 1.5
#: Cost, in FLOPs, of moving one element in a permute copy (memory bound; measured on 2 CPU cores).
MOVE_FLOPS = 64.0
#: Waist elements per pass of a chunked two-stage product on CPU: 1 MiB of float32. On the 2-core CI CPU
#: (2 MiB L2 per core) 2^17-2^19 ran alike for TTM rank 4 at 1024 × 1024, and 2^20 or more 10-25 % slower.
WAIST_CHUNK_ELEMS = 1 << 18


def _two_stage_layout(kinds: tuple[str, str], x1: list, x2: list, o1: list, k: list, o2: list, size) -> tuple:
    """Everything one variant fixes, from its stage kinds (see :class:`TwoStage`).

    Returns the stage-1 input mode order, the index orders of ``S_P`` and ``S_Q``, the stage-2
    output mode order, ``dims = (R1, C1, R2, C2)`` and both super-factors' matrix shapes.
    """
    if kinds == ("gemm", "gemm"):
        orders = (x2 + x1, x1 + o1 + k, x2 + k + o2, o1 + o2)
        dims, matrices = (x2, x1, o1, x2 + k), ((x1, o1 + k), (x2 + k, o2))
    elif kinds == ("gemm", "bmm"):
        orders = (x2 + x1, x1 + k + o1, o2 + x2 + k, o2 + o1)
        dims, matrices = (x2, x1, x2 + k, o1), ((x1, k + o1), (o2, x2 + k))
    else:  # ("bmm", "gemm")
        orders = (x1 + x2, o1 + k + x1, k + x2 + o2, o1 + o2)
        dims, matrices = (x1, x2, o1, k + x2), ((o1 + k, x1), (k + x2, o2))
    shapes = tuple(tuple(size(m) for m in pair) for pair in matrices)
    return (*orders, tuple(size(d) for d in dims), shapes)


def _best_two_stage(
    network: Network, sym: dict[str, str], terms: list[str], sizes: dict[str, int], batch: int
) -> tuple[TwoStage, float] | None:
    nf = len(terms)
    ins = [sym[i] for i in network.in_indices]
    outs = [sym[i] for i in network.out_indices]
    size = lambda idx: math.prod(sizes[c] for c in idx)  # noqa: E731
    n_x, n_y = batch * size(ins), batch * size(outs)
    best = None
    for mask in range(1, (1 << nf) - 1):
        p = tuple(f for f in range(nf) if mask >> f & 1)
        q = tuple(f for f in range(nf) if not mask >> f & 1)
        in_p, in_q = set("".join(terms[f] for f in p)), set("".join(terms[f] for f in q))
        x1 = [c for c in ins if c in in_p]
        if not x1:
            continue  # stage 1 must contract x with something
        x2 = [c for c in ins if c not in in_p]
        o1 = [c for c in outs if c in in_p]
        o2 = [c for c in outs if c not in in_p]
        k = sorted((in_p & in_q) - set(ins) - set(outs))
        pre = 2.0 * (size(x1 + o1 + k) * len(p) + size(x2 + k + o2) * len(q))  # rough super-factor cost
        stage1 = 2.0 * batch * size(x1 + x2 + o1 + k)
        stage2 = 2.0 * batch * size(o1 + x2 + k + o2)
        variants = [("gemm", "gemm")] if not x2 or not o1 else [("gemm", "bmm"), ("bmm", "gemm")]
        for kinds in variants:
            x_order, sp, sq, y_order, dims, matrices = _two_stage_layout(kinds, x1, x2, o1, k, o2, size)
            pen1, pen2 = (BMM_PENALTY if kd == "bmm" else 1.0 for kd in kinds)
            # backward = 2x forward; recomputing the waist in backward adds one more stage-1 product
            cost = pre + pen1 * stage1 * 4.0 / 3.0 + pen2 * stage2
            cost += MOVE_FLOPS * ((n_x if x_order != ins else 0) + (n_y if y_order != outs else 0))
            if best is None or cost < best[0]:
                best = (cost, p, q, kinds, x_order, sp, sq, y_order, dims, matrices)
    if best is None:
        return None
    cost, p, q, kinds, x_order, sp, sq, y_order, dims, matrices = best
    p_steps, p_flops, _ = plan_contraction([terms[f] for f in p], "".join(sp), sizes)
    q_steps, q_flops, _ = plan_contraction([terms[f] for f in q], "".join(sq), sizes)
    cost += p_flops + q_flops - 2.0 * (size(sp) * len(p) + size(sq) * len(q))
    stage = TwoStage(
        p,
        q,
        p_steps,
        q_steps,
        kinds,
        (0, *(1 + ins.index(c) for c in x_order)),
        dims,
        matrices,
        (0, *(1 + y_order.index(c) for c in outs)),
        tuple(sizes[c] for c in y_order),
        max(1, WAIST_CHUNK_ELEMS // (dims[2] * dims[3])),
    )
    return stage, cost


_RECON_CACHE: dict[tuple, tuple[Steps, float]] = {}
_PLAN_CACHE: dict[tuple, LinearPlan] = {}


def _reconstruction(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> tuple[Steps, float]:
    key = (fmt, out_shape, in_shape, ranks)
    if key not in _RECON_CACHE:
        network = get_format(fmt).network(out_shape, in_shape, ranks)
        sym, factors, _, out_modes, in_modes = _linear_terms(network)
        sizes = {sym[k]: v for k, v in network.sizes.items()}
        steps, flops, _ = plan_contraction(factors, out_modes + in_modes, sizes)
        _RECON_CACHE[key] = (steps, flops)
    return _RECON_CACHE[key]


@assume_constant_result
def reconstruction_steps(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> Steps:
    """Planned steps that contract the factors into ``W`` of shape ``(*out_shape, *in_shape)``."""
    return _reconstruction(fmt, out_shape, in_shape, ranks)[0]


def linear_plan(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...], batch: int
) -> LinearPlan:
    r"""Choose and plan the cheapest way to compute ``x Wᵀ`` for a batch of ``batch`` rows.

    The cost model compares penalised forward FLOPs of three strategies:

    .. math::

        C_\text{rec} = \text{flops}(G_1..G_K \to W) + 2BMN, \qquad
        C_\text{two} = ρ_2 \big[\text{flops}(S_P) + \text{flops}(S_Q)
            + \tfrac43 ρ_1 \, 2|x ∪ S_P| + ρ_2' \, 2|t ∪ S_Q| + μ (|x|_\text{moved} + |y|_\text{moved})\big],

    and ``C_einsum = ρ_e · flops(x, G_1..G_K → y)`` (×4/3 when it must recompute in backward),
    where ``|·|`` is the product of the sizes of the indices involved (the stage-1 product is
    counted 4/3 times: backward recomputes it), ``ρ_1, ρ_2'`` are :data:`BMM_PENALTY` for a
    batched stage and 1 for a GEMM, ``μ`` (:data:`MOVE_FLOPS`) prices a permute of ``x`` or ``y``
    when the stage layouts need one, and ``ρ_2``, ``ρ_e`` are the measured penalties
    :data:`TWO_STAGE_PENALTY` and :data:`EINSUM_PENALTY`. The two-stage split ``P | Q`` and its
    stage kinds are the cheapest over all bipartitions (see :class:`TwoStage`). Plans are cached
    per ``(format, shapes, ranks, batch bucket)``.
    """
    bucket = batch_bucket(batch)
    key = (fmt, out_shape, in_shape, ranks, bucket)
    plan = _PLAN_CACHE.get(key)
    if plan is not None:
        return plan
    network = get_format(fmt).network(out_shape, in_shape, ranks)
    sym, factors, x_term, out_modes, _ = _linear_terms(network)
    sizes = {sym[k]: v for k, v in network.sizes.items()} | {BATCH: bucket}
    out_term = BATCH + out_modes
    steps, einsum_flops, terms = plan_contraction([x_term, *factors], out_term, sizes)
    # autograd keeps the batch-carrying inputs of every step for backward
    saved = sum(math.prod(sizes[c] for c in t) for step in terms for t in step if BATCH in t)
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    recompute = saved > bucket * n_in
    _, recon_flops = _reconstruction(fmt, out_shape, in_shape, ranks)
    costs = {
        "reconstruct": recon_flops + 2.0 * bucket * n_in * n_out,
        "einsum": einsum_flops * EINSUM_PENALTY * (4.0 / 3.0 if recompute else 1.0),
    }
    two = _best_two_stage(network, sym, factors, sizes, bucket)
    if two is not None:
        costs["two_stage"] = two[1] * TWO_STAGE_PENALTY
    plan = LinearPlan(min(costs, key=costs.__getitem__), costs, steps, recompute, two[0] if two else None)
    _PLAN_CACHE[key] = plan
    return plan


@assume_constant_result
def linear_plan_constant(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...], batch: int, strategy: str
) -> tuple:
    """The plan as nested constants, usable inside ``torch.compile``.

    ``strategy="auto"`` applies the cost model; ``"factorized"`` takes the cheapest strategy
    that does not reconstruct ``W``; ``"reconstruct"``, ``"einsum"`` or ``"two_stage"`` force one.
    """
    plan = linear_plan(fmt, out_shape, in_shape, ranks, batch)
    if strategy == "auto":
        chosen = plan.strategy
    elif strategy == "factorized":
        chosen = min((k for k in plan.costs if k != "reconstruct"), key=plan.costs.__getitem__)
    else:
        chosen = strategy if strategy in plan.costs else "einsum"
    if chosen == "two_stage":
        t = plan.two_stage
        return (
            chosen,
            (t.p_factors, t.q_factors, t.p_steps, t.q_steps, t.kinds)
            + (t.x_perm, t.dims, t.matrices, t.y_perm, t.y_modes, t.chunk_rows),
        )
    if chosen == "einsum":
        return (chosen, (plan.einsum_steps, plan.recompute))
    return (chosen, ())


def reconstruct_matrix(
    fmt: str, factors: Sequence[Tensor], out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> Tensor:
    """Contract the factors into the dense matrix ``W`` of shape ``(prod(out_shape), prod(in_shape))``."""
    steps = reconstruction_steps(fmt, out_shape, in_shape, ranks)
    full = run_steps(steps, factors)  # (*out_shape, *in_shape)
    return full.reshape(math.prod(out_shape), math.prod(in_shape))


_NORM_CACHE: dict[tuple, Steps] = {}


def squared_norm(
    fmt: str, factors: Sequence[Tensor], out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> Tensor:
    r"""``‖W‖_F²`` of the factorized matrix without forming ``W``.

    The network is contracted with a copy of itself whose bond indices are renamed, over every
    mode index: :math:`\sum_{i} W_i^2 = \sum_{i,r,r'} \prod_f G_f[i, r]\, G_f[i, r']`. For a TT
    table of ``10^7 × 128`` rows at rank 16 this is a chain of small matrix products.
    """
    key = (fmt, out_shape, in_shape, ranks)
    if key not in _NORM_CACHE:
        network = get_format(fmt).network(out_shape, in_shape, ranks)
        modes = set(network.out_indices) | set(network.in_indices)
        primed = {n: f"{n}'" for n in network.sizes if n not in modes}
        sym = index_symbols([*network.sizes, *primed.values()], reserved="")
        sizes = {sym[n]: v for n, v in network.sizes.items()} | {sym[p]: network.sizes[n] for n, p in primed.items()}
        terms = ["".join(sym[i] for i in idx) for idx in network.factor_indices]
        copies = ["".join(sym[primed.get(i, i)] for i in idx) for idx in network.factor_indices]
        _NORM_CACHE[key] = plan_contraction(terms + copies, "", sizes)[0]
    return run_steps(_NORM_CACHE[key], [*factors, *factors])


def _is_identity(perm: tuple[int, ...]) -> bool:
    return perm == tuple(range(len(perm)))


def _stage(a: Tensor, w: Tensor, kind: str, out: Tensor | None = None) -> Tensor:
    """One stage on ``a`` of shape ``(B, R, C)``, written into ``out`` when given.

    ``gemm``: ``(B·R, C) @ (C, D) -> (B, R, D)``; ``bmm``: ``(D, R) @ a[b] -> (B, D, C)`` for every ``b``.
    """
    batch, rows, cols = a.shape
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
    chunk writes its rows of ``y`` and of ``∂x`` in place and adds to the super-factors' gradients.
    The waist and its gradient live in buffers allocated once per call and reused by every chunk:
    a fresh allocation of that size per chunk is fresh pages from the OS, and faulting them in
    cost about a third of the backward pass for TTM rank 4 at 1024 × 1024 on 2 CPU cores (the
    whole fwd+bwd step went from 0.61× to 0.53× dense's; ``benchmarks/linear_ab.py``).
    """

    @staticmethod
    def forward(
        ctx, xm: Tensor, sp: Tensor, sq: Tensor, kinds: tuple[str, str], dims: tuple[int, ...], chunk: int
    ) -> Tensor:
        ctx.meta = (kinds, dims, chunk)
        ctx.save_for_backward(xm, sp, sq)
        batch = xm.shape[0]
        y = xm.new_empty((batch, *_stage_shape(kinds[1], dims[2], dims[3], tuple(sq.shape))))
        waist = xm.new_empty((min(chunk, batch), *_stage_shape(kinds[0], dims[0], dims[1], tuple(sp.shape))))
        for start in range(0, batch, chunk):
            xc = xm[start : start + chunk]
            t = _stage(xc, sp, kinds[0], out=waist[: xc.shape[0]])
            t = t.view(xc.shape[0], dims[2], dims[3])  # the waist (b, R2, C2)
            _stage(t, sq, kinds[1], out=y[start : start + chunk])
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        xm, sp, sq = ctx.saved_tensors
        kinds, dims, chunk = ctx.meta
        need_x, need_sp, need_sq = ctx.needs_input_grad[:3]
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
        return gx, gsp, gsq, None, None, None


def _einsum_all(steps: Steps, x: Tensor, *factors: Tensor) -> Tensor:
    return run_steps(steps, (x, *factors))


def factorized_linear(
    x: Tensor,
    fmt: str,
    factors: Sequence[Tensor],
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    ranks: tuple[int, ...],
    strategy: str = "auto",
) -> Tensor:
    """``x Wᵀ`` for ``x`` of shape ``(B, prod(in_shape))``, without forming ``W`` unless cheaper.

    Parameters
    ----------
    x
        Input of shape ``(B, N)`` with ``N = prod(in_shape)``.
    fmt
        Format name.
    factors
        The format's factors, consistent with ``ranks``.
    strategy
        ``"auto"`` (cost model), ``"factorized"``, ``"reconstruct"``, ``"einsum"`` or ``"two_stage"``.

    Returns
    -------
    Tensor
        ``(B, M)`` with ``M = prod(out_shape)``.
    """
    batch = x.shape[0]
    chosen, payload = linear_plan_constant(fmt, out_shape, in_shape, ranks, int(batch), strategy)
    if chosen == "reconstruct":
        weight = reconstruct_matrix(fmt, factors, out_shape, in_shape, ranks)  # (M, N)
        return x @ weight.T  # (B, N) @ (N, M) -> (B, M)
    xt = x.reshape(batch, *in_shape)  # (B, n_1, ..., n_d)
    if chosen == "two_stage":
        p, q, p_steps, q_steps, kinds, x_perm, dims, matrices, y_perm, y_modes, chunk = payload
        # the super-factors are small; contiguous so that every matrix product runs on BLAS directly
        sp = run_steps(p_steps, [factors[f] for f in p]).reshape(matrices[0]).contiguous()  # group P
        sq = run_steps(q_steps, [factors[f] for f in q]).reshape(matrices[1]).contiguous()  # group Q
        xm = xt if _is_identity(x_perm) else xt.permute(x_perm)  # (B, stage-1 mode order)
        chunk = chunk if x.device.type == "cpu" else batch  # one pass on GPUs: no cache to fit
        xm = xm.reshape(batch, dims[0], dims[1])
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or torch._C._are_functorch_transforms_active():
            # graph export (ONNX, torch.export) or torch.func transforms (vmap over an ensemble's
            # particles): the same two products, without chunks or in-place buffers
            y = _stage(_stage(xm, sp, kinds[0]).reshape(batch, dims[2], dims[3]), sq, kinds[1])  # (B, ·, ·)
        else:
            y = _TwoStageProduct.apply(xm, sp, sq, kinds, dims, chunk)  # (B, ·, ·)
        y = y.reshape(batch, *y_modes)
        y = y if _is_identity(y_perm) else y.permute(y_perm)  # (B, m_1, ..., m_d)
    else:
        steps, recompute = payload
        if recompute and torch.is_grad_enabled():
            y = torch.utils.checkpoint.checkpoint(_einsum_all, steps, xt, *factors, use_reentrant=False)
        else:
            y = _einsum_all(steps, xt, *factors)  # (B, m_1, ..., m_d)
    return y.reshape(batch, math.prod(out_shape))
