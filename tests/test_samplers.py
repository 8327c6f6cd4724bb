"""Particle posteriors: the vectorised ensemble, SVGD and SGHMC against known posteriors and against MAP."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayestensor as bt
from _layers import EXAMPLES, example
from bayestensor.inference.svgd import DRIVES, kernel_gradient, rbf_kernel

FORMATS = bt.available_formats()


class Point(nn.Module):
    """A parameter vector whose forward is itself: kernel features equal to the parameters."""

    def __init__(self, init):
        super().__init__()
        self.theta = nn.Parameter(init)

    def forward(self, x):
        return self.theta


def _gaussian_potential(mu, cov):
    prec = torch.linalg.inv(cov)

    def potential(out):  # (P, 2) -> (P,)
        d = out - mu
        return 0.5 * ((d @ prec) * d).sum(1)

    return potential


MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)


def _check_moments(samples, mu, cov):
    mean, emp = samples.mean(0), torch.cov(samples.T)
    assert (mean - mu).norm() < 0.05, (mean, mu)
    assert (emp - cov).norm() / cov.norm() < 0.1, (emp, cov)


@pytest.mark.parametrize("drive", DRIVES)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_svgd_recovers_a_2d_gaussian(temperature, drive):
    """At temperature ``T`` the target ``p^{1/T}`` of a Gaussian is the Gaussian of covariance ``T Σ``.

    The features are the parameters (``J = I``), where both drives are the textbook SVGD.
    """
    potential = _gaussian_potential(MU, COV)
    ens = bt.Ensemble([Point(torch.randn(2, dtype=torch.float64) * 0.5 - 2) for _ in range(100)])
    opt = torch.optim.Adagrad(ens.parameters(), lr=0.2)
    svgd = bt.SVGD(ens, opt, num_data=1, temperature=temperature, drive=drive)
    for _ in range(2000):
        out = ens(None)
        svgd.step(potential(out), out)
    _check_moments(ens.particles["theta"].detach(), MU, temperature * COV)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sghmc_recovers_a_2d_gaussian(temperature):
    """At temperature ``T`` the target ``p^{1/T}`` of a Gaussian is the Gaussian of covariance ``T Σ``."""
    potential = _gaussian_potential(MU, COV)
    ens = bt.Ensemble([Point(torch.randn(2, dtype=torch.float64)) for _ in range(100)])
    sampler = bt.SGHMC(
        ens, num_data=1, lr=0.01, friction=0.1, temperature=temperature, burn_in=500, thin=20, max_samples=100 * 100
    )
    for _ in range(500 + 20 * 100):
        sampler.step(potential(ens(None)))
    samples = sampler.samples()
    assert samples.num_particles == sampler.num_samples == 100 * 100
    _check_moments(samples.particles["theta"].detach(), MU, temperature * COV)


def _conjugate_regression(seed, prior_in_features=False):
    """Fixed features, Gaussian prior N(0, 1/alpha), noise sigma: the exact posterior mean and covariance.

    The kernel features are the outputs on the data, a linear pullback of ``w``; with
    ``prior_in_features`` they are ``[X w, w]``, so that the losses reach ``w`` only through them.
    """
    g = torch.Generator().manual_seed(seed)
    n, d, sigma, alpha = 40, 2, 0.5, 1.0
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    cov = torch.linalg.inv(alpha * torch.eye(d, dtype=torch.float64) + x.T @ x / sigma**2)
    mean = cov @ x.T @ y / sigma**2

    def losses(ens):  # mean loss per datum: (Σ (y − x w)² / 2σ² + α ‖w‖² / 2) / n
        out = ens(x).squeeze(-1)  # (P, n)
        w = ens.particles["weight"].squeeze(1)  # (P, d)
        features = out
        if prior_in_features:
            features = torch.cat([out, w], 1)  # (P, n + d)
            out, w = features[:, :n], features[:, n:]
        return ((y - out) ** 2).mean(1) / (2 * sigma**2) + alpha * w.square().sum(1) / (2 * n), features

    models = [nn.Linear(d, 1, bias=False).double() for _ in range(200)]
    return n, mean, cov, losses, models


def _check_regression(w, mean, cov):
    assert (w.mean(0) - mean).norm() / mean.norm() < 0.1
    ratio = w.var(0) / cov.diagonal()
    assert ((ratio - 1).abs() < 0.1).all(), ratio


@pytest.mark.parametrize("seed", [0, 1])
def test_svgd_conjugate_linear_regression(seed):
    n, mean, cov, losses, models = _conjugate_regression(seed)
    ens = bt.Ensemble(models)
    svgd = bt.SVGD(ens, torch.optim.Adagrad(ens.parameters(), lr=0.1), num_data=n)
    for _ in range(2000):
        svgd.step(*losses(ens))  # kernel features: the outputs on the data, a pullback of w
    _check_regression(ens.particles["weight"].detach().squeeze(1), mean, cov)


@pytest.mark.parametrize("seed", [0, 1])
def test_function_drive_conjugate_linear_regression(seed):
    n, mean, cov, losses, models = _conjugate_regression(seed, prior_in_features=True)
    ens = bt.Ensemble(models)
    svgd = bt.SVGD(ens, torch.optim.Adagrad(ens.parameters(), lr=0.1), num_data=n, drive="function")
    for _ in range(2000):
        svgd.step(*losses(ens))
    _check_regression(ens.particles["weight"].detach().squeeze(1), mean, cov)


def test_drives_agree_where_the_features_are_linear():
    """``f = [X w, w]`` has the same Jacobian for every particle, so mixing ``a_j`` or ``J_j^T a_j`` is the same."""
    n, _, _, losses, models = _conjugate_regression(0, prior_in_features=True)
    torch.manual_seed(0)
    for m in models[:6]:
        nn.init.normal_(m.weight)
    grads = {}
    for drive in DRIVES:
        ens = bt.Ensemble(models[:6])
        bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=n, drive=drive).gradients(*losses(ens))
        grads[drive] = ens.particles["weight"].grad
    assert grads["parameters"].abs().max() > 0.1
    torch.testing.assert_close(grads["function"], grads["parameters"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layer_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_function_drive_against_each_particles_own_jacobian(layer_type, fmt):
    """``g_i = J_i^T [(1/P) Σ_j k_ij a_j + c_i] + (β/NP) Σ_j k_ij ∇prior_j``, by separate models (float64)."""
    model, x, call = _map_model(layer_type, fmt)
    n, beta, temperature, p = 50, 0.7, 0.5, 3
    ens = bt.Ensemble.clone(model, p, jitter=0.3)
    out = ens.map_particles(call, x)
    losses = torch.stack([_task_loss(o) for o in out.unbind(0)])
    svgd = bt.SVGD(
        ens,
        torch.optim.SGD(ens.parameters(), lr=0.1),
        num_data=n,
        kl_weight=beta,
        temperature=temperature,
        drive="function",
    )
    svgd.gradients(losses, out)
    # the same from P separate models, each differentiated on its own
    models = ens.particle_models()
    outs = [call(m, x) for m in models]
    kernel, two_h2 = rbf_kernel(torch.stack([o.detach() for o in outs]))
    a = [torch.autograd.grad(_task_loss(o), o, retain_graph=True)[0] for o in outs]
    f = torch.stack([o.detach() for o in outs]).flatten(1)
    repulsion = -(2 / two_h2) * (kernel.sum(1, keepdim=True) * f - kernel @ f) * temperature / (n * p)
    names = [name for name, _ in models[0].named_parameters()]
    prior_grads = [
        torch.autograd.grad(
            sum(t.prior_loss() for _, t in bt.inference.bayesian_tensors(m)) * beta / n,
            list(m.parameters()),
            allow_unused=True,
        )
        for m in models
    ]
    params, _ = ens.stacked()
    for i, m in enumerate(models):
        v = sum(kernel[i, j] * a[j] for j in range(p)) / p + repulsion[i].view_as(outs[i])
        pull = torch.autograd.grad(outs[i], list(m.parameters()), grad_outputs=v, retain_graph=True, allow_unused=True)
        for k, name in enumerate(names):
            expected = torch.zeros_like(params[name][i]) if pull[k] is None else pull[k].clone()
            for j in range(p):
                if prior_grads[j][k] is not None:
                    expected += kernel[i, j] * prior_grads[j][k] / p
            torch.testing.assert_close(params[name].grad[i], expected, rtol=1e-9, atol=1e-12, msg=f"{name} {i}")


@pytest.mark.parametrize("seed", [0, 1])
def test_sghmc_conjugate_linear_regression(seed):
    n, mean, cov, losses, models = _conjugate_regression(seed)
    ens = bt.Ensemble(models[:50])
    sampler = bt.SGHMC(ens, num_data=n, lr=0.01, friction=0.1, burn_in=1000, thin=10, max_samples=50 * 150)
    for _ in range(1000 + 10 * 150):
        sampler.step(losses(ens)[0])
    _check_regression(sampler.samples().particles["weight"].detach().squeeze(1), mean, cov)


def test_kernel_term_equals_its_autograd_gradient():
    f = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    kernel, two_h2 = rbf_kernel(f)
    # S = Σ_ij κ(f_i, f̄_j): the repulsion through each particle's own features
    d2 = (f[:, None, :] - f.detach()[None, :, :]).square().sum(-1)
    (auto,) = torch.autograd.grad(torch.exp(-d2 / two_h2).sum(), f)
    assert torch.allclose(kernel_gradient(f, kernel, two_h2), auto, rtol=1e-12, atol=1e-14)
    # with features = parameters it is the textbook term: Σ_j ∇_{x_j} k(x_j, x_i) = −∂S/∂f_i
    x = f.detach().clone().requires_grad_(True)
    textbook = torch.zeros_like(x)
    for i in range(len(x)):
        k = torch.exp(-(x - x.detach()[i]).square().sum(-1) / two_h2)  # k(x_j, x_i) for all j
        (g,) = torch.autograd.grad(k.sum(), x)
        textbook[i] = g.sum(0)
    assert torch.allclose(-kernel_gradient(f, kernel, two_h2), textbook, rtol=1e-12, atol=1e-14)
    # the median heuristic of the paper's code: 2h² = median_{i<j} ‖f_i − f_j‖² / log(P + 1)
    pairs = torch.pdist(f.detach()).square()
    assert two_h2 == pytest.approx(float(pairs.median()) / torch.log(torch.tensor(8.0)).item())


def _map_model(layer_type, fmt):
    torch.manual_seed(1)
    _, layer, x, call = example(layer_type, dtype=torch.float64, max_rank=3, format=fmt, method="map")
    return layer, x, call


def _task_loss(out):
    return out.square().mean() if out.is_floating_point() else out.double().mean()


@pytest.mark.parametrize("drive", DRIVES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layer_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_one_particle_svgd_is_map_gradient_descent(layer_type, fmt, drive):
    model, x, call = _map_model(layer_type, fmt)
    twin = copy.deepcopy(model)
    n = 50
    ens = bt.Ensemble([model])
    svgd = bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.05), num_data=n, drive=drive)
    opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    for _ in range(3):
        out = ens.map_particles(call, x)
        svgd.step(_task_loss(out[0]).unsqueeze(0), out)
        loss = _task_loss(call(twin, x)) + bt.prior_loss(twin) / n  # MAP: λ at its M-step for the current factors
        opt.zero_grad()
        loss.backward()
        opt.step()
    bt.update_rank_variances(twin)
    params, buffers = ens.stacked()
    for name, p in twin.named_parameters():
        torch.testing.assert_close(params[name][0], p.detach(), rtol=1e-10, atol=1e-12)
    for name, b in twin.named_buffers():
        torch.testing.assert_close(buffers[name][0], b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layer_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_particles_continue_the_map_fits_adam(layer_type, fmt):
    """Clones given the fit's Adam state: one particle goes on exactly as the MAP fit's own next Adam steps."""
    model, x, call = _map_model(layer_type, fmt)
    n = 50

    def map_step(m, opt):
        loss = _task_loss(call(m, x)) + bt.prior_loss(m) / n
        opt.zero_grad()
        loss.backward()
        opt.step()

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):  # the MAP fit: Adam has moments and a step count
        map_step(model, opt)
    bt.update_rank_variances(model)
    ens = bt.Ensemble.clone(model, 1)
    ens_opt = torch.optim.Adam(ens.parameters(), lr=0.01)
    assert ens.load_optimizer_state_(ens_opt, opt, model) == len(list(model.parameters()))
    svgd = bt.SVGD(ens, ens_opt, num_data=n)
    for _ in range(3):
        out = ens.map_particles(call, x)
        svgd.step(_task_loss(out[0]).unsqueeze(0), out)
        map_step(model, opt)
    bt.update_rank_variances(model)
    params, _ = ens.stacked()
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[name][0], p.detach(), rtol=1e-10, atol=1e-12)
        assert int(ens_opt.state[params[name]]["step"]) == int(opt.state[p]["step"]) == 6
    # several particles: each gets the fit's moments, repeated along the particle axis
    ens3 = bt.Ensemble.clone(model, 3, jitter=0.1)
    opt3 = torch.optim.Adam(ens3.parameters(), lr=0.01)
    ens3.load_optimizer_state_(opt3, opt, model)
    params3, _ = ens3.stacked()
    for name, p in model.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            state = opt3.state[params3[name]][key]
            assert state.shape == (3, *p.shape)
            for i in range(3):
                assert torch.equal(state[i], opt.state[p][key])
    with pytest.raises(ValueError, match="target does not optimise the particles' parameter"):
        ens3.load_optimizer_state_(torch.optim.Adam(model.parameters()), opt, model)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layer_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_vectorised_ensemble_equals_a_loop_of_models(layer_type, fmt):
    model, x, call = _map_model(layer_type, fmt)
    ens = bt.Ensemble.clone(model, 3, jitter=0.1)
    loop = ens.particle_models()
    assert any(not torch.equal(a, b) for a, b in zip(loop[0].parameters(), loop[1].parameters(), strict=True))
    out = ens.map_particles(call, x)
    for i, m in enumerate(loop):
        torch.testing.assert_close(out[i], call(m, x), rtol=1e-10, atol=1e-12)
    expected = torch.stack([sum(t.prior_loss() for _, t in bt.inference.bayesian_tensors(m)) for m in loop])
    torch.testing.assert_close(ens.prior_losses(), expected, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        for p in ens.parameters():
            p.mul_(1.5)  # the factors move; λ is stale until the M-step
    ens.update_rank_variances_()
    for i, m in enumerate(ens.particle_models()):
        for name, t in bt.inference.bayesian_tensors(m):
            stored = [lam.clone() for lam in t.rank_variances()]
            t.update_rank_variances_()
            for a, b in zip(stored, t.rank_variances(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14, msg=f"particle {i} {name}")


def test_pruning_keeps_what_any_particle_uses_and_every_weight():
    torch.manual_seed(3)
    base = bt.TensorizedLinear(16, 16, format="cp", max_rank=4, method="map").double()
    models = []
    for used in (2, 3):  # particle 0 uses 2 of the 4 CP components, particle 1 uses 3
        m = copy.deepcopy(base)
        with torch.no_grad():
            m.weight.factors[0][:, used:] = 0
        models.append(m)
    ens = bt.Ensemble(models)
    dense = [m.weight.to_matrix().detach() for m in models]
    report = ens.prune_()
    assert report.before == {"": [4]} and report.after == {"": [3]}
    assert report.params_after < report.params_before
    for m, w in zip(ens.particle_models(), dense, strict=True):
        assert m.weight.ranks == [3]
        torch.testing.assert_close(m.weight.to_matrix(), w, rtol=1e-9, atol=1e-12)


def test_predict_averages_the_particles_and_checks_num_samples():
    torch.manual_seed(0)
    ens = bt.Ensemble([nn.Linear(4, 3) for _ in range(5)])
    x = torch.randn(6, 4)
    mean, std = bt.predict(ens, x, transform=lambda z: z.softmax(-1))
    probs = torch.stack([m(x).softmax(-1) for m in ens.particle_models()])
    torch.testing.assert_close(mean, probs.mean(0))
    torch.testing.assert_close(std, probs.std(0, unbiased=False))
    first, _ = bt.predict(ens, x, num_samples=2, transform=lambda z: z.softmax(-1))
    torch.testing.assert_close(first, probs[:2].mean(0))
    with pytest.raises(ValueError, match="num_samples=6 exceeds the ensemble's 5 particles"):
        bt.predict(ens, x, num_samples=6)


def test_ensemble_checkpoint_round_trip_after_pruning_and_particle_count_check():
    torch.manual_seed(0)
    model = bt.TensorizedLinear(16, 12, format="ttm", max_rank=4, method="map")
    ens = bt.Ensemble.clone(model, 3, jitter=0.05)
    with torch.no_grad():
        ens.particles["weight/factors/0"][..., 2:] *= 1e-6  # the second bond's last components, in every particle
        ens.particles["weight/factors/1"][:, 2:] *= 1e-6
    ens.prune_(threshold=1e-3)
    x = torch.randn(5, 16)
    fresh = bt.Ensemble.clone(model, 3)
    fresh.load_state_dict(ens.state_dict())
    torch.testing.assert_close(fresh(x), ens(x))
    assert bt.ranks(fresh.base) == bt.ranks(ens.base)
    with pytest.raises(ValueError, match="holds 3 particles, this ensemble has 4"):
        bt.Ensemble.clone(model, 4).load_state_dict(ens.state_dict())


def test_svi_model_clones_into_draws_of_q():
    torch.manual_seed(0)
    model = bt.TensorizedLinear(8, 8, format="tt", max_rank=3, method="svi")
    ens = bt.Ensemble.clone(model, 4)
    particles = ens.particle_models()
    assert all(t.method == "map" for m in particles for _, t in bt.inference.bayesian_tensors(m))
    torch.testing.assert_close(particles[0].weight.factors[0], model.weight.factors[0])  # particle 1: the mean
    assert not torch.equal(particles[1].weight.factors[0], model.weight.factors[0])


def test_bad_sampler_inputs():
    ens = bt.Ensemble([nn.Linear(2, 1) for _ in range(2)])
    with pytest.raises(ValueError, match="num_particles must be an int >= 1, got 0"):
        bt.Ensemble.clone(nn.Linear(2, 1), 0)
    with pytest.raises(ValueError, match="at least one particle"):
        bt.Ensemble([])
    with pytest.raises(ValueError, match=r"parameter 'weight' has shape \(1, 3\), expected \(1, 2\)"):
        bt.Ensemble([nn.Linear(2, 1), nn.Linear(3, 1)])
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
            bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10, bandwidth=bad)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0 \(1 = the posterior\)"):
            bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10, temperature=bad)
        with pytest.raises(ValueError, match=r"temperature must be a finite number > 0 \(1 = the posterior\)"):
            bt.SGHMC(ens, num_data=10, lr=0.1, temperature=bad)
    for bad in (0.0, -0.1, 1.5, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match=r"friction must be a number in \(0, 1\]"):
            bt.SGHMC(ens, num_data=10, lr=0.1, friction=bad)
    for bad in (True, float("inf"), -1.0):
        with pytest.raises(ValueError, match=r"kl_weight must be a number in \[0, inf\)"):
            bt.SGHMC(ens, num_data=10, lr=0.1, kl_weight=bad)
        with pytest.raises(ValueError, match=r"kl_weight must be a number in \[0, inf\)"):
            bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10, kl_weight=bad)
    with pytest.raises(ValueError, match=r"lr must be a number in \(0, inf\), got '1e-3'"):
        bt.SGHMC(ens, num_data=10, lr="1e-3")
    with pytest.raises(ValueError, match=r"jitter must be a number in \[0, inf\), got inf"):
        bt.Ensemble.clone(nn.Linear(2, 1), 2, jitter=float("inf"))
    with pytest.raises(ValueError, match="max_samples must be an int >= the number of chains"):
        bt.SGHMC(ens, num_data=10, lr=0.1, max_samples=1)
    svgd = bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10)
    out = ens(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"one mean task loss per particle, shape \(2,\), got \(3,\)"):
        svgd.step(torch.zeros(3), out)
    with pytest.raises(ValueError, match="drive must be one of 'parameters', 'function', got 'weights'"):
        bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10, drive="weights")
    function = bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10, drive="function")
    with pytest.raises(ValueError, match=r"one mean task loss per particle, shape \(2,\), got \(3,\)"):
        function.step(torch.zeros(3), out)
    weight = ens.particles["weight"]  # (2, 1, 2): a loss term on the parameters, not on the features
    with pytest.raises(ValueError, match="depend on the particles only through features"):
        function.step(out.square().mean((1, 2)) + weight.square().sum((1, 2)), out)
    with pytest.raises(ValueError, match="no samples kept yet"):
        bt.SGHMC(ens, num_data=10, lr=0.1, burn_in=5).samples()


def _pruned_in_half():
    """An ensemble of two CP models whose last two of four components are zero in both, and its pruned twin."""
    torch.manual_seed(3)
    base = bt.TensorizedLinear(16, 16, format="cp", max_rank=4, method="map").double()
    with torch.no_grad():
        base.weight.factors[0][:, 2:] = 0
    return bt.Ensemble([copy.deepcopy(base), copy.deepcopy(base)])


def test_samplers_refuse_particles_replaced_under_them():
    """``prune_`` replaces the particles: a sampler built before would move nothing, or break on the old shapes."""
    x = torch.randn(5, 16, dtype=torch.float64)

    def losses(ens):
        out = ens(x)
        return out.square().mean((1, 2)), out

    ens = _pruned_in_half()
    svgd = bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=10)
    sghmc = bt.SGHMC(ens, num_data=10, lr=1e-3, max_samples=4)
    sghmc.step(losses(ens)[0])
    held = sghmc.state_dict()
    steps, momentum = held["steps"], {n: v.clone() for n, v in held["momentum"].items()}
    sghmc.step(losses(ens)[0])  # a state_dict is a snapshot: later steps leave it as it was
    assert held["steps"] == steps and len(held["kept"]) == 1
    assert all(torch.equal(held["momentum"][n], v) for n, v in momentum.items())
    with pytest.raises(ValueError, match="features must depend on the particles through the graph"):
        svgd.step(losses(ens)[0], losses(ens)[1].detach())
    assert ens.prune_(threshold=0.1).after[""][0] < 4  # the components SGHMC's noise moved off zero go
    with pytest.raises(RuntimeError, match="SVGD's optimizer holds none of the ensemble's particles"):
        svgd.step(*losses(ens))
    with pytest.raises(RuntimeError, match=r"particles \['weight.factors.0'.* changed shape since this SGHMC"):
        sghmc.step(losses(ens)[0])


def test_cloned_particles_keep_a_frozen_part_and_integer_like_counts_are_taken():
    import numpy as np

    torch.manual_seed(0)
    model = nn.Sequential(bt.TensorizedLinear(8, 8, format="tt", max_rank=2, method="map"), nn.Linear(8, 3))
    model[1].requires_grad_(False)
    ens = bt.Ensemble.clone(model, 3, jitter=0.1)
    params, _ = ens.stacked()
    assert all(torch.equal(params["1.weight"][i], model[1].weight) for i in range(3))
    assert not torch.equal(params["0.weight.factors.0"][1], model[0].weight.factors[0])  # the trained part moves
    bt.SVGD(ens, torch.optim.SGD(ens.parameters(), lr=0.1), num_data=np.int64(100), kl_weight=np.float32(0.5))
    probs, _ = bt.predict(ens, torch.randn(4, 8), num_samples=np.int64(2), transform=lambda z: z.softmax(-1))
    assert probs.shape == (4, 3)


def test_ood_auroc_checks_its_inputs():
    p = torch.softmax(torch.randn(6, 3), -1)
    assert bt.inference.ood_auroc(p, torch.full((4, 3), 1 / 3)) == 1.0  # uniform predictions: the most uncertain
    assert bt.inference.ood_auroc(p.bfloat16(), torch.full((4, 3), 1 / 3).bfloat16()) == 1.0  # half precision sums
    with pytest.raises(ValueError, match=r"probs_out must be class probabilities \(rows of entries >= 0 summing"):
        bt.inference.ood_auroc(p, torch.randn(4, 3))  # logits, not probabilities
    with pytest.raises(ValueError, match="must have the same classes, got 3 and 5"):
        bt.inference.ood_auroc(p, torch.softmax(torch.randn(4, 5), -1))
    with pytest.raises(ValueError, match=r"probs_in must be class probabilities of shape \(N >= 1, C\), got \(6,\)"):
        bt.inference.ood_auroc(p[:, 0], p)


def test_svgd_particles_spread_and_fit_a_classifier():
    """Eight particles of a MAP-fitted TT classifier: SVGD keeps them distinct and the fit stays good."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(1) > 0).long()
    model = nn.Sequential(
        bt.TensorizedLinear(16, 16, format="tt", max_rank=4, method="map"), nn.ReLU(), nn.Linear(16, 2)
    )
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        loss = F.cross_entropy(model(x), y) + bt.prior_loss(model) / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ens = bt.Ensemble.clone(model, 8, jitter=0.05)
    svgd = bt.SVGD(ens, torch.optim.Adam(ens.parameters(), 1e-3), num_data=len(x))
    for _ in range(100):
        logits = ens(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(8), reduction="none").view(8, -1).mean(1)
        svgd.step(losses, logits)
    probs, spread = bt.predict(ens, x, transform=lambda z: z.softmax(-1))
    assert (probs.argmax(1) == y).double().mean() > 0.95
    assert spread.max() > 1e-3  # the particles did not collapse onto one function


