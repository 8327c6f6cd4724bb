"""Planned tensor-network contractions, cached per shape, with a FLOP/memory cost model.

A contraction is planned once per (network, batch bucket) with ``opt_einsum``'s dynamic
programming optimiser and stored as a tuple of pairwise einsum steps; executing it is a loop of
``torch.einsum`` calls with no path search. The planner is wrapped in
:func:`torch.compiler.assume_constant_result`, so under ``torch.compile`` the plan is a constant
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

    Returns the pairwise steps (positions popped from the operand list, then the step's
    equation), the planned FLOP count, and the input terms of every step.
    """
    eq = ",".join(inputs) + "->" + output
    shapes = [tuple(sizes[c] for c in term) for term in inputs]
    if len(inputs) == 1:
        return (((0,), f"{inputs[0]}->{output}"),), float(math.prod(shapes[0])), [(inputs[0],)]
    optimize = "dp" if len(inputs) > 2 else "optimal"
    _, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)
    steps, terms = [], []
    for contraction in info.contraction_list:
        inds, einsum_str = tuple(contraction[0]), contraction[2]
        steps.append((inds, einsum_str))
        terms.append(tuple(einsum_str.split("->")[0].split(",")))
    return tuple(steps), float(info.opt_cost), terms


def run_steps(steps: Steps, operands: Sequence[Tensor]) -> Tensor:
    """Execute planned pairwise einsum steps."""
    ops = list(operands)
    for inds, eq in steps:
        args = [ops.pop(i) for i in inds]
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
    ``Q`` and ``K`` the bonds joining the groups, ``S_P`` is laid out ``(X1, O1, K)`` and ``S_Q``
    ``(X2, K, O2)``, so both stages are plain GEMMs::

        t = x[b, X2, X1] @ S_P[X1, (O1 K)]            # (B·X2, O1·K), the narrow waist
        y = t[b, O1, (X2 K)] @ S_Q[(X2 K), O2]        # (B·O1, O2)

    This covers the TT bond split ``y = (x Aᵀ) Cᵀ``, TTM splits at any bond, CP through
    Khatri-Rao products and Tucker through (input factors) / (core + output factors).
    """

    p_factors: tuple[int, ...]
    q_factors: tuple[int, ...]
    p_steps: Steps
    q_steps: Steps
    x_perm: tuple[int, ...]  # x (B, *in_shape) -> (B, X2, X1)
    sizes: tuple[int, int, int, int, int]  # |X1|, |X2|, |O1|, |K|, |O2|
    y_perm: tuple[int, ...]  # (B, O1 modes, O2 modes) -> (B, *out_shape)
    y_modes: tuple[int, ...]  # sizes of the O1 then O2 modes


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


def _best_two_stage(
    network: Network, sym: dict[str, str], terms: list[str], sizes: dict[str, int], batch: int
) -> tuple[TwoStage, float] | None:
    nf = len(terms)
    ins = [sym[i] for i in network.in_indices]
    outs = [sym[i] for i in network.out_indices]
    size = lambda idx: math.prod(sizes[c] for c in idx)  # noqa: E731
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
        sp, sq = x1 + o1 + k, x2 + k + o2
        gemm = batch * size(x2) * (size(x1) * size(o1 + k) + size(o1) * size(k) * size(o2))
        cost = 2.0 * (size(sp) * len(p) + size(sq) * len(q) + gemm)
        if best is None or cost < best[0]:
            best = (cost, p, q, x1, x2, o1, o2, k)
    if best is None:
        return None
    _, p, q, x1, x2, o1, o2, k = best
    p_steps, p_flops, _ = plan_contraction([terms[f] for f in p], "".join(x1 + o1 + k), sizes)
    q_steps, q_flops, _ = plan_contraction([terms[f] for f in q], "".join(x2 + k + o2), sizes)
    stage1 = 2.0 * batch * size(x2) * size(x1) * size(o1 + k)
    stage2 = 2.0 * batch * size(o1) * size(x2 + k) * size(o2)
    # backward = 2x forward; recomputing t in backward adds one more stage-1 product
    cost = p_flops + q_flops + stage1 * 4.0 / 3.0 + stage2
    x_perm = (0, *(1 + ins.index(c) for c in x2 + x1))
    y_order = o1 + o2
    y_perm = (0, *(1 + y_order.index(c) for c in outs))
    stage = TwoStage(
        p,
        q,
        p_steps,
        q_steps,
        x_perm,
        (size(x1), size(x2), size(o1), size(k), size(o2)),
        y_perm,
        tuple(sizes[c] for c in y_order),
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


@torch.compiler.assume_constant_result
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
        C_\text{two} = ρ_2 \big[\text{flops}(S_P) + \text{flops}(S_Q) + 2|x ∪ S_P| + 2|t ∪ S_Q|\big],

    and ``C_einsum = ρ_e · flops(x, G_1..G_K → y)`` (×4/3 when it must recompute in backward),
    where ``|·|`` is the product of the sizes of the indices involved and ``ρ`` are measured
    efficiency penalties (:data:`TWO_STAGE_PENALTY`, :data:`EINSUM_PENALTY`). The two-stage
    split ``P | Q`` of the factors is the cheapest over all bipartitions. Plans are cached per
    ``(format, shapes, ranks, batch bucket)``.
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


@torch.compiler.assume_constant_result
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
            (t.p_factors, t.q_factors, t.p_steps, t.q_steps, t.x_perm, t.sizes, t.y_perm, t.y_modes),
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


def _is_identity(perm: tuple[int, ...]) -> bool:
    return perm == tuple(range(len(perm)))


class _TwoStageProduct(torch.autograd.Function):
    """The two GEMMs of :class:`TwoStage`.

    Only ``x`` and the two super-factors are kept for backward; the waist ``t`` is recomputed
    (one stage-1 product), so the batch-dependent memory saved equals dense ``nn.Linear``'s.
    """

    @staticmethod
    def forward(ctx, xm: Tensor, spm: Tensor, sqm: Tensor, batch: int, sizes: tuple[int, int, int, int, int]) -> Tensor:
        t = _waist(xm @ spm, batch, sizes)  # (B·X2, X1) @ (X1, O1·K) -> (B·O1, X2·K)
        ctx.meta = (batch, sizes)
        ctx.save_for_backward(xm, spm, sqm)
        return t @ sqm  # (B·O1, X2·K) @ (X2·K, O2) -> (B·O1, O2)

    @staticmethod
    def backward(ctx, gy: Tensor):
        xm, spm, sqm = ctx.saved_tensors
        batch, sizes = ctx.meta
        _, n_x2, n_o1, n_k, _ = sizes
        t = _waist(xm @ spm, batch, sizes)  # recomputed rather than kept
        gsq = t.T @ gy if ctx.needs_input_grad[2] else None  # (X2·K, O2)
        gt = gy @ sqm.T  # (B·O1, X2·K)
        if n_x2 > 1 and n_o1 > 1:
            gt = gt.reshape(batch, n_o1, n_x2, n_k).transpose(1, 2)
        gt = gt.reshape(batch * n_x2, n_o1 * n_k)  # (B·X2, O1·K)
        gsp = xm.T @ gt if ctx.needs_input_grad[1] else None  # (X1, O1·K)
        gx = gt @ spm.T if ctx.needs_input_grad[0] else None  # (B·X2, X1)
        return gx, gsp, gsq, None, None


def _waist(t: Tensor, batch: int, sizes: tuple[int, int, int, int, int]) -> Tensor:
    """``(B·X2, O1·K) -> (B·O1, X2·K)``: the one transpose between the two GEMMs."""
    _, n_x2, n_o1, n_k, _ = sizes
    if n_x2 == 1 or n_o1 == 1:
        return t.reshape(batch * n_o1, n_x2 * n_k)
    return t.reshape(batch, n_x2, n_o1, n_k).transpose(1, 2).reshape(batch * n_o1, n_x2 * n_k)


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
        p, q, p_steps, q_steps, x_perm, sizes, y_perm, y_modes = payload
        sp = run_steps(p_steps, [factors[f] for f in p])  # (X1, O1, K) super-factor of group P
        sq = run_steps(q_steps, [factors[f] for f in q])  # (X2, K, O2) super-factor of group Q
        n_x1, n_x2, n_o1, n_k, n_o2 = sizes
        xm = xt if _is_identity(x_perm) else xt.permute(x_perm)  # (B, X2 modes, X1 modes)
        y = _TwoStageProduct.apply(
            xm.reshape(batch * n_x2, n_x1),
            sp.reshape(n_x1, n_o1 * n_k),
            sq.reshape(n_x2 * n_k, n_o2),
            int(batch),
            sizes,
        )  # (B·O1, O2)
        y = y.reshape(batch, *y_modes)
        y = y if _is_identity(y_perm) else y.permute(y_perm)  # (B, m_1, ..., m_d)
    else:
        steps, recompute = payload
        if recompute and torch.is_grad_enabled():
            y = torch.utils.checkpoint.checkpoint(_einsum_all, steps, xt, *factors, use_reentrant=False)
        else:
            y = _einsum_all(steps, xt, *factors)  # (B, m_1, ..., m_d)
    return y.reshape(batch, math.prod(out_shape))
