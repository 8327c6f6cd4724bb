"""TensorizedLinear against dense truth: every format x strategy, gradients, compile, dtypes, memory, errors."""

import math
import random
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayestensor as bt
from _copies import CopyCount
from bayestensor.functional import linear_plan, plan_contraction, run_steps
from bayestensor.functional.planning import BATCH, MOVE_FLOPS, linear_terms
from bayestensor.layers.linear import STRATEGIES

FORMATS = bt.available_formats()
# (in_features, out_features, in_shape, out_shape): explicit shapes, automatic shapes, and a prime (padded)
SHAPES = [(24, 30, (4, 3, 2), (2, 5, 3)), (64, 256, None, None), (61, 30, None, None)]


def make(fmt, shape, strategy="auto", rank=3, dtype=torch.float64, **kw):
    n_in, n_out, in_s, out_s = shape
    return bt.TensorizedLinear(
        n_in, n_out, format=fmt, max_rank=rank, in_shape=in_s, out_shape=out_s, strategy=strategy, dtype=dtype, **kw
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_forward_equals_dense_linear_of_full_weight(fmt, strategy, shape):
    layer = make(fmt, shape, strategy)
    x = torch.randn(2, 7, shape[0], dtype=torch.float64)
    w = layer.full_weight()
    assert w.shape == (shape[1], shape[0])
    torch.testing.assert_close(layer(x), F.linear(x, w, layer.bias), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["reconstruct", "einsum", "two_stage"])
def test_gradcheck_float64(fmt, strategy):
    layer = make(fmt, (24, 30, (4, 3, 2), (2, 5, 3)), strategy, rank=2)
    x = torch.randn(3, 24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()), fast_mode=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_param_counts(fmt):
    layer = make(fmt, SHAPES[1])
    assert bt.count_params(layer) == sum(f.numel() for f in layer.weight.factors) + 256
    assert bt.dense_params(layer) == 64 * 256 + 256
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(256, 10))
    assert bt.count_params(model) == bt.count_params(layer) + 2570
    assert bt.dense_params(model) == 64 * 256 + 256 + 2570
    svi = make(fmt, SHAPES[1], method="svi")  # variational scales are training state, not stored weights
    assert bt.count_params(svi) == bt.count_params(layer)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_compile_fullgraph(fmt, dynamo_reset):
    layer = make(fmt, SHAPES[2], dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 61)
    y = compiled(x)
    y.square().sum().backward()
    torch.testing.assert_close(y, layer(x))
    assert all(p.grad is not None for p in layer.parameters())


def test_torch_compile_inductor_two_stage(dynamo_reset):
    layer = make("tt", (64, 64, (4, 4, 4), (4, 4, 4)), dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(32, 64)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_matches_float32(fmt):
    layer = make(fmt, SHAPES[1], dtype=torch.float32)
    x = torch.randn(16, 64)
    ref = layer(x)
    low = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()) < 0.05


def saved_bytes_per_batch_row(module, n_in, batch):
    """Bytes autograd saves that scale with the batch (difference between two batch sizes), params excluded."""
    params = {p.data_ptr() for p in module.parameters()}

    def saved(b):
        total = 0

        def pack(t):
            nonlocal total
            if t.data_ptr() not in params:
                total += t.numel() * t.element_size()
            return t

        x = torch.randn(b, n_in, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum()
        return total

    return (saved(2 * batch) - saved(batch)) / batch


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["einsum", "two_stage", "auto"])
def test_activation_memory_not_above_dense(fmt, strategy):
    shape = (256, 256, (4, 4, 4, 4), (4, 4, 4, 4))
    layer = make(fmt, shape, strategy, rank=8, dtype=torch.float32)
    dense = nn.Linear(256, 256)
    assert saved_bytes_per_batch_row(layer, 256, 64) <= saved_bytes_per_batch_row(dense, 256, 64)


