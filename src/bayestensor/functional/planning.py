"""Planned tensor-network contractions: an ``opt_einsum`` path stored as pairwise einsum steps.

A contraction is planned once per (network, batch bucket) with ``opt_einsum``'s dynamic
programming optimiser and stored as a tuple of pairwise steps; executing it is a loop with no
path search. A pairwise step that is a matrix product (every index of its operands is kept or
contracted between them) runs as one ``mm`` / ``bmm`` between permuted views, with the
permutations worked out at planning time (:class:`Gemm`), and one that contracts nothing as a
broadcast multiply (:class:`Product`). ``torch.einsum`` does the same per call after parsing its
equation, which on the small tensors of a factorized layer costs more than the product itself
(``benchmarks/linear_ab.py`` times the two side by side). Other steps call ``torch.einsum``.
Planners that callers run inside a forward are wrapped in
:func:`~.constant.assume_constant_result`, so under ``torch.compile`` the plan is a constant and
the traced graph holds only the steps' tensor operations.
"""

from __future__ import annotations

import collections
import math
import random
import string
from collections.abc import Sequence
from typing import NamedTuple

import opt_einsum
import torch
from torch import Tensor

from ..formats import Network

#: Index letter reserved for the (flattened) batch dimension.
BATCH = "b"
#: Cost, in FLOPs, of moving one element through memory: a permute copy, or an intermediate written by one
#: pairwise step and read back by the next (memory bound; measured on 2 CPU cores).
MOVE_FLOPS = 64.0
#: Most terms for which a streamed contraction's path search also tries outer products of factors: that
#: search grows exponentially (here 0.13 s for 10 terms, 3 s for 12, 36 s for 14).
OUTER_SEARCH_MAX_TERMS = 10
#: Most terms planned by dynamic programming. Its search enumerates the network's connected subsets, all
#: ``2^n`` of them for a star (a Tucker core with its factors, CP's shared rank): 0.17 s for 11 terms, 1.9 s
#: for 13, 29 s for 15 here, paid again for every new set of ranks that pruning leaves. Larger networks
#: take the best of :data:`RANDOM_GREEDY_TRIALS` seeded greedy trials, which found dp's FLOP count for
#: every star of 11-14 terms tried, in 0.2-0.3 s.
DP_MAX_TERMS = 12
RANDOM_GREEDY_TRIALS = 128


class Gemm(NamedTuple):
    """A pairwise step as one matrix product: ``A`` permuted to ``(batch, left, k)``, ``B`` to ``(batch, k, right)``.

    ``nb``, ``nl`` and ``nk`` count the batch, left and contracted indices; ``out_perm`` takes
    ``(batch, left, right)`` to the step's result order (``None``: already in it). A permuted
    operand reshapes to its matrix as a view when its batch indices lead and each other group's
    indices are stored in order, in either order of the two groups (``A`` stored ``(k, left)`` is
    read transposed, in place).
    """

    perm_a: tuple[int, ...]
    perm_b: tuple[int, ...]
    nb: int
    nl: int
    nk: int
    out_perm: tuple[int, ...] | None


class Product(NamedTuple):
    """A pairwise step that contracts nothing, as a broadcast multiply.

    Both operands are permuted into the result's order, size-1 dims are inserted where the other
    operand's indices go (``unsqueeze_a``, ``unsqueeze_b``, in order), and they are multiplied.
    """

    perm_a: tuple[int, ...]
    unsqueeze_a: tuple[int, ...]
    perm_b: tuple[int, ...]
    unsqueeze_b: tuple[int, ...]


class Step(NamedTuple):
    """One planned step of :func:`run_steps`.

    Its operands' positions in the current list (in argument order), its einsum equation, per
    operand the size-1 dims squeezed out first, and how it runs (:func:`gemm_of`): as a
    :class:`Gemm`, a :class:`Product`, or (``None``) by ``torch.einsum``.
    """

    inds: tuple[int, ...]
    eq: str
    squeeze: tuple[tuple[int, ...], ...]
    gemm: Gemm | Product | None


#: Planned pairwise steps (:class:`Step`).
Steps = tuple[Step, ...]


