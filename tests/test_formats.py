"""Format battery: every registered format against TensorLy, counts, validators, rank groups, init."""

import math
import re

import numpy as np
import pytest
import torch

import bayestensor as bt
from _copies import CopyCount
from _oracle import ORACLES, tensorly_full
from bayestensor.formats import TensorFormat, get_format
from bayestensor.functional import plan_contraction, reconstruct_matrix, run_steps, squared_norm
from bayestensor.functional.planning import gemm_of, linear_terms, run_gemm
from bayestensor.functional.reconstruction import reconstruction
from bayestensor.tensors import POSTERIORS
from bayestensor.tensors.posteriors import SVI_INIT_SCALE

# (out_shape, in_shape, max_rank) cases; paired formats (TTM) use only equal-length cases
CASES = [((2, 3, 4), (3, 2, 2), 3), ((4, 4), (2, 5), 2), ((5,), (3,), 2), ((2, 3), (4, 1), [1, 2])]


def cases_for(name):
    fmt = get_format(name)
    out = []
    for out_s, in_s, rank in CASES:
        if fmt.paired_modes and len(out_s) != len(in_s):
            continue
        if not isinstance(rank, int) and len(rank) != fmt.num_bonds(out_s, in_s):
            rank = rank[0]
        out.append((out_s, in_s, rank))
    return out


ALL = [(name, *case) for name in bt.available_formats() for case in cases_for(name)]


def random_factors(fmt, out_s, in_s, rank):
    ranks = fmt.resolve_ranks(rank, out_s, in_s)
    return ranks, [torch.randn(s, dtype=torch.float64) for s in fmt.factor_shapes(out_s, in_s, ranks)]


def test_every_registered_format_has_an_oracle_row_and_cases():
    assert set(bt.available_formats()) == set(ORACLES)
    assert all(cases_for(name) for name in bt.available_formats())


@pytest.mark.parametrize("name,out_s,in_s,rank", ALL)
def test_reconstruction_matches_tensorly(name, out_s, in_s, rank):
    fmt = get_format(name)
    ranks, factors = random_factors(fmt, out_s, in_s, rank)
    ours = reconstruct_matrix(name, factors, out_s, in_s, tuple(ranks))
    theirs = torch.from_numpy(tensorly_full(name, factors)).reshape(math.prod(out_s), math.prod(in_s))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,out_s,in_s,rank", ALL)
def test_param_count_and_rank_groups(name, out_s, in_s, rank):
    fmt = get_format(name)
    ranks, factors = random_factors(fmt, out_s, in_s, rank)
    assert fmt.n_params(out_s, in_s, ranks) == sum(f.numel() for f in factors)
    assert fmt.validate(factors, out_s, in_s) == ranks
    groups = fmt.rank_groups(out_s, in_s, ranks)
    assert [g.bond for g in groups] == list(range(len(ranks)))
    for g in groups:
        assert g.members, "every bond governs at least one factor slice"
        for f, axis in g.members:
            assert factors[f].shape[axis] == ranks[g.bond]


def test_rank_groups_follow_the_papers_structure():
    shape = ((2, 3), (4, 5))
    assert get_format("cp").rank_groups(*shape, [3])[0].members == ((0, 1), (1, 1), (2, 1), (3, 1))
    tucker = get_format("tucker").rank_groups(*shape, [2, 2, 2, 2])
    assert [g.members for g in tucker] == [((0, n), (n + 1, 1)) for n in range(4)]  # core slice + factor column
    tt = get_format("tt").rank_groups(*shape, [2, 3, 2])
    assert [g.members for g in tt] == [((k, 2), (k + 1, 0)) for k in range(3)]  # right of core k, left of k+1
    ttm = get_format("ttm").rank_groups(*shape, [3])
    assert ttm[0].members == ((0, 3), (1, 0))


