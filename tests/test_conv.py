import math

import pytest
import torch
import torch.nn.functional as F

import bayestensor as bt
from _oracle import tensorly_full
from bayestensor.layers.conv import TensorizedConv2d

FORMATS = ["tt", "ttm", "tucker", "cp"]
D = torch.float64


def make(fmt, cin=6, cout=10, k=3, rank=3, **kw):
    torch.manual_seed(0)
    return TensorizedConv2d(cin, cout, k, format=fmt, max_rank=rank, dtype=D, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_weight_matches_tensorly(fmt):
    m = make(fmt, k=(3, 2))
    full = torch.from_numpy(tensorly_full(fmt, m.weight.factors))  # (*out modes, kh·kw, *in modes)
    kernel = full.reshape(10, 3, 2, 6).permute(0, 3, 1, 2)  # documented layout: W[o, (s, i)]
    torch.testing.assert_close(m.full_weight(), kernel)
    assert m.full_weight().shape == (10, 6, 3, 2)


CONFIGS = [
    dict(k=3, stride=1, padding=1, dilation=1),
    dict(k=(3, 1), stride=(2, 1), padding=(0, 2), dilation=1),
    dict(k=5, stride=2, padding=2, dilation=(1, 2)),
    dict(k=1, stride=1, padding=0, dilation=1),
    dict(k=(1, 3), stride=3, padding="valid", dilation=2),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["factorized", "reconstruct"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_matches_conv2d(fmt, strategy, cfg):
    c = dict(CONFIGS[cfg])
    k = c.pop("k")
    m = make(fmt, cin=7, cout=5, k=k, strategy=strategy, **c)  # 7 and 5 factor badly: padded modes
    x = torch.randn(3, 7, 11, 9, dtype=D)
    pad = 0 if c["padding"] == "valid" else c["padding"]
    ref = F.conv2d(x, m.full_weight(), m.bias, c["stride"], pad, c["dilation"])
    torch.testing.assert_close(m(x), ref)


PADDINGS = [
    dict(k=3, padding="same"),
    dict(k=(4, 2), padding="same", dilation=(1, 3)),  # even spans: one more on the bottom / right, as torch
    dict(k=3, padding=(2, 1), stride=2),
    dict(k=(2, 3), padding=(0, 1)),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["factorized", "reconstruct"])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("cfg", range(len(PADDINGS)))
def test_padding_and_padding_modes_match_conv2d(fmt, strategy, mode, cfg):
    """Every torch padding mode and 'same' padding: output and input gradient equal nn.Conv2d's with our kernel."""
    c = dict(PADDINGS[cfg])
    k = c.pop("k")
    m = make(fmt, cin=7, cout=5, k=k, strategy=strategy, padding_mode=mode, **c)
    ref = torch.nn.Conv2d(7, 5, k, padding_mode=mode, dtype=D, **c)
    with torch.no_grad():
        ref.weight.copy_(m.full_weight())
        ref.bias.copy_(m.bias)
    x = torch.randn(3, 7, 8, 9, dtype=D, requires_grad=True)
    up = torch.randn_like(ref(x))
    (gx,) = torch.autograd.grad(m(x), x, up)
    (gx_ref,) = torch.autograd.grad(ref(x), x, up)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(gx, gx_ref)


def test_padding_settings_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    m = TensorizedConv2d(6, 10, (4, 3), padding="same", padding_mode="reflect", format="tt", max_rank=3).eval()
    bt.save(torch.nn.Sequential(m), tmp_path / "m")
    back = bt.load(tmp_path / "m")[0]
    assert back.padding == "same" and back.padding_mode == "reflect"
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(back(x), m(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_groups_reconstruct(fmt):
    m = make(fmt, cin=8, cout=12, groups=4, padding=1)
    assert m.full_weight().shape == (12, 2, 3, 3)
    x = torch.randn(2, 8, 6, 6, dtype=D)
    torch.testing.assert_close(m(x), F.conv2d(x, m.full_weight(), m.bias, 1, 1, 1, 4))
    with pytest.raises(ValueError, match=f"groups=4 with format '{fmt}'"):
        make(fmt, cin=8, cout=12, groups=4, strategy="factorized")


def test_unbatched_and_no_bias():
    m = make("tt", bias=False, padding=1)
    x = torch.randn(6, 5, 5, dtype=D)
    torch.testing.assert_close(m(x), F.conv2d(x[None], m.full_weight(), None, 1, 1)[0])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["factorized", "reconstruct"])
def test_gradcheck(fmt, strategy):
    torch.manual_seed(1)
    m = TensorizedConv2d(2, 3, 3, stride=2, padding=1, format=fmt, max_rank=2, strategy=strategy, dtype=D)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(1, 2, 4, 4, dtype=D, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


def test_bad_inputs():
    m = make("tt", k=5)
    with pytest.raises(ValueError, match="larger than the padded input"):
        m(torch.randn(1, 6, 4, 8, dtype=D))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 6, H, W\)"):
        m(torch.randn(1, 5, 8, 8, dtype=D))
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(1, 6, 8, 8))
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        make("tt", padding="same", stride=2)
    with pytest.raises(ValueError, match="padding must be an int, a pair of ints, 'valid' or 'same'"):
        make("tt", padding="full")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        make("tt", padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"padding_mode='reflect' needs padding 3 below the input height 3"):
        make("tt", k=7, padding=3, padding_mode="reflect")(torch.randn(1, 6, 3, 9, dtype=D))
    with pytest.raises(ValueError, match="divisible by groups"):
        make("tt", cin=6, cout=10, groups=4)
    with pytest.raises(ValueError, match="in_shape"):
        make("tt", in_shape=(2, 2))
    with pytest.raises(ValueError, match="strategy"):
        make("tt", strategy="fast")


def test_model_utilities_and_prune():
    torch.manual_seed(0)
    model = torch.nn.Sequential(TensorizedConv2d(4, 8, 3, padding=1, format="tucker", max_rank=4, method="map"))
    conv = model[0]
    assert bt.dense_params(model) == 8 * 4 * 9 + 8
    assert bt.count_params(model) == conv.weight.n_params() + 8
    assert bt.prior_loss(model).isfinite()
    x = torch.randn(2, 4, 6, 6)
    before = model(x)
    with torch.no_grad():  # make one rank component of the first bond negligible
        conv.weight.factors[1][:, 0] *= 1e-6
        conv.weight.rank_variance_0[0] = 1e-12
    before = model(x)
    report = bt.prune(model)
    assert report.changed and bt.ranks(model)["0"][0] == conv.weight.initial_ranks[0] - 1
    after = model(x)
    assert (after - before).norm() <= 0.01 * before.norm()


def test_compile_fullgraph():
    torch._dynamo.reset()
    m = TensorizedConv2d(8, 8, 3, padding=1, format="tt", max_rank=4)
    x = torch.randn(2, 8, 6, 6)
    for strategy in ("factorized", "reconstruct"):
        torch._dynamo.reset()
        m.strategy = strategy
        compiled = torch.compile(m, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_forward(fmt):
    torch.manual_seed(0)
    m = TensorizedConv2d(8, 8, 3, padding=1, format=fmt, max_rank=4)
    x = torch.randn(2, 8, 6, 6)
    ref = m(x)
    out = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() <= 0.05 * ref.norm()


def test_tucker_two_conv_is_chosen_for_low_rank():
    # Tucker-2 style: ranks far below the channel count -> the factorized sequence wins
    m = TensorizedConv2d(64, 64, 3, padding=1, format="tucker", max_rank=[8, 9, 8], in_shape=(64,), out_shape=(64,))
    from bayestensor.functional import conv_plan

    chosen, costs, split = conv_plan("tucker", m.tensor_out_shape, m.tensor_in_shape, tuple(m.weight.ranks), 8, 64, 64)
    assert chosen == "factorized" and split.sizes[3] == 8 and costs["factorized"] < costs["reconstruct"]
    assert math.isfinite(costs["reconstruct"])


@pytest.mark.parametrize("fmt", bt.available_formats())
@pytest.mark.parametrize("channels_last", [False, True])
def test_input_gradient_comes_back_in_the_inputs_memory_format(fmt, channels_last):
    # as nn.Conv2d's does: the factorized path's einsum would hand it back channels-innermost, and a max pool
    # before the layer then copies its whole input to match (tensorized layers 10 % slower per CNN step)
    m = make(fmt, strategy="factorized", padding=1)
    fmt_ = torch.channels_last if channels_last else torch.contiguous_format
    x0 = torch.randn(4, 6, 7, 5, dtype=D).contiguous(memory_format=fmt_).requires_grad_()
    x = x0 * 1.0  # not a leaf: autograd copies a leaf's .grad into the leaf's own layout, which would hide it
    seen = []
    x.register_hook(seen.append)
    # upstream gradients channels-innermost, as a ReLU or max pool after the layer hands them back when the
    # layer's output is laid out so (the factorized path's is)
    up = torch.randn(4, 10, 7, 5, dtype=D).contiguous(memory_format=torch.channels_last)
    m(x).backward(up)
    assert seen[0].is_contiguous(memory_format=fmt_), seen[0].stride()
    xr = x0.detach().clone().requires_grad_()
    F.conv2d(xr, m.full_weight().detach(), m.bias.detach(), padding=1).backward(up)
    torch.testing.assert_close(seen[0], xr.grad)


# ---------------------------------------------------------------- Conv1d
CONFIGS_1D = [
    dict(k=3, padding=1),
    dict(k=4, padding="same", dilation=2, padding_mode="reflect"),
    dict(k=5, stride=2, padding=3, padding_mode="replicate"),
    dict(k=1, padding="valid"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["factorized", "reconstruct"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS_1D)))
def test_conv1d_matches_nn_conv1d_and_converts_exactly(fmt, strategy, cfg):
    c = dict(CONFIGS_1D[cfg])
    k = c.pop("k")
    torch.manual_seed(0)
    dense = torch.nn.Conv1d(7, 5, k, dtype=D, **c)
    m = bt.TensorizedConv1d.from_dense(dense, format=fmt, max_rank=10_000, strategy=strategy, init="decompose")
    assert m.full_weight().shape == dense.weight.shape and m.reconstruction_error < 1e-12
    x = torch.randn(3, 7, 13, dtype=D, requires_grad=True)
    up = torch.randn_like(dense(x))
    (gx,) = torch.autograd.grad(m(x), x, up)
    (gx_ref,) = torch.autograd.grad(dense(x), x, up)
    torch.testing.assert_close(m(x), dense(x))
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(m(x[0]), dense(x[0]))  # unbatched (C, L)


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv1d_gradcheck_and_groups(fmt):
    torch.manual_seed(1)
    m = bt.TensorizedConv1d(2, 3, 3, stride=2, padding=1, format=fmt, max_rank=2, dtype=D)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(1, 2, 6, dtype=D, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
    g = bt.TensorizedConv1d(8, 12, 3, groups=4, padding=1, format=fmt, max_rank=3, dtype=D)
    x = torch.randn(2, 8, 9, dtype=D)
    torch.testing.assert_close(g(x), F.conv1d(x, g.full_weight(), g.bias, 1, 1, 1, 4))


def test_conv1d_bad_inputs():
    m = bt.TensorizedConv1d(6, 4, 5, format="tt", max_rank=3, dtype=D)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 6, L\) or \(6, L\)"):
        m(torch.randn(2, 6, 4, 4, dtype=D))
    with pytest.raises(ValueError, match="kernel length 5 .* larger than the padded input length 3"):
        m(torch.randn(2, 6, 3, dtype=D))
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        bt.TensorizedConv1d(6, 4, (3, 3))