def gemm_of(eq: str, operand_order: bool = False) -> Gemm | Product | None:
    """The :class:`Gemm` of a two-operand einsum ``eq``, its :class:`Product` when it contracts no index, or ``None``.

    ``None``: an index repeated within an operand (a diagonal) or one that only one operand has and
    the result drops (a sum of its own). The batch, left and right indices are taken in the
    result's order, as ``torch.einsum`` does, so the product lays its result out as einsum would;
    with ``operand_order``, the left and right indices are taken in their operand's order instead,
    so that each operand, stored in groups, enters the product as a view and only the result is
    permuted.
    A step that contracts nothing (CP's Khatri–Rao products, where the rank index is a batch index
    of thousands of tiny matrices) is a broadcast multiply, not a ``bmm`` with an inner size of 1.
    """
    inputs, result = eq.split("->")
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    a, b = terms
    if len(set(a)) != len(a) or len(set(b)) != len(b) or len(set(result)) != len(result):
        return None
    if any(c not in result and not (c in a and c in b) for c in a + b):
        return None
    batch = [c for c in result if c in a and c in b]
    contracted = [c for c in a if c in b and c not in result]
    left = [c for c in (a if operand_order else result) if c in result and c not in b]
    right = [c for c in (b if operand_order else result) if c in result and c not in a]
    if not contracted:
        return Product(
            perm_a=tuple(a.index(c) for c in result if c in a),
            unsqueeze_a=tuple(i for i, c in enumerate(result) if c not in a),
            perm_b=tuple(b.index(c) for c in result if c in b),
            unsqueeze_b=tuple(i for i, c in enumerate(result) if c not in b),
        )
    mid = batch + left + right
    out_perm = tuple(mid.index(c) for c in result)
    return Gemm(
        perm_a=tuple(a.index(c) for c in batch + left + contracted),
        perm_b=tuple(b.index(c) for c in batch + contracted + right),
        nb=len(batch),
        nl=len(left),
        nk=len(contracted),
        out_perm=None if out_perm == tuple(range(len(mid))) else out_perm,
    )


def run_gemm(g: Gemm | Product, a: Tensor, b: Tensor) -> Tensor:
    """Execute a :class:`Gemm` (its equation's ``torch.einsum`` as one ``mm`` / ``bmm``) or a :class:`Product`."""
    a, b = a.permute(g.perm_a), b.permute(g.perm_b)
    if isinstance(g, Product):  # both in the result's index order
        for dim in g.unsqueeze_a:
            a = a.unsqueeze(dim)
        for dim in g.unsqueeze_b:
            b = b.unsqueeze(dim)
        return a * b
    # a: (batch…, left…, k…), b: (batch…, k…, right…)
    bs, ls, ks = a.shape[: g.nb], a.shape[g.nb : g.nb + g.nl], a.shape[g.nb + g.nl :]
    rs = b.shape[g.nb + g.nk :]
    nl, nk, nr = math.prod(ls), math.prod(ks), math.prod(rs)
    if g.nb:
        y = torch.bmm(a.reshape(-1, nl, nk), b.reshape(-1, nk, nr))  # (batch, left, right)
    else:
        y = torch.mm(a.reshape(nl, nk), b.reshape(nk, nr))  # (left, right)
    y = y.reshape((*bs, *ls, *rs))
    return y if g.out_perm is None else y.permute(g.out_perm)


def batch_bucket(batch: int) -> int:
    """Round a batch size up to a power of two, so plans are shared across nearby sizes."""
    return 1 << max(0, int(batch) - 1).bit_length()


def index_symbols(names: Sequence[str], reserved: str = BATCH) -> dict[str, str]:
    """Map index names (sorted) to distinct einsum letters, skipping the ``reserved`` ones."""
    letters = [c for c in string.ascii_letters if c not in reserved]
    if len(names) > len(letters):
        raise ValueError(f"network with {len(names)} indices is too large to contract with einsum")
    return dict(zip(sorted(names), letters, strict=False))


def _breaks(step: Gemm | Product | None, rows: int) -> int:
    """Breaks in memory order within the row and the column group of ``step``'s result as its product lays it out.

    ``0``: the result reshapes to its ``(rows, cols)`` matrix as a view, plain or transposed.
    """
    if not isinstance(step, Gemm) or step.out_perm is None:
        return 0
    pos = step.out_perm  # output index j lies at position pos[j] of the product's layout
    return sum(pos[j + 1] != pos[j] + 1 for j in range(len(pos) - 1) if j + 1 != rows)