def test_from_scratch_particles_are_fresh_draws_at_the_given_ranks():
    def build():
        return nn.Sequential(bt.TensorizedLinear(16, 12, format="cp", max_rank=4, method="map"), nn.ReLU())

    target = {"0": [2]}
    ens = bt.Ensemble.from_scratch(build, 3, ranks=target)
    particles = ens.particle_models()
    assert all(bt.ranks(m) == target for m in particles)
    assert not torch.equal(particles[0][0].weight.factors[0], particles[1][0].weight.factors[0])
    torch.manual_seed(5)
    fresh = build()[0].weight.weight_rms()
    torch.manual_seed(5)
    ens = bt.Ensemble.from_scratch(build, 1, ranks=target)
    assert ens.particle_models()[0][0].weight.weight_rms() == pytest.approx(fresh, rel=1e-5)  # rescaled to its init
    for t in bt.inference.bayesian_tensors(ens.base):  # λ at its M-step for the truncated factors
        stored = [lam.clone() for lam in t[1].rank_variances()]
        t[1].update_rank_variances_()
        assert all(torch.allclose(a, b) for a, b in zip(stored, t[1].rank_variances(), strict=True))
    with pytest.raises(ValueError, match=r"layer '0': expected ranks between 1 and \[4\] per bond, got \[5\]"):
        bt.Ensemble.from_scratch(build, 2, ranks={"0": [5]})
    with pytest.raises(ValueError, match=r"ranks name the layers \['1'\], the built model has \['0'\]"):
        bt.Ensemble.from_scratch(build, 2, ranks={"1": [2]})


