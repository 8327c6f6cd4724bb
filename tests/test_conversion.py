import math

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.decomposition import parafac as tl_parafac
from tensorly.decomposition import tucker as tl_tucker
from torch import nn

import bayestensor as bt
from _oracle import tensorly_full
from bayestensor.conversion import (
    cp_als,
    decompose,
    format_summary,
    hooi,
    tensorize,
    tt_svd,
    ttm_svd,
)
from bayestensor.layers.conv import TensorizedConv2d
from bayestensor.layers.embedding import TensorizedEmbedding
from bayestensor.layers.linear import TensorizedLinear

FORMATS = ["tt", "ttm", "tucker", "cp"]
D = torch.float64


# ---------------------------------------------------------------- decompositions
def test_tt_svd_exact_and_truncated():
    torch.manual_seed(0)
    t = torch.randn(3, 4, 5, 2, dtype=D)
    cores = tt_svd(t, [100, 100, 100])
    np.testing.assert_allclose(tl.tt_to_tensor([c.numpy() for c in cores]), t.numpy(), atol=1e-12)
    # truncation error obeys the TT-SVD bound sqrt(sum of discarded squared singular values)
    cores = tt_svd(t, [2, 3, 2])
    approx = torch.from_numpy(tl.tt_to_tensor([c.numpy() for c in cores]))
    err = (approx - t).norm()
    bound = 0.0
    rest, r = t, 1
    for k, rk in enumerate([2, 3, 2]):
        s = torch.linalg.svdvals(rest.reshape(r * t.shape[k], -1))
        bound += float(s[rk:].square().sum())
        u, s_, vh = torch.linalg.svd(rest.reshape(r * t.shape[k], -1), full_matrices=False)
        rest, r = s_[:rk, None] * vh[:rk], rk
    assert err <= math.sqrt(bound) + 1e-10


def test_ttm_svd_exact():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 4, 5, dtype=D)  # out (2, 3), in (4, 5)
    cores = ttm_svd(t, (2, 3), (4, 5), [100])
    np.testing.assert_allclose(tl.tt_matrix_to_tensor([c.numpy() for c in cores]), t.numpy(), atol=1e-12)


def test_hooi_matches_tensorly_error():
    torch.manual_seed(0)
    t = torch.randn(6, 5, 7, dtype=D)
    core, factors = hooi(t, [3, 3, 3])
    ours = (torch.from_numpy(tl.tucker_to_tensor((core.numpy(), [f.numpy() for f in factors]))) - t).norm()
    ref_core, ref_f = tl_tucker(t.numpy(), rank=[3, 3, 3], init="svd", n_iter_max=100)
    ref = np.linalg.norm(tl.tucker_to_tensor((ref_core, ref_f)) - t.numpy())
    assert float(ours) <= ref * 1.01


def test_cp_als_recovers_low_rank():
    torch.manual_seed(0)
    factors = [torch.randn(n, 2, dtype=D) for n in (5, 6, 4)]
    t = torch.from_numpy(tl.cp_to_tensor((np.ones(2), [f.numpy() for f in factors])))
    est = cp_als(t, 2, n_iter=500, tol=1e-14)
    approx = torch.from_numpy(tl.cp_to_tensor((np.ones(2), [f.numpy() for f in est])))
    assert (approx - t).norm() / t.norm() < 1e-6


@pytest.mark.parametrize("dims", [(4, 4, 4, 4), (1, 4, 5), (3, 6, 5)])
@pytest.mark.parametrize("n_iter", [50, 200])
def test_cp_als_above_the_tensors_rank_keeps_the_exact_fit(dims, n_iter):
    """Fitted at rank 3, a planted rank-2 tensor leaves ALS's Gram matrices singular; the fit must stay exact
    (a QR least-squares solve blew the factors up or to zero on all three shapes at 200 sweeps)."""
    g = torch.Generator().manual_seed(0)
    factors = [torch.randn(n, 2, generator=g, dtype=D) for n in dims]
    t = torch.from_numpy(tl.cp_to_tensor((np.ones(2), [f.numpy() for f in factors])))
    exact = cp_als(t, 2, n_iter=n_iter, tol=0.0)  # at the planted rank, the same sweeps
    exact_err = float((torch.from_numpy(tl.cp_to_tensor((np.ones(2), [f.numpy() for f in exact]))) - t).norm())
    est = cp_als(t, 3, n_iter=n_iter, tol=0.0, generator=g)
    approx = torch.from_numpy(tl.cp_to_tensor((np.ones(3), [f.numpy() for f in est])))
    assert float((approx - t).norm()) <= max(10 * exact_err, 1e-10 * float(t.norm()))