def test_cost_model_finds_the_tt_bond_split_and_caches_plans():
    plan = linear_plan("tt", (4, 4, 8, 8), (4, 4, 8, 8), (4, 16, 16, 16, 16, 16, 4), 256)
    assert plan.strategy == "two_stage"
    split = plan.two_stage
    assert split.p_factors == (4, 5, 6, 7) and split.q_factors == (0, 1, 2, 3)  # x·Aᵀ then ·Cᵀ
    assert plan is linear_plan("tt", (4, 4, 8, 8), (4, 4, 8, 8), (4, 16, 16, 16, 16, 16, 4), 200)  # same bucket
    assert plan.costs["two_stage"] < plan.costs["reconstruct"] / 10


def test_padding_is_invisible():
    layer = bt.TensorizedLinear(61, 30, format="tt", max_rank=4, dtype=torch.float64)
    assert math.prod(layer.in_shape) > 61
    assert layer.full_weight().shape == (30, 61)
    assert layer(torch.randn(5, 61, dtype=torch.float64)).shape == (5, 30)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown tensor format 'qtt'"):
        bt.TensorizedLinear(8, 8, format="qtt")
    with pytest.raises(ValueError, match="every rank must be >= 1"):
        bt.TensorizedLinear(8, 8, format="tt", max_rank=0)
    with pytest.raises(ValueError, match="needs 1 entries; got 2"):
        bt.TensorizedLinear(8, 8, format="ttm", max_rank=[2, 2], in_shape=(2, 4), out_shape=(4, 2))
    with pytest.raises(ValueError, match=r"product is at least in_features = 8 .*got \(2, 3\) \(product 6\)"):
        bt.TensorizedLinear(8, 8, in_shape=(2, 3))
    with pytest.raises(ValueError, match="out_features must be a positive int, got 0"):
        bt.TensorizedLinear(8, 0)
    with pytest.raises(ValueError, match="unknown strategy"):
        bt.TensorizedLinear(8, 8, strategy="fast")
    layer = bt.TensorizedLinear(8, 4, format="tt", max_rank=2)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 8\), got \(3, 7\)"):
        layer(torch.randn(3, 7))
    with pytest.raises(ValueError, match="input dtype torch.float64 does not match the layer's dtype torch.float32"):
        layer(torch.randn(3, 8, dtype=torch.float64))
    meta = bt.TensorizedLinear(8, 4, format="tt", max_rank=2, device="meta")
    with pytest.raises(ValueError, match="input is on cpu but the layer is on meta"):
        meta(torch.randn(3, 8))
    factors, ranks = list(layer.weight.factors), tuple(layer.weight.ranks)
    shapes = (layer.out_shape, layer.in_shape)
    with pytest.raises(
        ValueError, match=r"bias must have shape \(4,\), the product of out_shape=\(1, 2, 2\); got \(3,\)"
    ):
        bt.functional.factorized_linear(torch.randn(3, 8), "tt", factors, *shapes, ranks, bias=torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_matches_cpu(fmt):
    layer = make(fmt, SHAPES[1], dtype=torch.float32)
    x = torch.randn(64, 64)
    ref = layer(x)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), ref, rtol=1e-4, atol=1e-5)


# (format, in_shape, out_shape, rank, batch, the stage kinds the cost model picks, whether x is permuted)
TWO_STAGE_VARIANTS = [
    ("ttm", (4, 3, 2), (2, 5, 3), 2, 1, ("bmm", "gemm"), False),
    ("ttm", (2, 8, 4), (8, 2, 4), 2, 16, ("gemm", "bmm"), False),
    ("tt", (4, 3, 2), (2, 5, 3), 2, 1, ("gemm", "gemm"), False),
    ("tucker", (4, 4, 8, 8), (4, 4, 8, 8), 8, 1, ("gemm", "gemm"), True),
]


def _check_against_dense(layer, x):
    """Output against ``F.linear`` of the full weight; gradients by gradcheck or through the reconstruction."""
    torch.testing.assert_close(layer(x), F.linear(x, layer.full_weight(), layer.bias), rtol=1e-10, atol=1e-12)
    if x.shape[-1] <= 64:
        assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()), fast_mode=True)
        return
    _check_grads_against_dense(layer, x, lambda y: y.square().sum().backward())


