"""Mixed precision: torch.autocast, GradScaler, and bf16/fp16 weights, for every registered layer type."""

import pytest
import torch
import torch.nn.functional as F

import bayestensor as bt
from _layers import EXAMPLES, example


def test_every_layer_type_has_an_example():
    assert set(EXAMPLES) == set(bt.LAYER_TYPES)


def _factors(module):
    return [p for _, t in bt.inference.bayesian_tensors(module) for p in t.factors] or [
        p for n, p in module.named_parameters() if "factors" in n
    ]


@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_cpu_autocast_follows_the_dense_layer_and_keeps_the_bayesian_state_in_float32(layer_type):
    torch.manual_seed(0)
    dense, ours, x, call = example(layer_type, method="map")
    want = call(ours, x).detach()  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call(ours, x)
        ref_dtype = call(dense, x).dtype
        prior = bt.prior_loss(ours)
    assert got.dtype == ref_dtype  # bf16 for Linear, Conv2d and attention; the stored dtype for embeddings
    assert prior.dtype == torch.float32
    scale = want.abs().max()
    assert (got.float() - want).abs().max() <= 0.05 * scale  # bf16 has 8 mantissa bits
    (got.float().square().mean() + prior / 100).backward()
    grads = [p.grad for p in ours.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(lam.dtype == torch.float32 for _, t in bt.inference.bayesian_tensors(ours) for lam in t.rank_variances())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_half_precision_weights_without_autocast(layer_type, dtype):
    torch.manual_seed(0)
    _, ours32, x32, call = example(layer_type, method="map")
    _, ours, _, _ = example(layer_type, method="map", dtype=dtype)
    ours.load_state_dict(ours32.state_dict())  # same values, rounded to the half dtype
    x = x32.to(dtype) if x32.is_floating_point() else x32
    out = call(ours, x)
    assert out.dtype == dtype
    want = call(ours32, x32).detach()
    assert (out.float() - want).abs().max() <= 0.05 * want.abs().max()
    opt = torch.optim.SGD(ours.parameters(), lr=1e-3)
    ard = bt.ARD(ours, opt, num_data=100, epochs=2)
    ard.loss(out.float().square().mean()).backward()
    opt.step()  # the λ M-step runs in the step's hook
    lams = [lam for _, t in bt.inference.bayesian_tensors(ours) for lam in t.rank_variances()]
    assert lams and all(torch.isfinite(lam).all() and lam.dtype == torch.float32 for lam in lams)
    if x.is_floating_point():  # (an embedding takes ids: nothing to mismatch)
        with pytest.raises(ValueError, match="does not match the layer's dtype"):
            call(ours, x32)  # float32 input into half weights, outside autocast


def test_grad_scaler_trains_under_autocast():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        bt.TensorizedLinear(32, 64, max_rank=6, method="map"), torch.nn.ReLU(), bt.TensorizedLinear(64, 4, method="map")
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=256, epochs=4)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(256, 32), torch.randint(0, 4, (256,))
    losses = []
    for _ in range(40):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ard.loss(F.cross_entropy(model(x), y))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_cuda_autocast(layer_type, dtype):
    torch.manual_seed(0)
    dense, ours, x, call = example(layer_type, method="map")
    dense, ours, x = dense.cuda(), ours.cuda(), x.cuda()
    want = call(ours, x).detach()
    with torch.autocast("cuda", dtype=dtype):
        got = call(ours, x)
        assert got.dtype == call(dense, x).dtype
        prior = bt.prior_loss(ours)
    assert prior.dtype == torch.float32
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()
    got.float().square().mean().backward()