@pytest.mark.filterwarnings("ignore:Trying to compute SVD")
@pytest.mark.parametrize("dims,rank", [((2, 2, 4, 4, 4, 4), 20), ((3, 2, 5, 2), 8)])
def test_cp_als_at_a_rank_above_some_modes_fits_as_well_as_tensorly(dims, rank):
    """The HOSVD start has only ``I_n < R`` directions in a small mode; the rest start as random columns.

    Started at 1 % of the singular vectors' scale, those columns never grew: a planted rank-20 tensor on
    ``(2, 2, 4, 4, 4, 4)`` stayed at relative error 0.55, a random one at 0.93 (TensorLy's ``parafac``: 0.66).
    """
    g = torch.Generator().manual_seed(0)
    planted = torch.from_numpy(tl.cp_to_tensor((np.ones(rank), [torch.randn(n, rank, generator=g, dtype=D).numpy()
                                                                 for n in dims])))  # fmt: skip
    noise = torch.randn(dims, generator=g, dtype=D)

    def error(t: torch.Tensor, factors) -> float:
        return float(np.linalg.norm(tl.cp_to_tensor(factors) - t.numpy()) / np.linalg.norm(t.numpy()))

    ours = {
        name: error(t, (np.ones(rank), [f.numpy() for f in cp_als(t, rank)]))
        for name, t in (("planted", planted), ("noise", noise))
    }
    theirs = error(noise, tl_parafac(noise.numpy(), rank, init="svd", n_iter_max=200, tol=1e-9))
    assert ours["planted"] < 0.05, ours
    assert ours["noise"] <= 1.05 * theirs, (ours, theirs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decompose_full_rank_exact(fmt):
    torch.manual_seed(0)
    out_shape, in_shape = (2, 3), (3, 2)
    t = torch.randn(*out_shape, *in_shape, dtype=D)
    f = bt.get_format(fmt)
    ranks = f.full_ranks(out_shape, in_shape)
    factors = decompose(fmt, t, out_shape, in_shape, ranks)
    np.testing.assert_allclose(tensorly_full(fmt, factors), t.numpy(), atol=1e-10)


# ---------------------------------------------------------------- from_dense
@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_from_dense_round_trip(fmt):
    torch.manual_seed(0)
    lin = nn.Linear(12, 10).double()
    layer = TensorizedLinear.from_dense(lin, format=fmt, max_rank=10_000)
    x = torch.randn(4, 12, dtype=D)
    torch.testing.assert_close(layer(x), lin(x))
    assert layer.reconstruction_error < 1e-12


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_from_dense_round_trip(fmt, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, (3, 2), stride=2, padding=1, groups=groups).double()
    layer = TensorizedConv2d.from_dense(conv, format=fmt, max_rank=10_000)
    x = torch.randn(2, 6, 7, 7, dtype=D)
    torch.testing.assert_close(layer(x), conv(x))
    torch.testing.assert_close(layer.full_weight(), conv.weight)
    assert layer.reconstruction_error < 1e-12


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv_from_dense_keeps_padding_same_and_padding_mode(fmt, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, (4, 3), padding="same", padding_mode=mode).double()
    layer = TensorizedConv2d.from_dense(conv, format=fmt, max_rank=10_000)
    assert (layer.padding, layer.padding_mode) == ("same", mode)
    x = torch.randn(2, 6, 7, 6, dtype=D)
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_from_dense_round_trip(fmt):
    torch.manual_seed(0)
    emb = nn.Embedding(37, 6, padding_idx=4).double()
    bag = nn.EmbeddingBag(37, 6, mode="mean").double()
    ids = torch.tensor([4, 0, 36, 5, 5, 20])
    layer = TensorizedEmbedding.from_dense(emb, format=fmt, max_rank=10_000)
    torch.testing.assert_close(layer(ids), emb(ids))
    assert layer.padding_idx == 4 and layer.reconstruction_error < 1e-12
    layer = TensorizedEmbedding.from_dense(bag, format=fmt, max_rank=10_000)
    offsets = torch.tensor([0, 2])
    torch.testing.assert_close(layer(ids, offsets), bag(ids, offsets))


@pytest.mark.parametrize("fmt", FORMATS)
def test_low_rank_error_is_reported(fmt):
    torch.manual_seed(0)
    lin = nn.Linear(16, 16).double()
    layer = TensorizedLinear.from_dense(lin, format=fmt, max_rank=2, n_iter=50)
    with torch.no_grad():
        true = float((layer.full_weight() - lin.weight).norm() / lin.weight.norm())
    assert 0.05 < layer.reconstruction_error < 1.0
    assert layer.reconstruction_error == pytest.approx(true, rel=1e-9)


def test_from_dense_bad_input():
    with pytest.raises(TypeError, match="nn.Linear"):
        TensorizedLinear.from_dense(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="mode='max'"):
        TensorizedEmbedding.from_dense(nn.EmbeddingBag(10, 2, mode="max"))


# ---------------------------------------------------------------- tensorize
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(60, 8, mode="sum")
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.head = nn.Sequential(nn.Linear(8 * 3 * 3 + 8, 24), nn.ReLU(), nn.Linear(24, 5))

    def forward(self, x, ids, offsets):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1)
        return self.head(torch.cat([h, self.emb(ids, offsets)], 1))