@pytest.mark.parametrize("vectorize", [True, False])
def test_batch_norm_statistics_are_kept_per_particle(vectorize):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)) for _ in range(3)]
    ens = bt.Ensemble(models)
    ens.vectorize = vectorize
    loop = ens.particle_models()
    x = torch.randn(8, 4)
    out = ens.train()(x)
    for i, m in enumerate(loop):
        torch.testing.assert_close(out[i], m.train()(x))
    for i, m in enumerate(ens.particle_models()):  # the running statistics moved like each model's own
        torch.testing.assert_close(m[1].running_mean, loop[i][1].running_mean)
        torch.testing.assert_close(m[1].running_var, loop[i][1].running_var)
        assert not torch.equal(m[1].running_mean, torch.zeros(3))
    evaluated = ens.eval()(x)
    for i, m in enumerate(loop):
        torch.testing.assert_close(evaluated[i], m.eval()(x))


@pytest.mark.parametrize("method", ["svgd", "sghmc"])
def test_a_sampler_method_on_a_layer_points_to_the_ensemble(method):
    with pytest.raises(
        ValueError, match=rf"method='{method}' samples the whole model.*bt.Ensemble with bt.{method.upper()}"
    ):
        bt.TensorizedLinear(8, 8, format="tt", max_rank=2, method=method)


def test_sghmc_samples_run_like_their_chains():
    ens = bt.Ensemble([nn.Linear(3, 2) for _ in range(2)])
    ens.vectorize = False  # e.g. "auto" chose a loop for a convolutional model on CPU
    sampler = bt.SGHMC(ens, num_data=10, lr=0.01, thin=1, max_samples=4)
    x = torch.randn(5, 3)
    for _ in range(3):
        sampler.step(ens(x).square().mean((1, 2)))
    samples = sampler.samples()
    assert samples.num_particles == 4 and samples.vectorize is False  # the 2 most recent states of both chains
    kept = sampler.kept[-1][0]["weight"]
    torch.testing.assert_close(samples.particles["weight"][2:], kept)