def test_validate_names_the_offending_factor_and_both_ranks():
    fmt = get_format("tt")
    cores = [torch.zeros(1, 2, 3), torch.zeros(4, 3, 2), torch.zeros(2, 5, 1)]
    with pytest.raises(ValueError, match=r"rank 3 in factor 0 .*rank 4 in factor 1"):
        fmt.validate(cores, (2, 3), (5,))
    with pytest.raises(ValueError, match="factor 2 .* expected 1"):
        fmt.validate([torch.zeros(1, 2, 3), torch.zeros(3, 3, 2), torch.zeros(2, 5, 2)], (2, 3), (5,))
    with pytest.raises(ValueError, match="expects 3 factors, got 2"):
        fmt.validate(cores[:2], (2, 3), (5,))


def test_rank_errors_and_clipping():
    fmt = get_format("tt")
    with pytest.raises(ValueError, match=">= 1"):
        fmt.resolve_ranks(0, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="3 bond\\(s\\), so max_rank needs 3 entries; got 2"):
        fmt.resolve_ranks([2, 2], (2, 2), (2, 2))
    assert fmt.resolve_ranks(100, (2, 2), (2, 2)) == [2, 4, 2]  # clipped to the full TT ranks
    with pytest.raises(ValueError, match="unknown tensor format 'tensor-ring'"):
        get_format("tensor-ring")
    with pytest.raises(ValueError, match="same length"):
        get_format("ttm").check_shapes((2, 2), (4,))


@pytest.mark.parametrize("name", bt.available_formats())
def test_integer_like_ranks_are_taken_and_anything_else_is_named(name):
    fmt = get_format(name)
    out_s, in_s = (3, 4, 5), (4, 3, 2)
    n = fmt.num_bonds(out_s, in_s)
    want = fmt.resolve_ranks(2, out_s, in_s)
    for rank in (np.int64(2), torch.tensor(2), [np.int64(2)] * n, np.full(n, 2), torch.full((n,), 2)):
        assert fmt.resolve_ranks(rank, out_s, in_s) == want, rank
    # a string would iterate by character, a float be truncated: both are refused, naming the value and its type
    for rank, shown in (("12", "'12' (str)"), (2.0, "2.0 (float)"), (True, "True (bool)"), ([2.5] * n, "(list)")):
        with pytest.raises(ValueError, match=rf"max_rank must be an int or a sequence of ints.*{re.escape(shown)}"):
            fmt.resolve_ranks(rank, out_s, in_s)


def test_registry_rejects_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        type("Dup", (TensorFormat,), {}, name="tt")


@pytest.mark.parametrize("name", bt.available_formats())
@pytest.mark.parametrize("num_modes", [2, 3, 4])
def test_init_std_of_reconstruction_does_not_explode_or_vanish(name, num_modes):
    """Mean over 40 seeds of the empirical variance of W is within 40% of the target (random-init truth)."""
    fmt = get_format(name)
    out_s, in_s = (4,) * num_modes, (3,) * num_modes
    target = 0.05
    ranks = fmt.resolve_ranks(4, out_s, in_s)
    variances = []
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        stds = fmt.factor_stds(target, out_s, in_s, ranks)
        fs = [
            torch.randn(s, generator=gen, dtype=torch.float64) * sd
            for s, sd in zip(fmt.factor_shapes(out_s, in_s, ranks), stds, strict=True)
        ]
        variances.append(reconstruct_matrix(name, fs, out_s, in_s, tuple(ranks)).pow(2).mean())
    ratio = (torch.stack(variances).mean() / target**2).item()
    assert 0.6 < ratio < 1.4, ratio