@pytest.mark.parametrize("fmt", ["ttm", "tt"])
def test_tensorize_full_rank_equals_original(fmt):
    torch.manual_seed(0)
    net = Net().double()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    ids, offsets = torch.tensor([1, 59, 3, 3, 7]), torch.tensor([0, 3])
    before = net(x, ids, offsets)
    model, summary = tensorize(net, format=fmt, max_rank=10_000, min_params=100, init="decompose")
    assert [r["layer"] for r in summary] == ["emb", "conv1", "conv2", "head.0", "head.2"]
    assert isinstance(model.conv1, TensorizedConv2d) and isinstance(model.emb, TensorizedEmbedding)
    assert isinstance(model.head[0], TensorizedLinear)
    torch.testing.assert_close(model(x, ids, offsets), before)
    for row in summary:
        assert row["format"] == fmt and row["rel_error"] < 1e-12 and row["params_before"] > 0
    assert "total:" in format_summary(summary)


def test_tensorize_filters_and_min_params():
    torch.manual_seed(0)
    net = Net()
    _, summary = tensorize(net, max_rank=4, min_params=300, exclude="head.*")
    assert [r["layer"] for r in summary] == ["emb", "conv2"]
    assert isinstance(net.head[0], nn.Linear) and isinstance(net.conv1, nn.Conv2d)
    net = Net()
    _, summary = tensorize(net, max_rank=4, min_params=0, include=["head"])
    assert [r["layer"] for r in summary] == ["head.0", "head.2"]
    assert bt.count_params(net) < sum(p.numel() for p in Net().parameters())


def test_a_module_used_twice_is_converted_once_and_put_back_at_both_places():
    """Reuse is not weight tying: it used to be left dense, with a warning that named it "tied weights"."""
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(3, 16, dtype=D)
    model = model.to(D)
    before = model(x)
    _, summary = tensorize(model, format="tt", max_rank=100, min_params=0, init="decompose")
    assert [r["layer"] for r in summary] == ["0"]
    assert isinstance(model[0], TensorizedLinear) and model[0] is model[2]
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_a_frozen_module_stays_frozen(layer_type):
    from _layers import EXAMPLES

    dense = EXAMPLES[layer_type][0]().requires_grad_(False)
    model, _ = tensorize(nn.Sequential(dense), min_params=0)
    assert isinstance(model[0], layer_type)
    assert not any(p.requires_grad for p in model.parameters())


def test_a_frozen_weight_with_a_trained_bias_keeps_both_settings():
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16))
    model[0].weight.requires_grad_(False)
    tensorize(model, min_params=0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("0.weight.")}, frozen
    mha = nn.MultiheadAttention(16, 2)
    mha.in_proj_weight.requires_grad_(False)  # a pattern with no counterpart in the new layer: said, not guessed
    with pytest.warns(UserWarning, match=r"\['in_proj_weight'\] are frozen and the rest are not"):
        tensorize(nn.Sequential(mha), min_params=0)


