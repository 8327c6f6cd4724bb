"""Optimizer state follows the factors through pruning's gauge change (``optimizer_state="transport"``).

The truth for the first moments is autograd: a loss of ``W`` alone (the likelihood's part) has, at the
re-gauged factors, a gradient that the carried-over momentum must equal. For second moments it is
``diag(JᵀJ)``, the exact second moment of that gradient for a ``C`` of uncorrelated unit entries, and Monte
Carlo for the transport function alone.
"""

import pytest
import torch
import torch.nn.functional as F

import bayestensor as bt
from bayestensor.functional import reconstruct_matrix
from bayestensor.tensors import POSTERIORS, FactorizedTensor
from bayestensor.tensors.optimizer_state import LINEAR_STATE, SQUARE_STATE, transport_gradient_state_

FORMATS = bt.available_formats()
SHAPE = ((2, 3, 4), (3, 2, 2))
#: optimizer, its first-moment key, and the factor between that state and one gradient after one step
FIRST_MOMENTS = {
    "adam": (lambda ps: torch.optim.Adam(ps, lr=0.0), "exp_avg", 0.1),
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.9), "momentum_buffer", 1.0),
}


def _gauge_scrambled(fmt, method):
    """A float64 tensor whose bonds are far from their SVD basis, so that the regauge moves every factor."""
    t = FactorizedTensor(fmt, *SHAPE, 3, method=method, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for f in t.factors:
            f.copy_(torch.randn(f.shape, generator=g, dtype=torch.float64))
    return t


def _loss_of_w(t, c):
    w = t.to_matrix()
    return (c * w).sum() + 0.25 * w.square().sum()


@pytest.mark.parametrize("name", FIRST_MOMENTS)
@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_regauge_maps_momentum_as_the_gradient_maps(fmt, method, name):
    make, key, scale = FIRST_MOMENTS[name]
    t = _gauge_scrambled(fmt, method)
    opt = make(list(t.parameters()))
    c = torch.randn(t.to_matrix().shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _loss_of_w(t, c).backward()
    opt.step()  # lr 0: the state holds one gradient, the factors stay
    before = [f.detach().clone() for f in t.factors]
    w = t.to_matrix().detach().clone()
    t.regauge_(opt, "transport")
    torch.testing.assert_close(t.to_matrix(), w)
    assert any((f - b).norm() > 1e-3 * b.norm() for f, b in zip(t.factors, before, strict=True))
    new_grads = torch.autograd.grad(_loss_of_w(t, c), list(t.factors))
    for f, grad in zip(t.factors, new_grads, strict=True):
        torch.testing.assert_close(opt.state[f][key], scale * grad)
    for plist in t.posterior.factor_parameters():  # an SVI spread's map is not linear: its state restarts
        assert all(p not in opt.state for p in plist)


def test_cp_rescaling_maps_second_moments_exactly():
    """CP's slices are rescaled (a diagonal map), where the squared-gradient rule is exact."""
    t = _gauge_scrambled("cp", "map")
    opt = torch.optim.Adam(list(t.parameters()), lr=0.0)
    c = torch.randn(t.to_matrix().shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _loss_of_w(t, c).backward()
    opt.step()
    t.regauge_(opt, "transport")
    new_grads = torch.autograd.grad(_loss_of_w(t, c), list(t.factors))
    for f, grad in zip(t.factors, new_grads, strict=True):
        torch.testing.assert_close(opt.state[f]["exp_avg_sq"], 1e-3 * grad.square())
        assert int(opt.state[f]["step"]) == 1


@pytest.mark.parametrize("partner", [False, True])
def test_squared_gradient_state_is_the_second_moment_of_the_mapped_gradients(partner):
    """Monte Carlo: gradients ``g = G Bᵀ`` of a ``G`` whose rows have uncorrelated entries (each row its own
    variance), so their coordinates along the bond are correlated as ``B``'s rows are; the mapped gradients'
    mean square against the transported ``exp_avg_sq``. Without the partner's Gram the rule assumes
    uncorrelated coordinates, which the draws then have (``B = I``)."""
    g = torch.Generator().manual_seed(0)
    rows, r, n, draws = 6, 4, 5, 100_000
    partner_b = torch.randn(r, n, generator=g, dtype=torch.float64) if partner else torch.eye(r, dtype=torch.float64)
    scale = torch.rand(rows, 1, generator=g, dtype=torch.float64) + 0.5
    grads = (scale * torch.randn(draws, rows, partner_b.shape[1], generator=g, dtype=torch.float64)) @ partner_b.T
    mix = torch.randn(r, r, generator=g, dtype=torch.float64)
    param = torch.zeros(rows, r, dtype=torch.float64)
    opt = torch.optim.Adam([param])
    opt.state[param] = {"step": torch.tensor(7.0), "exp_avg_sq": grads.square().mean(0), "exp_avg": grads[0].clone()}
    assert transport_gradient_state_(opt, param, 1, mix, gram=partner_b @ partner_b.T if partner else None)
    mapped = grads @ mix
    torch.testing.assert_close(opt.state[param]["exp_avg_sq"], mapped.square().mean(0), rtol=0.03, atol=0.0)
    torch.testing.assert_close(opt.state[param]["exp_avg"], mapped[0])
    assert int(opt.state[param]["step"]) == 7
    if partner:  # the uncorrelated rule is far off here: the Gram is what makes it right
        naive = grads.square().mean(0) @ mix.square()
        assert ((naive - mapped.square().mean(0)).abs() / mapped.square().mean(0)).max() > 0.1


@pytest.mark.parametrize("fmt", FORMATS)
def test_regauge_maps_second_moments_as_the_gradients_map(fmt):
    """The gradient of ``<C, W>`` is ``Jᵀ vec(C)`` (``J`` the Jacobian of ``W`` in a factor), so for ``C`` of
    uncorrelated unit entries its second moment is ``diag(JᵀJ)``, exactly: ``exp_avg_sq`` holding that before
    the regauge must hold the same at the regauged factors (float64)."""
    t = _gauge_scrambled(fmt, "map")

    def matrix(*factors):
        return reconstruct_matrix(t.fmt.name, list(factors), t.out_shape, t.in_shape, tuple(t.ranks))

    def second_moments():
        jac = torch.autograd.functional.jacobian(matrix, tuple(f.detach() for f in t.factors), vectorize=True)
        return [j.reshape(-1, *f.shape).square().sum(0) for j, f in zip(jac, t.factors, strict=True)]

    opt = torch.optim.Adam(list(t.parameters()))
    for f, v in zip(t.factors, second_moments(), strict=True):
        opt.state[f] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(f), "exp_avg_sq": v}
    t.regauge_(opt, "transport")
    for f, v in zip(t.factors, second_moments(), strict=True):
        torch.testing.assert_close(opt.state[f]["exp_avg_sq"], v)


def test_state_the_transport_does_not_know_is_dropped():
    """Adadelta's ``acc_delta`` accumulates squared updates, not gradients: the parameter restarts, as before."""
    t = _gauge_scrambled("tt", "map")
    opt = torch.optim.Adadelta(list(t.parameters()))
    t.to_matrix().square().sum().backward()
    opt.step()
    assert set(opt.state[t.factors[0]]) - {"step"} - LINEAR_STATE - SQUARE_STATE
    t.regauge_(opt, "transport")
    assert all(f not in opt.state for f in t.factors)


def _first_move_after_regauge(fmt, carry):
    """Adam on a planted regression; the relative change of ``W`` in the step after a regauge over the steps before."""
    torch.manual_seed(0)
    layer = bt.TensorizedLinear(
        64, 64, format=fmt, max_rank=8, in_shape=(4, 4, 4), out_shape=(4, 4, 4), method="map", dtype=torch.float64
    )
    planted = torch.randn(64, 3, dtype=torch.float64) @ torch.randn(3, 64, dtype=torch.float64) / 3
    x = torch.randn(512, 64, dtype=torch.float64)
    y = x @ planted.T
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(1)

    def move():
        before = layer.weight.to_matrix().detach()
        idx = torch.randint(0, 512, (64,), generator=order)
        loss = F.mse_loss(layer(x[idx]), y[idx]) + layer.weight.prior_loss() / 512
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float((layer.weight.to_matrix().detach() - before).norm() / before.norm())

    for _ in range(400):
        move()
    steady = sum(move() for _ in range(3)) / 3
    if carry:
        layer.weight.regauge_(opt, "transport")
    else:  # what pruning did before the transport
        layer.weight.regauge_()
        for f in layer.weight.factors:
            opt.state.pop(f)
    return move() / steady


@pytest.mark.parametrize("fmt", FORMATS)
def test_adam_goes_on_after_a_pruning_pass_without_a_jolt(fmt):
    """With the moments transported, the step after the regauge moves ``W`` about as the steps before it did.
    Reset (the default), Adam's first step is one of about ``lr`` per entry."""
    carried, reset = _first_move_after_regauge(fmt, True), _first_move_after_regauge(fmt, False)
    assert carried < 0.5 * reset, (carried, reset)


def test_reset_is_the_default_and_a_bad_choice_is_named():
    t = _gauge_scrambled("tt", "map")
    opt = torch.optim.Adam(list(t.parameters()))
    t.to_matrix().square().sum().backward()
    opt.step()
    t.regauge_(opt)
    assert all(f not in opt.state for f in t.factors)
    with pytest.raises(ValueError, match="optimizer_state must be one of 'reset', 'transport', got 'keep'"):
        t.regauge_(opt, "keep")
    with pytest.raises(ValueError, match="optimizer_state must be one of"):
        bt.prune(torch.nn.Sequential(), optimizer=opt, optimizer_state="rotate")


@pytest.mark.parametrize("choice", ["reset", "transport"])
def test_ard_passes_its_choice_to_every_pruning_pass(choice):
    layer = bt.TensorizedLinear(16, 16, format="tt", max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method="map")
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    ard = bt.ARD(layer, opt, num_data=64, epochs=2, no_kl_epochs=0, warmup_epochs=0, optimizer_state=choice)
    x = torch.randn(64, 16)
    ard.loss(F.mse_loss(layer(x), x)).backward()
    opt.step()
    assert ard.end_epoch() is not None
    assert all((f in opt.state) == (choice == "transport") for f in layer.weight.factors)