def _check_grads_against_dense(layer, x, backward):
    """Gradients of ``x`` and the parameters from ``backward(layer(x))`` against those through ``F.linear``."""
    grads = []
    for y in (layer(x), F.linear(x, layer.full_weight(), layer.bias)):
        x.grad = None
        layer.zero_grad()
        backward(y)
        grads.append([x.grad, *(p.grad for p in layer.parameters())])
    for got, ref in zip(*grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def _in_two_row_passes(fmt, in_s, out_s, rank, monkeypatch):
    """A ``two_stage`` layer whose batches of 5 run in passes of 2 rows (the last one ragged)."""
    from bayestensor.functional import cost_model

    n_in, n_out = math.prod(in_s), math.prod(out_s)
    layer = make(fmt, (n_in, n_out, in_s, out_s), "two_stage", rank=rank)
    ranks = tuple(layer.weight.ranks)
    dims = linear_plan(fmt, out_s, in_s, ranks, 5).two_stage.dims
    monkeypatch.setattr(cost_model, "_PLAN_CACHE", {})
    monkeypatch.setattr(cost_model, "WAIST_CHUNK_ELEMS", 2 * dims[2] * dims[3])
    assert linear_plan(fmt, out_s, in_s, ranks, 5).two_stage.chunk_rows == 2
    return layer


@pytest.mark.parametrize("fmt,in_s,out_s,rank,batch,kinds,permuted", TWO_STAGE_VARIANTS)
def test_every_two_stage_layout_matches_dense_and_passes_gradcheck(fmt, in_s, out_s, rank, batch, kinds, permuted):
    n_in, n_out = math.prod(in_s), math.prod(out_s)
    layer = make(fmt, (n_in, n_out, in_s, out_s), "two_stage", rank=rank)
    split = linear_plan(fmt, out_s, in_s, tuple(layer.weight.ranks), batch).two_stage
    assert split.kinds == kinds
    assert (split.x_perm != tuple(range(len(in_s) + 1))) == permuted
    _check_against_dense(layer, torch.randn(batch, n_in, dtype=torch.float64, requires_grad=True))


def test_two_stage_with_a_permuted_output_adds_the_bias_in_its_own_layout():
    """The second product adds the bias before ``y`` is permuted into the output modes: the bias goes there first."""
    in_s, out_s = (2, 2, 4, 3), (4, 5, 4, 5)
    layer = make("tucker", (48, 400, in_s, out_s), "two_stage", rank=4)
    torch.nn.init.normal_(layer.bias)
    split = linear_plan("tucker", out_s, in_s, tuple(layer.weight.ranks), 1).two_stage
    assert split.y_perm != tuple(range(len(out_s) + 1))
    _check_against_dense(layer, torch.randn(1, 48, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("fmt,in_s,out_s,rank,batch,kinds,permuted", TWO_STAGE_VARIANTS)
def test_two_stage_in_cache_sized_chunks_matches_dense(fmt, in_s, out_s, rank, batch, kinds, permuted, monkeypatch):
    """A batch run in passes of 2 rows (the last one ragged) gives dense outputs and gradients."""
    layer = _in_two_row_passes(fmt, in_s, out_s, rank, monkeypatch)
    _check_against_dense(layer, torch.randn(5, math.prod(in_s), dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("grad_kind", ["stride0", "transposed"])
@pytest.mark.parametrize("fmt,in_s,out_s,rank,batch,kinds,permuted", TWO_STAGE_VARIANTS)
def test_two_stage_chunks_take_non_contiguous_output_gradients(
    fmt, in_s, out_s, rank, batch, kinds, permuted, grad_kind, monkeypatch
):
    """``y.sum().backward()`` (a stride-0 gradient) and a transposed gradient give dense gradients."""
    layer = _in_two_row_passes(fmt, in_s, out_s, rank, monkeypatch)
    n_out = math.prod(out_s)
    g = torch.ones((), dtype=torch.float64).expand(5, n_out)  # what y.sum().backward() hands in
    if grad_kind == "transposed":
        g = torch.randn(n_out, 5, dtype=torch.float64).T
    assert not g.is_contiguous()
    x = torch.randn(5, math.prod(in_s), dtype=torch.float64, requires_grad=True)
    _check_grads_against_dense(layer, x, lambda y: y.backward(g))


@pytest.mark.parametrize("in_s,rank,batch", [((2, 2, 4, 4), 4, 8), ((4, 4, 8, 8), 16, 256)])
def test_tt_two_stage_copies_nothing_forward_or_backward(in_s, rank, batch):
    """Both TT super-factors come out of their chain-ordered contractions as their stages' matrices
    (transposed), which the stages read in place: the whole fwd+bwd with a bias copies nothing."""
    n = math.prod(in_s)
    layer = make("tt", (n, n, in_s, in_s), "two_stage", rank=rank)
    torch.nn.init.normal_(layer.bias)
    split = linear_plan("tt", in_s, in_s, tuple(layer.weight.ranks), batch).two_stage
    factors = list(layer.weight.factors)
    supers = ((split.p_steps, split.p_factors, split.matrices[0]), (split.q_steps, split.q_factors, split.matrices[1]))
    for steps, group, shape in supers:
        assert run_steps(steps, [factors[f] for f in group]).reshape(shape).T.is_contiguous()
    x = torch.randn(batch, n, dtype=torch.float64, requires_grad=True)
    with CopyCount() as count:
        layer(x).backward(torch.randn(batch, n, dtype=torch.float64))
    assert count.copies == 0
    _check_against_dense(layer, x)


def test_ttm_two_stage_moves_no_data_at_the_benchmark_shape():
    """TTM splits at its middle bond with both stages reading and writing in place (no permutes)."""
    shape = (4, 4, 8, 8)
    plan = linear_plan("ttm", shape, shape, (4, 4, 4), 256)
    assert plan.strategy == "two_stage"
    split = plan.two_stage
    assert split.p_factors == (0, 1) and split.kinds == ("bmm", "gemm")
    assert split.x_perm == tuple(range(5)) and split.y_perm == tuple(range(5))


def test_our_constant_marker_matches_torch_compilers_and_import_skips_dynamo():
    import subprocess
    import sys

    from bayestensor.functional import assume_constant_result

    def ours():
        return 1

    def theirs():
        return 1

    assume_constant_result(ours)
    torch.compiler.assume_constant_result(theirs)
    assert vars(ours) == vars(theirs) and vars(ours)
    code = "import sys, bayestensor; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("fmt", bt.available_formats())
def test_plan_caches_stay_bounded_and_replan_what_they_dropped(fmt, monkeypatch):
    """Pruning adds plans for new ranks while the old ones are never read again: each cache keeps at most
    ``MAX_PLANS`` entries (oldest dropped first), and a layer whose plans were dropped plans them again and computes
    the same outputs and prior term."""
    import importlib

    load = importlib.import_module  # the modules themselves (``functional.conv_plan`` is also a function's name)
    plan_cache = load("bayestensor.functional.plan_cache")
    caches = {
        (load(f"bayestensor.{path}"), name)
        for path, name in [
            ("functional.cost_model", "_PLAN_CACHE"),
            ("functional.reconstruction", "_RECON_CACHE"),
            ("functional.reconstruction", "_NORM_CACHE"),
            ("functional.conv_plan", "_CONV_PLANS"),
            ("functional.conv_plan", "_CONV_CONSTANTS"),
            ("functional.rows", "_EMB_PLANS"),
            ("tensors.statistics", "_LAYOUTS"),
            ("tensors.statistics", "_ON_DEVICE"),
        ]
    }
    for module, name in caches:
        monkeypatch.setattr(module, name, {})
    monkeypatch.setattr(plan_cache, "MAX_PLANS", 3)
    torch.manual_seed(0)
    x = torch.randn(8, 16, dtype=torch.float64)
    shape = dict(in_shape=(4, 4), out_shape=(4, 4), method="map", bias=False, dtype=torch.float64)
    layers = [bt.TensorizedLinear(16, 16, format=fmt, max_rank=r, **shape) for r in (1, 2, 3, 4, 5)]
    first = [(layer(x), bt.prior_loss(layer)) for layer in layers]
    assert all(0 < len(getattr(module, name)) <= 3 for module, name in caches if name in {"_PLAN_CACHE", "_LAYOUTS"})
    assert all(len(getattr(module, name)) <= 3 for module, name in caches)
    for layer, (y, prior) in zip(layers, first, strict=True):  # the first layers' plans were dropped: planned again
        torch.testing.assert_close(layer(x), x @ layer.weight.to_matrix().T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bt.prior_loss(layer), prior, rtol=1e-12, atol=1e-12)


def _layer_contraction(fmt, shape, ranks, batch=256):
    """Terms, output and index sizes of a layer's contraction of ``x`` with every factor, as in ``linear_plan``."""
    network = bt.get_format(fmt).network(shape, shape, ranks)
    sym, factors, x_term, out_modes, _ = linear_terms(network)
    sizes = {sym[k]: v for k, v in network.sizes.items()} | {BATCH: batch}
    return [x_term, *factors], BATCH + out_modes, sizes


def _streamed_cost(steps, sizes):
    """``Σ_steps (multiply-adds + MOVE_FLOPS/2 · elements written)``, and how many steps carry the batch."""
    size = lambda term: math.prod(sizes[c] for c in term)  # noqa: E731
    cost, carrying = 0.0, 0
    for step in steps:
        operands, result = step.eq.split("->")
        cost += size(set(operands.replace(",", ""))) + MOVE_FLOPS / 2 * size(result)
        carrying += BATCH in operands
    return cost, carrying


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_plans_price_the_batch_intermediates_they_write(fmt):
    """A layer's contraction is planned for FLOPs plus memory traffic: never worse by that than the FLOP plan."""
    shape = (4, 4, 8, 8)
    tensor = bt.FactorizedTensor(fmt, shape, shape, 6, dtype=torch.float64)
    terms, out, sizes = _layer_contraction(fmt, shape, tuple(tensor.ranks))
    streamed, _, _ = plan_contraction(terms, out, sizes, streamed=True)
    by_flops, _, _ = plan_contraction(terms, out, sizes)
    assert _streamed_cost(streamed, sizes)[0] <= _streamed_cost(by_flops, sizes)[0] * (1 + 1e-12)
    x, tensors = torch.randn(5, *shape, dtype=torch.float64), tensor.tensors()
    torch.testing.assert_close(run_steps(streamed, (x, *tensors)), run_steps(by_flops, (x, *tensors)))


def test_tucker_takes_the_batch_through_kronecker_pairs():
    """At the benchmark's Tucker ranks the batch meets pairs of factors: five batch-sized steps instead of nine."""
    shape, ranks = (4, 4, 8, 8), (3, 3, 6, 6, 3, 3, 6, 6)
    terms, out, sizes = _layer_contraction("tucker", shape, ranks)
    streamed, _, _ = plan_contraction(terms, out, sizes, streamed=True)
    by_flops, _, _ = plan_contraction(terms, out, sizes)
    assert _streamed_cost(by_flops, sizes)[1] == 9 and _streamed_cost(streamed, sizes)[1] == 5
    assert linear_plan("tucker", shape, shape, ranks, 256).einsum_steps == streamed


@pytest.mark.parametrize("fmt", FORMATS)
def test_layers_with_many_modes_plan_in_bounded_time(fmt):
    """Eight modes a side (a Tucker network of 17 factors): planned in seconds, and every strategy exact.

    Dynamic programming over a star's ``2^n`` connected subsets, and costing all ``2^n`` two-stage
    splits, took minutes for such a Tucker layer; larger networks now take seeded greedy trials and
    contiguous splits. Planning leaves Python's global random generator as it was.
    """
    shape = (2,) * 8
    held = random.getstate()
    start = time.perf_counter()
    for strategy in STRATEGIES:
        torch.manual_seed(0)
        layer = make(fmt, (256, 256, shape, shape), strategy, rank=2)
        x = torch.randn(3, 256, dtype=torch.float64)
        torch.testing.assert_close(layer(x), F.linear(x, layer.full_weight(), layer.bias), rtol=1e-10, atol=1e-12)
    assert time.perf_counter() - start < 60.0
    assert random.getstate() == held
