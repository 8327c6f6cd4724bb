"""The cost model of a factorized linear map: which strategy computes ``x Wᵀ``, and its plan.

Three strategies are compared by penalised forward FLOPs (:func:`linear_plan`): reconstruct ``W``
and run one matmul; one planned contraction of ``x`` with all factors (einsum); or the two matrix
products of a :class:`TwoStage` split, run by :mod:`.two_stage`. Plans are cached per
``(format, shapes, ranks, batch bucket)``; :func:`linear_plan_constant` hands the chosen one to
the forward as a named tuple of constants, so under ``torch.compile`` it is not traced.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..formats import Network, get_format
from .constant import assume_constant_result
from .plan_cache import remember
from .planning import BATCH, MOVE_FLOPS, Steps, batch_bucket, linear_terms, plan_contraction
from .reconstruction import reconstruction

# Relative per-FLOP cost of each strategy on a 2-core CPU (one large GEMM = 1): a chain of many
# small pairwise einsums with their permutes runs at lower efficiency (see benchmarks/linear.py).
EINSUM_PENALTY = 2.0
TWO_STAGE_PENALTY = 1.1


class TwoStage(NamedTuple):
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


class LinearPlan(NamedTuple):
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


class EinsumPlan(NamedTuple):
    """One planned contraction of ``x`` with all factors, and whether backward recomputes its intermediates."""

    steps: Steps
    recompute: bool


#: Per-FLOP cost of a broadcast batched GEMM relative to one large GEMM (many small products).
BMM_PENALTY = 1.5
#: Waist elements per pass of a chunked two-stage product on CPU: 1 MiB of float32. On the 2-core CI CPU
#: (2 MiB L2 per core) 2^17-2^19 ran alike for TTM rank 4 at 1024 × 1024, and 2^20 or more 10-25 % slower.
WAIST_CHUNK_ELEMS = 1 << 18


#: Most factors for which the two-stage search tries every split of the factors into ``P`` and ``Q``
#: (``2^n``). Larger networks try only the splits into a contiguous run of factors and the rest: a chain's
#: (TT, TTM) bonds, and for Tucker and CP, whose factors are stored core / output modes / input modes, the
#: input modes' factors against the others. All ``2^17`` splits of a Tucker layer with eight modes a side
#: took 22 s to cost.
ALL_SPLITS_MAX_FACTORS = 12


def _splits(nf: int) -> list[int]:
    """Bit masks of the factors stage 1 may take: all proper subsets, or contiguous runs beyond the bound."""
    if nf <= ALL_SPLITS_MAX_FACTORS:
        return list(range(1, (1 << nf) - 1))
    runs = {((1 << (j - i)) - 1) << i for i in range(nf) for j in range(i + 1, nf + 1)}
    full = (1 << nf) - 1
    return sorted((runs | {full ^ m for m in runs}) - {0, full})


def _two_stage_layout(kinds: tuple[str, str], x1: list, x2: list, o1: list, k: list, o2: list, size) -> tuple:
    """Everything one variant fixes, from its stage kinds (see :class:`TwoStage`).

    Returns the stage-1 input mode order, the index orders of ``S_P`` and ``S_Q``, the stage-2
    output mode order, ``dims = (R1, C1, R2, C2)``, both super-factors' matrix shapes and how
    many of each super-factor's indices index its matrix's rows.
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
    return (*orders, tuple(size(d) for d in dims), shapes, tuple(len(pair[0]) for pair in matrices))


def _best_two_stage(
    network: Network, sym: dict[str, str], terms: list[str], sizes: dict[str, int], batch: int
) -> tuple[TwoStage, float] | None:
    nf = len(terms)
    ins = [sym[i] for i in network.in_indices]
    outs = [sym[i] for i in network.out_indices]
    size = lambda idx: math.prod(sizes[c] for c in idx)  # noqa: E731
    n_x, n_y = batch * size(ins), batch * size(outs)
    best = None
    for mask in _splits(nf):
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
            x_order, sp, sq, y_order, dims, matrices, rows = _two_stage_layout(kinds, x1, x2, o1, k, o2, size)
            pen1, pen2 = (BMM_PENALTY if kd == "bmm" else 1.0 for kd in kinds)
            # backward = 2x forward; recomputing the waist in backward adds one more stage-1 product
            cost = pre + pen1 * stage1 * 4.0 / 3.0 + pen2 * stage2
            cost += MOVE_FLOPS * ((n_x if x_order != ins else 0) + (n_y if y_order != outs else 0))
            if best is None or cost < best[0]:
                best = (cost, p, q, kinds, x_order, sp, sq, y_order, dims, matrices, rows)
    if best is None:
        return None
    cost, p, q, kinds, x_order, sp, sq, y_order, dims, matrices, rows = best
    # planned so that every step reads its operands in place (plan_contraction's chain_order)
    p_steps, p_flops, _ = plan_contraction(
        [terms[f] for f in p], "".join(sp), sizes, chain_order=True, matrix_rows=rows[0]
    )
    q_steps, q_flops, _ = plan_contraction(
        [terms[f] for f in q], "".join(sq), sizes, chain_order=True, matrix_rows=rows[1]
    )
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


_PLAN_CACHE: dict[tuple, LinearPlan] = {}


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
    sym, factors, x_term, out_modes, _ = linear_terms(network)
    sizes = {sym[k]: v for k, v in network.sizes.items()} | {BATCH: bucket}
    out_term = BATCH + out_modes
    steps, einsum_flops, terms = plan_contraction([x_term, *factors], out_term, sizes, streamed=True)
    # autograd keeps the batch-carrying inputs of every step for backward
    saved = sum(math.prod(sizes[c] for c in t) for step in terms for t in step if BATCH in t)
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    recompute = saved > bucket * n_in
    _, recon_flops = reconstruction(fmt, out_shape, in_shape, ranks)
    costs = {
        "reconstruct": recon_flops + 2.0 * bucket * n_in * n_out,
        "einsum": einsum_flops * EINSUM_PENALTY * (4.0 / 3.0 if recompute else 1.0),
    }
    two = _best_two_stage(network, sym, factors, sizes, bucket)
    if two is not None:
        costs["two_stage"] = two[1] * TWO_STAGE_PENALTY
    plan = LinearPlan(min(costs, key=costs.__getitem__), costs, steps, recompute, two[0] if two else None)
    return remember(_PLAN_CACHE, key, plan)


@assume_constant_result
def linear_plan_constant(
    fmt: str, out_shape: tuple[int, ...], in_shape: tuple[int, ...], ranks: tuple[int, ...], batch: int, strategy: str
) -> tuple[str, TwoStage | EinsumPlan | None]:
    """The chosen strategy and its plan, constants usable inside ``torch.compile``.

    ``strategy="auto"`` applies the cost model; ``"factorized"`` takes the cheapest strategy
    that does not reconstruct ``W``; ``"reconstruct"``, ``"einsum"`` or ``"two_stage"`` force one.
    Returns ``("two_stage", TwoStage)``, ``("einsum", EinsumPlan)`` or ``("reconstruct", None)``.
    """
    plan = linear_plan(fmt, out_shape, in_shape, ranks, batch)
    if strategy == "auto":
        chosen = plan.strategy
    elif strategy == "factorized":
        chosen = min((k for k in plan.costs if k != "reconstruct"), key=plan.costs.__getitem__)
    else:
        chosen = strategy if strategy in plan.costs else "einsum"
    if chosen == "two_stage":
        return (chosen, plan.two_stage)
    if chosen == "einsum":
        return (chosen, EinsumPlan(plan.einsum_steps, plan.recompute))
    return (chosen, None)