def test_what_a_converted_embedding_cannot_keep_is_said():
    with pytest.warns(UserWarning, match=r"0 \(scale_grad_by_freq is set"):
        model, _ = tensorize(nn.Sequential(nn.Embedding(300, 40, scale_grad_by_freq=True)), min_params=0)
    assert isinstance(model[0], nn.Embedding)  # left dense
    table = nn.Embedding(300, 40, padding_idx=3)
    with torch.no_grad():
        table.weight[3] = 0.5  # a loaded table whose padding row is not zero; nn.Embedding returns it
    with pytest.warns(UserWarning, match=r"padding_idx=3 is not zero \(max \|entry\| 0.5\)"):
        TensorizedEmbedding.from_dense(table, max_rank=4)


def test_a_layer_that_starts_larger_than_its_dense_weight_is_named():
    with pytest.warns(UserWarning, match=r"more parameters than their dense weights: 1 \(964 > 800\)"):
        tensorize(nn.Sequential(nn.Linear(4, 4), nn.Embedding(100, 8)), min_params=100)


def test_tensorize_bad_arguments_are_named():
    with pytest.raises(TypeError, match="tensorize expects a torch.nn.Module, got str"):
        tensorize("model")
    with pytest.raises(ValueError, match="min_params must be an int >= 0, got -1"):
        tensorize(nn.Linear(4, 4), min_params=-1)
    with pytest.raises(ValueError, match=r"tensorize: 0 \(LazyLinear\) has uninitialized \(lazy\) parameters"):
        tensorize(nn.Sequential(nn.LazyLinear(8), nn.ReLU()), min_params=0)
    with pytest.raises(ValueError, match="tensorize: 0: Linear has parameters on the meta device"):
        tensorize(nn.Sequential(nn.Linear(8, 8, device="meta")), min_params=0)


def test_tensorize_warns_when_nothing_eligible():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.warns(UserWarning, match="no convertible module"):
        model, summary = tensorize(net)
    assert model is net and summary == [] and isinstance(net[0], nn.Linear)


@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_tensorize_of_a_single_layer_returns_the_tensorized_layer(layer_type):
    """The model may be the layer itself: it is replaced by the return value, at full rank the same function."""
    from _layers import EXAMPLES

    make_dense, make_x, call = EXAMPLES[layer_type]
    torch.manual_seed(0)
    dense = make_dense().double()
    x = make_x()
    x = x.double() if x.is_floating_point() else x
    model, summary = tensorize(dense, format="tt", max_rank=10_000, min_params=0, init="decompose")
    assert isinstance(model, layer_type) and summary
    assert all(r["layer"] == "" or not r["layer"].startswith(".") for r in summary)
    assert sum(r["params_before"] for r in summary) == sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        torch.testing.assert_close(call(model, x), call(dense, x))
    with pytest.warns(UserWarning, match="no convertible module"):  # below min_params: unchanged, as for a model
        same, rows = tensorize(make_dense(), min_params=10**9)
    assert isinstance(same, type(make_dense())) and rows == []


# ---------------------------------------------------------------- ARD warm start
def test_ard_warm_start_keeps_shrinking_ranks():
    """Decompose a trained layer at a generous rank, then MAP training with the prior prunes ranks."""
    torch.manual_seed(0)
    n_in = n_out = 16
    # the "trained" dense layer: TT rank 2 in the (4, 4) x (4, 4) TTM view, plus a little noise
    teacher_t = TensorizedLinear(n_in, n_out, format="ttm", max_rank=2, in_shape=(4, 4), out_shape=(4, 4), bias=False)
    dense = nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        dense.weight.copy_(teacher_t.full_weight() + 0.01 * torch.randn(n_out, n_in))
    layer = TensorizedLinear.from_dense(
        dense, format="ttm", max_rank=12, method="map", in_shape=(4, 4), out_shape=(4, 4)
    )
    start_rank = layer.weight.ranks[0]
    assert start_rank == 12
    x = torch.randn(512, n_in)
    y = dense(x).detach()
    opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = (layer(x) - y).square().mean() + bt.prior_loss(layer) / len(x)
        loss.backward()
        opt.step()
    bt.prune(layer, threshold=1e-2, optimizer=opt)
    print("ranks after warm-started ARD:", layer.weight.ranks)
    assert 2 <= layer.weight.ranks[0] < start_rank
    err = (layer(x) - y).square().mean() / y.square().mean()
    assert err < 0.05