@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("built", ["from_dense", "constructor"])
@pytest.mark.parametrize("name", bt.available_formats())
@pytest.mark.parametrize("num_modes", [2, 3])
def test_a_fresh_tree_format_weight_has_isometric_frames_and_the_target_std(name, num_modes, built, method):
    """``init="frames"``: non-root factors of a tree network are isometries along their bond to the root (not CP).

    The root then carries the weight's whole norm, as the centre core of a TT-SVD or a HOSVD's core does.
    Both ways in: ``from_dense(..., init="frames")`` and the layer's own ``init="frames"``.
    """
    fmt = get_format(name)
    out_s, in_s = (4,) * num_modes, (3,) * num_modes
    ranks = fmt.resolve_ranks(5, out_s, in_s)
    network = fmt.network(out_s, in_s, ranks)
    frames = network.isometry_frames()
    joins = [sum(b in idx for idx in network.factor_indices) for b in network.bond_indices]
    assert (frames is None) == any(j != 2 for j in joins)  # CP's rank index is a hyper-edge
    torch.manual_seed(0)
    dense = torch.nn.Linear(3**num_modes, 4**num_modes)
    kw = {"format": name, "max_rank": 5, "in_shape": in_s, "out_shape": out_s, "init": "frames", "method": method}
    if built == "from_dense":
        layer, std = bt.TensorizedLinear.from_dense(dense, **kw), float(dense.weight.std())  # the dense init std
    else:
        layer, std = bt.TensorizedLinear(3**num_modes, 4**num_modes, init_std=0.05, **kw), 0.05
    t = layer.weight
    assert t.ranks == ranks
    assert t.weight_rms() == pytest.approx(std, rel=1e-5)
    energy, count = t.flat_rank_statistics()  # lambda starts at its closed-form value for these factors
    torch.testing.assert_close(torch.cat(t.rank_variances()), t.prior.map_update(energy, count).to(torch.float32))
    if frames is None:
        return
    raw_scales = getattr(t.posterior, "raw_scales", None)  # a posterior with spread restarts it from each factor
    for f, raw in zip(t.factors, raw_scales or [], strict=raw_scales is not None):
        spread = torch.nn.functional.softplus(raw.detach())
        torch.testing.assert_close(spread, torch.full_like(spread, SVI_INIT_SCALE * float(f.detach().std())))
    root, members = frames
    assert sorted([root, *(f for f, _ in members)]) == list(range(len(t.factors)))  # every other factor once
    for f, axis in members:
        m = t.factors[f].detach().double().movedim(axis, -1)
        m = m.reshape(-1, m.shape[-1])  # (other indices, bond towards the root)
        gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=gram.dtype), atol=1e-6, rtol=0)
    # contracting isometries keeps the norm, so the root carries the whole weight's: ||W||_F = ||root||_F
    sq = squared_norm(name, [f.detach().double() for f in t.factors], out_s, in_s, tuple(ranks))
    assert float(sq) == pytest.approx(float(t.factors[root].detach().double().square().sum()), rel=1e-5)


def test_isometric_frames_spread_a_tt_convolution_spectrum():
    """``init="frames"``: at the 10 % budget a TT conv's (out | kernel, in) unfolding spreads over its directions.

    The effective rank ``(Σσ)² / Σσ²`` of ``init="random"`` (i.i.d. Gaussian cores), averaged over 20 seeds,
    against that of ``init="frames"``: the frames lift it to within 10 % of the bond's rank.
    """

    def effective_rank(w):
        s = torch.linalg.svdvals(w.detach().double())
        return float(s.sum() ** 2 / s.square().sum())

    def start(init, seed):
        torch.manual_seed(seed)
        dense = torch.nn.Conv2d(64, 64, 3, padding=1)
        return bt.TensorizedConv2d.from_dense(dense, format="tt", max_rank=None, init=init).weight  # the 10 % budget

    t = start("frames", 0)
    bond = t.ranks[len(t.out_shape) - 1]  # the bond between the output modes and the kernel mode
    iid = [effective_rank(start("random", seed).to_matrix()) for seed in range(20)]
    ours = effective_rank(t.to_matrix())
    assert ours > 0.9 * bond > sum(iid) / len(iid) + 1, (ours, bond, sum(iid) / len(iid))


