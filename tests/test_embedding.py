import pytest
import torch
import torch.nn.functional as F

import bayestensor as bt
from _oracle import tensorly_full
from bayestensor.functional import ROW_KERNELS
from bayestensor.layers.embedding import TensorizedEmbedding

FORMATS = ["tt", "ttm", "tucker", "cp"]
D = torch.float64
V, DIM = 97, 10  # prime V: padded row modes


def make(fmt, mode=None, padding_idx=None, **kw):
    torch.manual_seed(0)
    kw.setdefault("max_rank", 3)
    return TensorizedEmbedding(V, DIM, format=fmt, mode=mode, padding_idx=padding_idx, dtype=D, **kw)


def ids_with_repeats(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n,), generator=g)
    ids[[1, 4, 9]] = 3
    ids[[2, 7]] = V - 1
    return ids


@pytest.mark.parametrize("fmt", sorted(ROW_KERNELS))
@pytest.mark.parametrize("n", [1, 24, 400])  # below and above the sizes at which the kernels pre-merge cores
def test_registered_row_kernels_match_the_planned_contraction_and_the_table(fmt, n, monkeypatch):
    m = make(fmt)
    ids = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n))
    fast = m.rows(ids)
    monkeypatch.delitem(ROW_KERNELS, fmt)  # gather_rows now plans the generic contraction
    torch.testing.assert_close(m.rows(ids), fast)
    torch.testing.assert_close(fast, m.full_weight()[ids])


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_weight_matches_tensorly(fmt):
    m = make(fmt)
    full = torch.from_numpy(tensorly_full(fmt, m.weight.factors))
    rows, cols = full.shape[: len(m.row_shape)], full.shape[len(m.row_shape) :]
    table = full.reshape(torch.Size(rows).numel(), torch.Size(cols).numel())[:V, :DIM]
    torch.testing.assert_close(m.full_weight(), table)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_matches_torch(fmt, padding_idx):
    m = make(fmt, padding_idx=padding_idx)
    ids = ids_with_repeats().reshape(4, 6)
    table = m.full_weight().detach().clone()
    if padding_idx is not None:
        table[padding_idx] = 0  # nn.Embedding's padding row reads as zeros
    torch.testing.assert_close(m(ids), F.embedding(ids, table))
    assert m(ids).shape == (4, 6, DIM)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("mode", "weighted"), [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_bag_matches_torch(fmt, mode, padding_idx, weighted):
    m = make(fmt, mode=mode, padding_idx=padding_idx)
    ids = ids_with_repeats()
    offsets = torch.tensor([0, 3, 3, 10, 17])  # includes an empty bag
    psw = torch.randn(ids.shape, dtype=D) if weighted else None
    ref = F.embedding_bag(ids, m.full_weight(), offsets, mode=mode, per_sample_weights=psw, padding_idx=padding_idx)
    torch.testing.assert_close(m(ids, offsets, psw), ref)
    # fixed-length bags given as a 2-D batch
    ids2 = ids.reshape(4, 6)
    psw2 = psw.reshape(4, 6) if weighted else None
    ref2 = F.embedding_bag(ids2, m.full_weight(), mode=mode, per_sample_weights=psw2, padding_idx=padding_idx)
    torch.testing.assert_close(m(ids2, None, psw2), ref2)


def test_include_last_offset():
    m = make("tt", mode="sum", include_last_offset=True)
    ids = ids_with_repeats()
    offsets = torch.tensor([0, 5, 9, 24])
    ref = F.embedding_bag(ids, m.full_weight(), offsets, mode="sum", include_last_offset=True)
    torch.testing.assert_close(m(ids, offsets), ref)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", [None, "sum", "mean"])
def test_dedup_same_values_and_gradients(fmt, mode):
    ids = ids_with_repeats()
    offsets = None if mode is None else torch.tensor([0, 5, 12])
    outs, grads = [], []
    for dedup in (True, False):
        m = make(fmt, mode=mode, padding_idx=3, dedup=dedup)
        out = m(ids, offsets)
        g = torch.randn(out.shape, dtype=D, generator=torch.Generator().manual_seed(1))
        outs.append(out)
        grads.append(torch.autograd.grad((out * g).sum(), list(m.weight.factors)))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradients_match_dense_oracle_with_padding(fmt):
    """Factor gradients equal those through F.embedding on the reconstructed table with the padding row zeroed."""
    m = make(fmt, padding_idx=3)
    ids = ids_with_repeats()
    g = torch.randn(len(ids), DIM, dtype=D)
    ours = torch.autograd.grad((m(ids) * g).sum(), list(m.weight.factors))
    mask = torch.ones(V, 1, dtype=D)
    mask[3] = 0
    ref = torch.autograd.grad((F.embedding(ids, m.full_weight() * mask) * g).sum(), list(m.weight.factors))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)
    # a batch of only padding ids passes no gradient at all
    zero = torch.autograd.grad(m(torch.tensor([3, 3])).sum(), list(m.weight.factors))
    assert all(float(z.abs().max()) == 0.0 for z in zero)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradcheck(fmt):
    torch.manual_seed(2)
    m = TensorizedEmbedding(20, 3, format=fmt, max_rank=2, mode="sum", dtype=D)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    ids = torch.tensor([0, 19, 7, 7, 12])
    offsets = torch.tensor([0, 2])
    psw = torch.randn(5, dtype=D, requires_grad=True)

    def f(psw, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (ids, offsets, psw))

    assert torch.autograd.gradcheck(f, (psw, *params))