def plan_contraction(
    inputs: Sequence[str],
    output: str,
    sizes: dict[str, int],
    *,
    streamed: bool = False,
    chain_order: bool = False,
    matrix_rows: int = 0,
) -> tuple[Steps, float, list[tuple[str, ...]]]:
    """Plan an einsum with opt_einsum's ``dp`` optimiser (seeded random-greedy trials beyond :data:`DP_MAX_TERMS`).

    By default the path minimises FLOPs. A ``streamed`` contraction carries a batch through its
    steps (``x`` through a layer's factors), and there each batch-sized intermediate written and
    read back costs more than the few FLOPs per element of the small products between them: its
    path minimises ``Σ_steps (multiply-adds + μ/2 · elements written)`` (opt_einsum's ``combo``
    objective; ``μ`` is :data:`MOVE_FLOPS`, and opt_einsum counts a multiply-add as one), and with
    at most :data:`OUTER_SEARCH_MAX_TERMS` terms factors may first meet by outer products, into
    Kronecker super-factors that take the batch through several modes in one step. A Tucker
    layer of 1024 × 1024 with four modes a side, planned by FLOPs, ran nine batch-sized steps, each
    a matrix product with an inner dimension of 3-8 plus a permute copy; so planned it runs five.

    opt_einsum chooses the pairwise order; the index order of every intermediate is ours: the
    output's indices first, in output order, then the others by first appearance. Mode indices
    thus stay grouped as in the result, so the final permute into the output layout moves a few
    long contiguous runs instead of interleaved ``(m_k, n_k)`` pairs, 4-5x faster for a 1024 × 1024
    TTM weight (``benchmarks/linear_ab.py``).

    With ``chain_order`` every intermediate instead keeps its shared (batch) indices first and then
    the others in their order of first appearance in ``inputs``, and the operand holding the first
    of those goes left; each step's left and right indices keep their operand's order
    (:func:`gemm_of`'s ``operand_order``). Along a chain (TT, TTM) each operand is then already
    stored as its product reads it, plain or transposed, and the product writes the next
    intermediate in its own order: no step copies, forward or backward. The last step's operands
    are ordered so that ``output``, read as a matrix of its first ``matrix_rows`` indices against
    the rest, is a view of the product, plain or transposed, where one order allows it. That
    suits small networks of factors whose result is used as a matrix: a two-stage product's
    super-factors, which the layer's own products then read in place (``two_stage``). There the
    per-step copies cost more than the products: planned so, a TT rank-16 layer of 1024 × 1024
    copies nothing in its fwd+bwd (16 copies before) and took 0.74× the time, 0.83× without the
    input's gradient (``benchmarks/linear_ab.py``).

    Returns the pairwise steps (the positions of the step's operands in the current operand
    list, in argument order, the step's equation and the size-1 dims squeezed out of each operand
    first; see :func:`run_steps`), the planned FLOP count, and the input terms of every step.
    """
    if not 0 <= matrix_rows <= len(output):
        raise ValueError(
            f"matrix_rows must be between 0 and the {len(output)} indices of output {output!r}; got {matrix_rows}"
        )
    if len(inputs) == 1:
        step = Step((0,), f"{inputs[0]}->{output}", ((),), None)
        return (step,), float(math.prod(sizes[c] for c in inputs[0])), [(inputs[0],)]
    # A size-1 index of one term only (a TT core's boundary rank) is squeezed out of its operand by the step
    # that takes it. opt_einsum would sum it out in a step of its own (a further einsum call and autograd
    # node), and torch.einsum, given it, lays the step's result out with it in the middle, whose copy into
    # the next layout (the reconstructed W, its gradient) made a TTM rank-4 reconstruction's fwd+bwd take
    # 1.33x as long (benchmarks/linear_ab.py).
    seen = collections.Counter(c for term in inputs for c in set(term))
    lone = {c for c, n in seen.items() if n == 1 and sizes[c] == 1 and c not in output}
    lone -= {c for t in inputs if set(t) <= lone for c in t}  # a term of lone indices only keeps them

    def strip(term: str) -> str:
        return "".join(c for c in term if c not in lone)

    eq = ",".join(map(strip, inputs)) + "->" + output
    shapes = [tuple(sizes[c] for c in strip(t)) for t in inputs]
    if len(inputs) <= 2:
        optimize = "optimal"
    elif streamed and len(inputs) <= OUTER_SEARCH_MAX_TERMS:
        optimize = opt_einsum.DynamicProgramming(minimize=f"combo-{MOVE_FLOPS / 2:g}", search_outer=True)
    elif len(inputs) <= DP_MAX_TERMS:
        optimize = "dp"
    else:
        optimize = opt_einsum.RandomGreedy(max_repeats=RANDOM_GREEDY_TRIALS)
    held = random.getstate()  # opt_einsum's greedy trials seed Python's global generator (trial k: seed k)
    try:
        _, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)
    finally:
        random.setstate(held)
    rank = {c: k for k, c in enumerate(dict.fromkeys(output + "".join(inputs)))}
    appearance = {c: k for k, c in enumerate(dict.fromkeys("".join(inputs)))}
    current, steps, terms = list(inputs), [], []
    for k, contraction in enumerate(info.contraction_list):
        inds = tuple(contraction[0])
        popped = [current.pop(i) for i in inds]
        last = k == len(info.contraction_list) - 1
        keep = set(output).union(*current)
        kept = {c for t in popped for c in t if c in keep}
        shared = {c for c in kept if all(c in t for t in popped)}
        # a chain_order product (it contracts an index): its batch indices lead (bmm), then first appearance
        reorder = chain_order and not last and len(popped) == 2 and any(c in popped[1] for c in set(popped[0]) - kept)
        if last:
            result = output
        elif reorder:
            result = "".join(sorted(kept, key=lambda c: (c not in shared, appearance[c])))
        else:
            result = "".join(sorted(kept, key=rank.__getitem__))
        own = [c for c in result if c not in shared]
        if reorder and own and own[0] in popped[1]:  # the operand holding the first unshared index goes left
            inds, popped = inds[::-1], popped[::-1]
        elif chain_order and last and len(popped) == 2:
            # the operand order whose product lays ``output`` out as its (matrix_rows, ·) matrix, plain
            # or transposed, if either does: the caller then reads it in place
            breaks = [
                _breaks(gemm_of(",".join(map(strip, pair)) + "->" + result, True), matrix_rows)
                for pair in (popped, popped[::-1])
            ]
            if breaks[1] < breaks[0]:
                inds, popped = inds[::-1], popped[::-1]
        elif not reorder and len(popped) == 2 and result and result[-1] in popped[0] and result[-1] not in popped[1]:
            # the operand carrying the innermost result index goes right, so that torch.einsum's
            # GEMM writes that index contiguously and the final permute keeps it innermost
            inds, popped = inds[::-1], popped[::-1]
        squeeze = tuple(tuple(i for i, c in enumerate(t) if c in lone) for t in popped)
        step_eq = ",".join(map(strip, popped)) + "->" + result
        steps.append(Step(inds, step_eq, squeeze, gemm_of(step_eq, operand_order=chain_order)))
        terms.append(tuple(popped))
        current.append(result)
    return tuple(steps), float(info.opt_cost), terms


