r"""The plan of a factorized convolution: reconstruct the kernel, or a three-kernel sequence ``P | S | Q``.

:class:`~bayestensor.layers.TensorizedConv2d` stores its kernel as the matrix of a factorized
tensor whose first input mode is the spatial mode ``kh·kw``. Its forward either reconstructs the
kernel or runs a *factorized sequence*: the factors are split into three groups ``P | S | Q``
(``S`` holds the spatial factor), each group is pre-contracted into a super-factor, and

.. math::

    u = x \times_{I} S_P \;(\text{1×1}), \qquad v = u \ast S_S \;(\text{grouped } k_h × k_w),
    \qquad y = v \times S_Q \;(\text{1×1}).

The split and the strategy are chosen by a FLOP + memory-traffic cost model (:func:`conv_plan`)
and cached per ``(format, shapes, ranks, batch bucket, spatial size)``.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

from ..formats import get_format
from .constant import assume_constant_result
from .plan_cache import remember
from .planning import Steps, batch_bucket, index_symbols, plan_contraction

#: Cost, in FLOP equivalents, of reading or writing one activation element (memory-bound steps).
MEMORY_COST = 16.0
#: Relative per-FLOP cost of the three-kernel factorized sequence against one dense convolution.
FACTORIZED_PENALTY = 1.2
#: Splits whose batch-dependent cost is within the best few are planned exactly.
_EXACT_CANDIDATES = 6


class ConvSplit(NamedTuple):
    """One factorized sequence ``P | S | Q`` with its einsum equations (see the module docstring)."""

    p: tuple[int, ...]
    s: tuple[int, ...]
    q: tuple[int, ...]
    eq1: str  # x[, S_P] -> u  ("b I p" -> "b pass grp cin p")
    s_out: str  # S_S layout: grp cout cin s
    eq3: str  # v[, S_Q] -> y  ("b pass grp cout p" -> "b O p")
    sizes: tuple[int, int, int, int]  # |pass|, |grp|, |cout|, |cin|
    v_modes: tuple[int, ...]  # sizes of the pass, grp, cout indices of v
    p_term: str
    q_term: str
    cost: float


class ConvSteps(NamedTuple):
    """The factorized sequence as the forward runs it: groups, their planned steps, equations and sizes."""

    p: tuple[int, ...]
    s: tuple[int, ...]
    q: tuple[int, ...]
    p_steps: Steps
    s_steps: Steps
    q_steps: Steps
    eq1: str
    eq3: str
    sizes: tuple[int, int, int, int]  # |pass|, |grp|, |cout|, |cin|
    v_modes: tuple[int, ...]


_CONV_PLANS: dict[tuple, tuple] = {}


def conv_plan(
    fmt: str,
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    ranks: tuple[int, ...],
    batch: int,
    pixels_in: int,
    pixels_out: int,
) -> tuple[str, dict[str, float], ConvSplit | None]:
    r"""Choose between reconstruction and the cheapest factorized sequence for one convolution.

    ``in_shape[0]`` is the spatial mode ``kh·kw``. With ``B`` the batch bucket, ``P_in`` /
    ``P_out`` the input / output pixels and ``|·|`` the product of index sizes, the costs are

    .. math::

        C_\text{rec} = \text{flops}(W) + 2 B P_\text{out} M N + μ B (P_\text{in} N + P_\text{out} M),

        C_\text{fac} = ρ \big[\textstyle\sum_g \text{flops}(S_g) + 2 B P_\text{in}|x ∪ S_P|
        + 2 B P_\text{out} |\text{pass}||\text{grp}||\text{cin}||\text{cout}| k_h k_w
        + 2 B P_\text{out} |v ∪ S_Q| + μ B (P_\text{in}|u| + P_\text{out}|v|)\big],

    with ``μ`` = :data:`MEMORY_COST` and ``ρ`` = :data:`FACTORIZED_PENALTY`. Returns the chosen
    strategy, the costs and the best split.
    """
    key = (fmt, out_shape, in_shape, ranks, batch_bucket(batch), pixels_in, pixels_out)
    if key in _CONV_PLANS:
        return _CONV_PLANS[key]
    bsz = batch_bucket(batch)
    network = get_format(fmt).network(out_shape, in_shape, ranks)
    sym = index_symbols(list(network.sizes), reserved="bp")  # b: batch, p: pixels
    sizes = {sym[k]: v for k, v in network.sizes.items()}
    terms = ["".join(sym[i] for i in idx) for idx in network.factor_indices]
    s_idx = sym[network.in_indices[0]]
    x_modes = "".join(sym[i] for i in network.in_indices[1:])
    o_modes = "".join(sym[i] for i in network.out_indices)
    size = lambda idx: math.prod(sizes[c] for c in idx)  # noqa: E731
    n_out, n_in, khkw = math.prod(out_shape), math.prod(in_shape[1:]), in_shape[0]
    _, recon_flops, _ = plan_contraction(terms, o_modes + s_idx + x_modes, sizes)
    costs = {
        "reconstruct": recon_flops
        + 2.0 * bsz * pixels_out * n_out * n_in * khkw
        + MEMORY_COST * bsz * (pixels_in * n_in + pixels_out * n_out)
    }
    sf = next(f for f, t in enumerate(terms) if s_idx in t)
    others = [f for f in range(len(terms)) if f != sf]
    candidates = []
    for assign in itertools.product(range(3), repeat=len(others)):
        p = tuple(f for f, a in zip(others, assign, strict=True) if a == 0)
        q = tuple(f for f, a in zip(others, assign, strict=True) if a == 2)
        s = tuple(sorted((sf, *(f for f, a in zip(others, assign, strict=True) if a == 1))))
        idx_p = set("".join(terms[f] for f in p))
        idx_s = set("".join(terms[f] for f in s))
        idx_q = set("".join(terms[f] for f in q))
        later = idx_s | idx_q | set(o_modes)
        u = (set(x_modes) | idx_p) & later
        after_s = idx_q | set(o_modes)
        cin = sorted((u & idx_s) - after_s)
        grp = sorted(u & idx_s & after_s)
        pas = sorted(u - idx_s)
        cout = sorted((idx_s & after_s) - u - {s_idx})
        v = pas + grp + cout
        p_term = "".join(sorted(idx_p & (set(x_modes) | later)))
        q_term = "".join(sorted(idx_q & (set(v) | set(o_modes))))
        step1 = 2.0 * bsz * pixels_in * size(set(x_modes) | set(p_term)) if p else 0.0
        step2 = 2.0 * bsz * pixels_out * size(pas + grp + cout + cin) * khkw
        step3 = 2.0 * bsz * pixels_out * size(set(v) | set(q_term)) if q else 0.0
        traffic = MEMORY_COST * bsz * (pixels_in * (n_in + size(u)) + pixels_out * (size(v) + n_out))
        candidates.append((step1 + step2 + step3 + traffic, p, s, q, pas, grp, cout, cin, p_term, q_term))
    candidates.sort(key=lambda c: c[0])
    best: ConvSplit | None = None
    for cost, p, s, q, pas, grp, cout, cin, p_term, q_term in candidates[:_EXACT_CANDIDATES]:
        s_out = "".join(grp + cout + cin) + s_idx
        pre = sum(plan_contraction([terms[f] for f in g], out, sizes)[1] for g, out in ((p, p_term), (q, q_term)) if g)
        pre += plan_contraction([terms[f] for f in s], s_out, sizes)[1]
        total = (cost + pre) * FACTORIZED_PENALTY
        if best is not None and total >= best.cost:
            continue
        u_out = "b" + "".join(pas + grp + cin) + "p"
        eq1 = f"b{x_modes}p,{p_term}->{u_out}" if p else f"b{x_modes}p->{u_out}"
        v_term = "b" + "".join(pas + grp + cout) + "p"
        eq3 = f"{v_term},{q_term}->b{o_modes}p" if q else f"{v_term}->b{o_modes}p"
        best = ConvSplit(
            p,
            s,
            q,
            eq1,
            s_out,
            eq3,
            (size(pas), size(grp), size(cout), size(cin)),
            tuple(sizes[c] for c in pas + grp + cout),
            p_term,
            q_term,
            total,
        )
    if best is not None:
        costs["factorized"] = best.cost
    result = (min(costs, key=costs.__getitem__), costs, best)
    return remember(_CONV_PLANS, key, result)


@assume_constant_result
def conv_plan_constant(
    fmt: str,
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    ranks: tuple[int, ...],
    batch: int,
    pixels_in: int,
    pixels_out: int,
    strategy: str,
) -> tuple[str, ConvSteps | None]:
    """``("factorized", ConvSteps)`` or ``("reconstruct", None)``: constants usable inside ``torch.compile``."""
    key = (fmt, out_shape, in_shape, ranks, batch_bucket(batch), pixels_in, pixels_out, strategy)
    if key in _CONV_CONSTANTS:
        return _CONV_CONSTANTS[key]
    chosen, _, split = conv_plan(fmt, out_shape, in_shape, ranks, batch, pixels_in, pixels_out)
    if strategy != "auto":
        chosen = strategy
    if chosen == "reconstruct" or split is None:
        result: tuple[str, ConvSteps | None] = ("reconstruct", None)
    else:
        network = get_format(fmt).network(out_shape, in_shape, ranks)
        sym = index_symbols(list(network.sizes), reserved="bp")  # b: batch, p: pixels
        sizes = {sym[k]: v for k, v in network.sizes.items()}
        terms = ["".join(sym[i] for i in idx) for idx in network.factor_indices]

        def planned(group: tuple[int, ...], out: str) -> Steps:
            """A super-factor's steps, planned so that they read their operands in place (chain_order)."""
            return plan_contraction([terms[f] for f in group], out, sizes, chain_order=True)[0]

        p_steps = planned(split.p, split.p_term) if split.p else ()
        q_steps = planned(split.q, split.q_term) if split.q else ()
        s_steps = planned(split.s, split.s_out)
        steps = (split.p, split.s, split.q, p_steps, s_steps, q_steps, split.eq1, split.eq3)
        result = ("factorized", ConvSteps(*steps, split.sizes, split.v_modes))
    return remember(_CONV_CONSTANTS, key, result)


_CONV_CONSTANTS: dict[tuple, tuple[str, ConvSteps | None]] = {}