@pytest.mark.parametrize("name,out_s,in_s,rank", ALL)
def test_squared_norm_equals_that_of_the_reconstruction(name, out_s, in_s, rank):
    fmt = get_format(name)
    ranks, factors = random_factors(fmt, out_s, in_s, rank)
    full = reconstruct_matrix(name, factors, out_s, in_s, tuple(ranks))
    torch.testing.assert_close(squared_norm(name, factors, out_s, in_s, tuple(ranks)), full.square().sum())


@pytest.mark.parametrize("name,out_s,in_s,rank", ALL)
def test_reconstruction_is_planned_as_pairwise_steps_only_and_differentiates_exactly(name, out_s, in_s, rank):
    # a boundary rank of size 1 (TT, TTM) is squeezed by the step that takes its core, not summed in a step of its own
    fmt = get_format(name)
    ranks, factors = random_factors(fmt, out_s, in_s, rank)
    steps, _ = reconstruction(name, out_s, in_s, tuple(ranks))
    if len(factors) > 1:
        assert len(steps) == len(factors) - 1 and all(len(step.inds) == 2 for step in steps), steps
    leaves = [f.clone().requires_grad_() for f in factors]
    torch.autograd.gradcheck(lambda *fs: run_steps(steps, fs), leaves)


# (terms, output, sizes): plain chain; size-1 boundary indices x, y of one term each; a term of size-1 lone
# indices only (kept, summed on its own); a private index of size 3 (summed, not squeezed); a lone index of
# the output (kept)
PLANS = [
    (["ab", "bc", "cd"], "ad", {"a": 2, "b": 3, "c": 4, "d": 2}),
    (["xab", "bcy", "cd"], "ad", {"x": 1, "y": 1, "a": 2, "b": 3, "c": 4, "d": 2}),
    (["x", "ab", "bc"], "ac", {"x": 1, "a": 2, "b": 3, "c": 4}),
    (["zab", "bc", "cd"], "ad", {"z": 3, "a": 2, "b": 3, "c": 4, "d": 2}),
    (["xab", "bc"], "xac", {"x": 1, "a": 2, "b": 3, "c": 4}),
    (["aj", "cj", "dj"], "dacj", {"a": 2, "c": 3, "d": 4, "j": 5}),  # CP's Khatri-Rao: products, no contraction
    (["jab", "jbc"], "cja", {"j": 3, "a": 2, "b": 4, "c": 5}),  # a batch index and a permuted result
]

# two-operand equations: (equation, the kind of step it runs as)
PAIRS = [
    ("ab,bc->ac", "Gemm"),
    ("abk,kcd->dbca", "Gemm"),
    ("jab,jbc->cja", "Gemm"),
    ("mn,lifn->ifml", "Gemm"),
    ("kl,kl->", "Gemm"),
    ("aj,cj->acj", "Product"),
    ("acj,dj->jdca", "Product"),
    ("ab,cd->dcba", "Product"),
    ("kla,kmb->lbam", "Gemm"),  # groups stored in orders other than the result's
    ("jkla,jmk->jmal", "Gemm"),
    ("aab,bc->ac", None),  # a diagonal
    ("ab,bc->c", None),  # a summed out on its own
]


@pytest.mark.parametrize("operand_order", [False, True])
@pytest.mark.parametrize("eq,kind", PAIRS)
def test_pairwise_step_runs_as_its_gemm_or_product_and_equals_einsum(eq, kind, operand_order):
    step = gemm_of(eq, operand_order)
    assert (type(step).__name__ if step is not None else None) == kind
    if step is None:
        return
    torch.manual_seed(0)
    size = {c: 2 + i for i, c in enumerate(sorted(set(eq) - set(",->")))}
    terms = eq.split("->")[0].split(",")
    a, b = (torch.randn([size[c] for c in t], dtype=torch.float64, requires_grad=True) for t in terms)
    torch.testing.assert_close(run_gemm(step, a, b), torch.einsum(eq, a, b), rtol=1e-12, atol=1e-12)
    torch.autograd.gradcheck(lambda a, b: run_gemm(step, a, b), (a, b))