def run_steps(steps: Steps, operands: Sequence[Tensor]) -> Tensor:
    """Execute planned pairwise steps (:class:`Step`).

    Each step names the positions of its operands in the current list, in argument order (they
    are removed and the step's result is appended), its equation, per operand the size-1 dims to
    squeeze out before it (see :func:`plan_contraction`), and its :class:`Gemm` or :class:`Product`.
    """
    ops = list(operands)
    for inds, eq, squeeze, gemm in steps:
        args = [ops[i].squeeze(dims) if dims else ops[i] for i, dims in zip(inds, squeeze, strict=True)]
        for i in sorted(inds, reverse=True):
            del ops[i]
        ops.append(torch.einsum(eq, *args) if gemm is None else run_gemm(gemm, *args))
    return ops[0]


def linear_terms(network: Network) -> tuple[dict[str, str], list[str], str, str, str]:
    """Einsum letters of a network's indices, its factor terms, and the ``x``, output and input mode terms."""
    sym = index_symbols(list(network.sizes))
    factors = ["".join(sym[i] for i in idx) for idx in network.factor_indices]
    in_modes = "".join(sym[i] for i in network.in_indices)
    out_modes = "".join(sym[i] for i in network.out_indices)
    return sym, factors, BATCH + in_modes, out_modes, in_modes
