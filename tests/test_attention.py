"""TensorizedMultiheadAttention against nn.MultiheadAttention, and stock transformers through tensorize."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayestensor as bt
from _layers import prune_some
from bayestensor.layers import TensorizedMultiheadAttention

D = torch.float64


def _inputs(batch_first, kdim, n=3, tgt=5, src=7, e=32):
    q = torch.randn(n, tgt, e, dtype=D)
    k = torch.randn(n, src, kdim or e, dtype=D)
    v = torch.randn(n, src, kdim or e, dtype=D)
    if not batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    return q, k, v


def _masks(n=3, tgt=5, src=7, heads=4):
    attn = torch.rand(tgt, src) > 0.7
    attn[:, 0] = False  # no fully masked row (both give NaN there)
    pad = torch.rand(n, src) > 0.7
    pad[:, 0] = False
    return [
        {},
        {"attn_mask": attn},
        {"attn_mask": torch.randn(tgt, src, dtype=D)},
        {"key_padding_mask": pad},
        {"attn_mask": attn, "key_padding_mask": pad, "need_weights": False},
        {"attn_mask": torch.randn(n * heads, tgt, src, dtype=D), "average_attn_weights": False},
        {"need_weights": False},
    ]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 24])  # packed Q/K/V (in_proj_weight) and separate q/k/v_proj_weight
@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_attention_equals_nn_multihead_attention(batch_first, kdim, bias):
    mha = nn.MultiheadAttention(32, 4, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first, dtype=D).eval()
    ours = TensorizedMultiheadAttention.from_dense(mha, max_rank=10_000).eval()
    q, k, v = _inputs(batch_first, kdim)
    for kwargs in _masks():
        want, want_w = mha(q, k, v, **kwargs)
        got, got_w = ours(q, k, v, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
        if want_w is None:
            assert got_w is None
        else:
            torch.testing.assert_close(got_w, want_w, rtol=1e-9, atol=1e-10)


def test_causal_hint_unbatched_input_and_dropout_follow_nn_multihead_attention():
    mha = nn.MultiheadAttention(32, 4, dropout=0.3, batch_first=True, dtype=D)
    ours = TensorizedMultiheadAttention.from_dense(mha, max_rank=10_000)
    mha.eval(), ours.eval()
    x = torch.randn(2, 6, 32, dtype=D)
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=D)
    for kw in ({"need_weights": False}, {"need_weights": True}):
        want = mha(x, x, x, attn_mask=causal, is_causal=True, **kw)[0]
        torch.testing.assert_close(ours(x, x, x, attn_mask=causal, is_causal=True, **kw)[0], want)
    with pytest.raises(RuntimeError, match="attn_mask"):
        ours(x, x, x, is_causal=True)
    u = torch.randn(6, 32, dtype=D)  # unbatched (L, E)
    (want, want_w), (got, got_w) = mha(u, u, u), ours(u, u, u)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_w, want_w)
    # dropout acts on the attention weights in training only: eval is deterministic, training is not
    ours.train()
    a, b = ours(x, x, x)[0], ours(x, x, x)[0]
    assert not torch.allclose(a, b)


def test_attention_bad_input_and_unsupported_settings():
    ours = TensorizedMultiheadAttention(32, 4, batch_first=True, max_rank=4)
    x = torch.randn(2, 6, 32)
    with pytest.raises(ValueError, match=r"query of shape"):
        ours(torch.randn(2, 6, 31), x, x)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(6, 6\)"):
        ours(x, x, x, attn_mask=torch.zeros(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 6\)"):
        ours(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TensorizedMultiheadAttention(30, 4)
    with pytest.raises(ValueError, match="max_rank keys"):
        TensorizedMultiheadAttention(32, 4, max_rank={"query": 3})
    with pytest.raises(ValueError, match="add_bias_kv"):
        TensorizedMultiheadAttention.from_dense(nn.MultiheadAttention(32, 4, add_bias_kv=True))


def _train_steps(model, make_batch, steps=30):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ard = bt.ARD(model, opt, num_data=1000, epochs=2)
    losses = []
    for _ in range(steps):
        x, target = make_batch()
        loss = ard.loss(F.mse_loss(model(x), target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return ard, losses


def _quiet_tensorize(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stock transformer converts without anything left dense
        return bt.tensorize(model, **kwargs)


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), 2),
        lambda: nn.TransformerDecoderLayer(64, 4, 128, dropout=0.0, batch_first=True),
        lambda: nn.Transformer(64, 4, 1, 1, 128, dropout=0.0, batch_first=True),
    ],
    ids=["encoder", "decoder-layer", "transformer"],
)
def test_stock_transformers_tensorize_train_prune_save_and_load(build, tmp_path):
    torch.manual_seed(0)
    model, summary = _quiet_tensorize(build(), format="ttm", max_rank=6, min_params=1000)
    n_mha = sum(isinstance(m, nn.MultiheadAttention) for m in build().modules())
    assert sum(isinstance(m, TensorizedMultiheadAttention) for m in model.modules()) == n_mha > 0
    assert not any(type(m) in (nn.Linear, nn.MultiheadAttention) for m in model.modules())
    assert len(summary) == 4 * n_mha + 2 * sum(isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer)
                                               for m in build().modules())  # fmt: skip
    teacher = nn.Linear(64, 64)

    def batch():
        x = torch.randn(8, 10, 64)
        inputs = x if not isinstance(model, nn.Transformer | nn.TransformerDecoderLayer) else (x, x.flip(1))
        return inputs, teacher(x).detach()

    def forward(inputs):
        return model(*inputs) if isinstance(inputs, tuple) else model(inputs)

    class Wrap(nn.Module):  # the loop below calls model(x)
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return forward(inputs)

    wrapped = Wrap()
    _, losses = _train_steps(wrapped, batch)
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns
    prune_some(model)
    model.eval()
    inputs, _ = batch()
    want = forward(inputs)
    bt.save(model, tmp_path / "m")
    rebuilt, _ = _quiet_tensorize(build(), format="ttm", max_rank=6, min_params=1000)
    back = bt.load(tmp_path / "m", model=rebuilt)
    assert bt.ranks(back) == bt.ranks(model)
    out = back(*inputs) if isinstance(inputs, tuple) else back(inputs)
    torch.testing.assert_close(out, want)
    if isinstance(model, nn.TransformerEncoder):  # eval with a padding mask: the fast-path checks pass through
        mask = torch.zeros(8, 10, dtype=torch.bool)
        mask[:, -2:] = True
        assert back(inputs, src_key_padding_mask=mask).shape == (8, 10, 64)


def test_tensorize_skips_subclasses_and_tied_weights_and_names_them():
    class MyLinear(nn.Linear):
        pass

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(300, 64)
            self.mine = MyLinear(64, 256)
            self.fc = nn.Linear(256, 64)
            self.head = nn.Linear(64, 300, bias=False)
            self.head.weight = self.emb.weight  # tied

        def forward(self, ids):
            return self.head(self.fc(self.mine(self.emb(ids))))

    net = Net()
    expected = r"emb \(its parameter is shared with head.weight.*mine \(MyLinear is a subclass of nn.Linear"
    with pytest.warns(UserWarning, match=expected):
        _, summary = bt.tensorize(net, min_params=1000)
    assert [r["layer"] for r in summary] == ["fc"]
    assert type(net.mine) is MyLinear and type(net.head) is nn.Linear
    with pytest.raises(ValueError, match=r"cannot convert 'mine' \(MyLinear\).*subclass"):
        bt.tensorize(Net(), include="mine", min_params=1000)
    with pytest.raises(ValueError, match="include='nothing' matches no module"):
        bt.tensorize(Net(), include="nothing")


def test_encoder_layer_feed_forward_stays_dense_when_its_attention_does():
    layer = nn.TransformerEncoderLayer(64, 4, 256, batch_first=True)
    with pytest.warns(UserWarning, match="linear1 .*fast path"):
        bt.tensorize(layer, exclude="self_attn", min_params=1000)
    assert type(layer.linear1) is nn.Linear and type(layer.self_attn) is nn.MultiheadAttention
    layer.eval()
    assert layer(torch.randn(2, 5, 64)).shape == (2, 5, 64)  # the fast path still finds dense weights