@pytest.mark.parametrize("chain_order", [False, True])
@pytest.mark.parametrize("terms,output,sizes", PLANS)
def test_planned_contraction_equals_einsum_in_value_and_gradient(terms, output, sizes, chain_order):
    torch.manual_seed(0)
    ops = [torch.randn([sizes[c] for c in t], dtype=torch.float64, requires_grad=True) for t in terms]
    rows = len(output) // 2 if chain_order else 0
    steps, _, _ = plan_contraction(terms, output, sizes, chain_order=chain_order, matrix_rows=rows)
    lone = [c for c in sizes if sizes[c] == 1 and c not in output and sum(c in t for t in terms) == 1]
    if any(c in t and set(t) - set(lone) for c in lone for t in terms):  # squeezed, not summed on its own
        assert len(steps) == len(terms) - 1
    expected = torch.einsum(",".join(terms) + "->" + output, *ops)
    torch.testing.assert_close(run_steps(steps, ops), expected, rtol=1e-12, atol=1e-12)
    torch.autograd.gradcheck(lambda *xs: run_steps(steps, xs), ops)


@pytest.mark.parametrize("name", bt.available_formats())
def test_chain_ordered_networks_equal_einsum_in_value_and_gradient(name):
    """Every format's network contracted in chain order (as two-stage super-factors are) equals einsum."""
    fmt = get_format(name)
    out_s, in_s = (2, 3, 2), (3, 2, 2)
    network = fmt.network(out_s, in_s, fmt.resolve_ranks(3, out_s, in_s))
    sym, terms, _, out_modes, in_modes = linear_terms(network)
    sizes = {sym[k]: v for k, v in network.sizes.items()}
    torch.manual_seed(0)
    ops = [torch.randn([sizes[c] for c in t], dtype=torch.float64, requires_grad=True) for t in terms]
    out = out_modes + in_modes
    steps, _, _ = plan_contraction(terms, out, sizes, chain_order=True, matrix_rows=len(out_modes))
    expected = torch.einsum(",".join(terms) + "->" + out, *ops)
    torch.testing.assert_close(run_steps(steps, ops), expected, rtol=1e-12, atol=1e-12)
    torch.autograd.gradcheck(lambda *xs: run_steps(steps, xs), ops)


def test_a_chain_ordered_tt_chain_copies_nothing_forward_or_backward():
    """TT cores ``(r, n, r')`` (the last with its boundary rank of 1) into an ``(n_1..n_4, r_0)`` matrix.

    In chain order every step reads its operands in place and the product lays the result out as
    the matrix transposed, so neither the contraction nor its backward copies anything.
    """
    terms, output = ["odp", "peq", "qfr", "rgz"], "defgo"
    sizes = {"o": 3, "d": 2, "e": 3, "f": 2, "g": 3, "p": 4, "q": 3, "r": 2, "z": 1}
    torch.manual_seed(0)
    ops = [torch.randn([sizes[c] for c in t], dtype=torch.float64, requires_grad=True) for t in terms]
    expected = torch.einsum(",".join(terms) + "->" + output, *ops).reshape(36, 3)
    copies = {}
    for chain_order in (False, True):
        steps, _, _ = plan_contraction(terms, output, sizes, chain_order=chain_order, matrix_rows=4)
        with CopyCount() as count:
            m = run_steps(steps, ops).reshape(36, 3)  # (n_1..n_4, r_0)
            m.backward(torch.randn(3, 36, dtype=torch.float64).T)  # a gradient laid out as m
        copies[chain_order] = count.copies
        torch.testing.assert_close(m, expected, rtol=1e-12, atol=1e-12)
    assert copies[True] == 0 < copies[False]


@pytest.mark.parametrize("rows", [-1, 6])
def test_matrix_rows_outside_the_output_is_rejected(rows):
    expected = rf"matrix_rows must be between 0 and the 5 indices of output 'defgo'; got {rows}"
    with pytest.raises(ValueError, match=expected):
        plan_contraction(["odp", "pefg"], "defgo", dict.fromkeys("odpefg", 2), chain_order=True, matrix_rows=rows)