def test_huge_row_shape_smoke():
    """10,131,227 rows as 200 x 220 x 250: rows near the end, checked against the explicit TT product."""
    n = 10_131_227
    m = TensorizedEmbedding(n, 16, format="tt", max_rank=4, row_shape=(200, 220, 250), dtype=D)
    assert sum(p.numel() for p in m.parameters()) < 50_000
    ids = torch.tensor([n - 1, n - 2, 0, 7_654_321, n - 1])
    out = m(ids)
    g1, g2, g3, h = (f.detach() for f in m.weight.factors)
    for row, v in zip(out, ids.tolist(), strict=True):
        i1, rest = divmod(v, 220 * 250)
        i2, i3 = divmod(rest, 250)
        expect = g1[0, i1] @ g2[:, i2] @ g3[:, i3] @ h[:, :, 0]  # (r) (r r) (r r) (r, 16)
        torch.testing.assert_close(row, expect)
    out.sum().backward()
    with pytest.raises(IndexError, match=f"index {n} "):
        m(torch.tensor([0, n]))


def test_bad_inputs():
    m = make("tt")
    with pytest.raises(IndexError, match=r"index 97 at position \(1, 0\) is out of range"):
        m(torch.tensor([[1, 2], [97, 0]]))
    with pytest.raises(IndexError, match="index -1"):
        m(torch.tensor([-1]))
    with pytest.raises(ValueError, match="int64 or int32"):
        m(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="mode='sum' or 'mean'"):
        m(torch.tensor([1, 2]), torch.tensor([0]))
    bag = make("tt", mode="sum")
    with pytest.raises(ValueError, match="non-decreasing"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="exceeds the number of indices 3"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="need offsets"):
        bag(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="per_sample_weights is only supported with mode='sum'"):
        make("tt", mode="mean")(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match="row_shape"):
        make("tt", row_shape=(5, 5))
    with pytest.raises(ValueError, match="unknown mode"):
        make("tt", mode="max")
    with pytest.raises(ValueError, match="padding_idx"):
        make("tt", padding_idx=V)


def test_model_utilities_and_prune():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"emb": TensorizedEmbedding(500, 8, format="tt", max_rank=4, method="map")})
    emb = model["emb"]
    assert bt.dense_params(model) == 500 * 8
    assert bt.count_params(model) == emb.weight.n_params()
    assert bt.prior_loss(model).isfinite()
    ids = torch.arange(0, 500, 7)
    with torch.no_grad():  # one negligible component on the first bond
        emb.weight.factors[0][:, :, 0] *= 1e-6
        emb.weight.rank_variance_0[0] = 1e-12
    before = emb(ids)
    report = bt.prune(model)
    assert report.changed and bt.ranks(model)["emb"][0] == emb.weight.initial_ranks[0] - 1
    assert (emb(ids) - before).norm() <= 0.01 * before.norm()


@pytest.mark.parametrize("mode", [None, "sum"])
def test_compile_fullgraph(mode):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = TensorizedEmbedding(1000, 8, format="tt", max_rank=4, mode=mode, padding_idx=5)
    ids = torch.tensor([5, 999, 3, 3, 0, 17])
    args = (ids,) if mode is None else (ids, torch.tensor([0, 2, 4]))
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), m(*args))
    torch._dynamo.reset()
    m2 = TensorizedEmbedding(1000, 8, format="ttm", max_rank=4, mode=mode)
    compiled = torch.compile(m2, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), m2(*args))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_forward(fmt):
    torch.manual_seed(0)
    m = TensorizedEmbedding(1000, 16, format=fmt, max_rank=4, mode="mean")
    ids, offsets = torch.randint(0, 1000, (40,)), torch.tensor([0, 10, 30])
    ref = m(ids, offsets)
    out = m.to(torch.bfloat16)(ids, offsets)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() <= 0.05 * ref.norm()
