"""Bayesian terms against analytic truth: KL, M-step, ELBO gradients, pruning, prediction."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

import bayestensor as bt
from bayestensor.tensors import POSTERIORS, FactorizedTensor
from bayestensor.tensors.posteriors.mean_field import inverse_softplus

FORMATS = bt.available_formats()
SHAPE = ((2, 3, 2), (3, 2, 2))


def tensor(fmt, method, rank=3, **kw):
    return FactorizedTensor(fmt, *SHAPE, rank, method=method, dtype=torch.float64, **kw)


def log_prior_of_factors(t, factors):
    """log p(W | λ) = Σ_bonds Σ_slices log N(w; 0, λ_r), written out independently of rank_statistics."""
    total = torch.zeros((), dtype=torch.float64)
    for group, lam in zip(t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks), t.rank_variances(), strict=True):
        for f, axis in group.members:
            shape = [1] * factors[f].dim()
            shape[axis] = -1
            total = total + Normal(0.0, lam.sqrt().view(shape)).log_prob(factors[f]).sum()
    return total


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rank_update", ["em", "gradient"])
def test_map_prior_loss_is_negative_log_joint(fmt, rank_update):
    """Value and gradients (factors; λ when it is learned) against the log joint written out independently."""
    t = tensor(fmt, "map", rank_update=rank_update)
    params = [p for p in t.parameters() if p.requires_grad]
    expected = -log_prior_of_factors(t, list(t.factors)) - sum(
        t.prior.log_prob(lam).sum() for lam in t.rank_variances()
    )
    ours = t.prior_loss()
    torch.testing.assert_close(ours, expected)
    for got, want in zip(torch.autograd.grad(ours, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_svi_kl_against_monte_carlo(fmt):
    t = tensor(fmt, "svi")
    with torch.no_grad():
        for r in t.posterior.raw_scales:
            r.uniform_(-3, -1)
    mu, sigma = list(t.factors), t.posterior.scales()
    n = 4000
    draws = []
    with torch.no_grad():
        for _ in range(n):
            w = [m + s * torch.randn_like(m) for m, s in zip(mu, sigma, strict=True)]
            log_q = sum(Normal(m, s).log_prob(x).sum() for m, s, x in zip(mu, sigma, w, strict=True))
            draws.append(log_q - log_prior_of_factors(t, w))
        mc = torch.stack(draws)
        hyper = sum(t.prior.log_prob(lam).sum() for lam in t.rank_variances())
        analytic = t.prior_loss() + hyper
    stderr = mc.std() / math.sqrt(n)
    assert abs(float(analytic - mc.mean())) < 4 * float(stderr)


def test_cp_kl_equals_torch_distributions_kl():
    """CP governs every entry by exactly one bond, so the KL is the plain Gaussian KL per entry."""
    t = tensor("cp", "svi")
    lam = t.rank_variances()[0]
    kl = sum(
        kl_divergence(Normal(m, s), Normal(torch.zeros_like(m), lam.sqrt().expand_as(m))).sum()
        for m, s in zip(t.factors, t.posterior.scales(), strict=True)
    )
    torch.testing.assert_close(t.prior_loss(), kl - t.prior.log_prob(lam).sum())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prior", bt.available_priors())
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_m_step_is_a_stationary_minimum_of_the_loss_in_lambda(fmt, prior, method):
    t = tensor(fmt, method, prior=prior)
    t.update_rank_variances_()
    lams = t.rank_variances()
    for lam in lams:
        lam.requires_grad_(True)
    loss = t.prior_loss()
    grads = torch.autograd.grad(loss, lams)
    for lam, g in zip(lams, grads, strict=True):
        assert torch.allclose(g * lam, torch.zeros_like(g), atol=1e-8)  # d loss / d log λ = 0
    with torch.no_grad():
        for lam in lams:
            lam.mul_(1.05)
        assert t.prior_loss() > loss


def test_svi_elbo_gradient_matches_hand_derivation():
    """Rank-1 CP matrix W = u vᵀ, loss ½‖W_s − T‖² + KL, with W_s a reparameterised sample."""
    t = FactorizedTensor("cp", (3,), (4,), 1, method="svi", dtype=torch.float64, prior="log_uniform")
    with torch.no_grad():
        for r in t.posterior.raw_scales:
            r.uniform_(-2, 0)
    target = torch.randn(3, 4, dtype=torch.float64)
    t.train()
    torch.manual_seed(7)
    u_s, v_s = t.tensors()
    loss = 0.5 * (u_s @ v_s.T - target).square().sum() + t.prior_loss()
    loss.backward()
    with torch.no_grad():
        (mu_u, mu_v), (rho_u, rho_v) = list(t.factors), list(t.posterior.raw_scales)
        sig_u, sig_v = F.softplus(rho_u), F.softplus(rho_v)
        eps_u, eps_v = (u_s - mu_u) / sig_u, (v_s - mu_v) / sig_v
        resid = u_s @ v_s.T - target
        lam = t.rank_variances()[0]
        g_u, g_v = resid @ v_s, resid.T @ u_s  # data gradient w.r.t. the sampled factors
        # KL part: d/dμ = μ/λ, d/dσ = σ/λ − 1/σ; chain rule dσ/dρ = sigmoid(ρ), dw/dρ = ε·sigmoid(ρ)
        exp_mu_u, exp_mu_v = g_u + mu_u / lam, g_v + mu_v / lam
        exp_rho_u = (g_u * eps_u + sig_u / lam - 1 / sig_u) * torch.sigmoid(rho_u)
        exp_rho_v = (g_v * eps_v + sig_v / lam - 1 / sig_v) * torch.sigmoid(rho_v)
    for p, e in ((mu_u, exp_mu_u), (mu_v, exp_mu_v), (rho_u, exp_rho_u), (rho_v, exp_rho_v)):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_regauge_keeps_the_weight(fmt, method):
    layer = bt.TensorizedLinear(
        12, 12, format=fmt, max_rank=3, in_shape=(3, 4), out_shape=(4, 3), method=method, dtype=torch.float64
    )
    before = layer.full_weight()
    layer.weight.regauge_()
    torch.testing.assert_close(layer.full_weight(), before, rtol=1e-9, atol=1e-12)


def _has_two_member_bond(fmt: str) -> bool:
    t = FactorizedTensor(fmt, *SHAPE, 2)
    return any(len(g.members) == 2 for g in t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if _has_two_member_bond(f)])
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_regauge_empties_what_a_bond_holds_beyond_its_unfoldings_and_prune_removes_it(fmt, method):
    """With its neighbours pruned to rank 1 a bond can be wider than one side's unfolding (TT: ``r_{k-1} n_k < r_k``).

    Such a bond carries at most ``p = min(m, n)`` directions, ``m`` and ``n`` the two sides' unfolding
    sizes; ``regauge_`` keeps ``W`` (float64), leaves indices ``p..r-1`` exactly zero, and ``prune`` takes
    the bond to at most ``p``. (These bonds used to be skipped, so ARD could never rank their directions:
    a planted TT bond stayed at its starting 7 of a planted 2, README.)
    """
    model = nn.Sequential(bt.TensorizedLinear(9, 18, format=fmt, max_rank=64, in_shape=(3, 1, 3), out_shape=(3, 2, 3),
                                              bias=False, method=method, dtype=torch.float64))  # fmt: skip
    t = model[0].weight  # at full ranks
    groups = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)
    wide = max((g for g in groups if len(g.members) == 2), key=lambda g: t.ranks[g.bond])
    t.truncate_([torch.arange(t.ranks[g.bond] if g is wide else 1) for g in groups])
    (fa, aa), (fb, ab) = wide.members
    r = t.ranks[wide.bond]
    p = min(t.factors[fa].numel() // r, t.factors[fb].numel() // r)
    assert p < r, (t.ranks, p)  # the case under test exists
    w = t.to_matrix().detach().clone()
    t.regauge_()
    torch.testing.assert_close(t.to_matrix(), w, rtol=1e-9, atol=1e-12)
    c = t.contributions()[wide.bond]
    assert bool((c[:p] > 0).all()) and bool((c[p:] == 0).all()), c
    bt.prune(model, threshold=1e-6)
    assert t.ranks[wide.bond] <= p
    torch.testing.assert_close(t.to_matrix(), w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_pruning_a_decomposed_weight_of_lower_rank_than_its_bonds_keeps_it(fmt, method):
    """A float32 weight of matrix rank 3, decomposed at bonds up to 12: several bonds hold directions at rounding level.

    ``regauge_`` treats those as zero. Inverting them instead scaled an SVI posterior's spread by up to
    ``1/ε``, and its signal-to-noise rule then pruned a TT bond from 12 to 1, changing ``W`` by 87 %.
    """
    g = torch.Generator().manual_seed(0)
    dense = nn.Linear(77, 45)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(45, 3, generator=g) @ torch.randn(3, 77, generator=g))
    layer = bt.TensorizedLinear.from_dense(dense, format=fmt, max_rank=12, method=method)
    w = layer.full_weight().detach().clone()
    bt.prune(layer)  # the default threshold (1e-3 of a bond's largest component), by_noise on
    assert (layer.full_weight() - w).norm() / w.norm() < 1e-3


def shrink_some_components(layer):
    """Make half of every bond's rank components negligible, as ARD does."""
    with torch.no_grad():
        for group in layer.weight.fmt.rank_groups(layer.weight.out_shape, layer.weight.in_shape, layer.weight.ranks):
            idx = torch.arange(layer.weight.ranks[group.bond] // 2, layer.weight.ranks[group.bond])
            for f, axis in group.members:
                factor = layer.weight.factors[f]
                factor.index_fill_(axis, idx, 0.0)
                factor.index_add_(axis, idx, 1e-6 * torch.randn_like(factor.index_select(axis, idx)))
        layer.weight.update_rank_variances_()


@pytest.mark.parametrize("fmt", FORMATS)
def test_prune_is_physical_keeps_outputs_and_the_optimizer(fmt):
    model = nn.Sequential(
        bt.TensorizedLinear(
            16, 16, format=fmt, max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method="map", dtype=torch.float64
        ),
        nn.Tanh(),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(32, 16, dtype=torch.float64)
    model(x).sum().backward()
    opt.step()
    shrink_some_components(model[0])
    before_out, before_params = model(x), bt.count_params(model)
    report = bt.prune(model, threshold=1e-3, optimizer=opt)
    assert report.changed and bt.count_params(model) < before_params
    assert all(r >= 1 for rs in bt.ranks(model).values() for r in rs)
    assert (model(x) - before_out).norm() / before_out.norm() < 0.01
    assert all(p.shape == st["exp_avg"].shape for p, st in opt.state.items())
    assert set(map(id, opt.param_groups[0]["params"])) == set(map(id, model.parameters()))
    model(x).sum().backward()
    opt.step()  # the optimizer keeps working on the truncated parameters


def _degenerate_cp_layer(method):
    """A CP layer of 4 components holding a planted rank-2 weight: one component split in two halves
    (parallel in every mode) and a pair that cancels exactly (same vectors, opposite signs)."""
    g = torch.Generator().manual_seed(0)
    layer = bt.TensorizedLinear(
        16, 16, format="cp", max_rank=5, in_shape=(4, 4), out_shape=(4, 4), method=method, dtype=torch.float64
    )
    a = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(4)]  # 2 planted terms + 1 spurious
    with torch.no_grad():
        for n, f in enumerate(layer.weight.factors):
            halves = a[n][:, 0] * (0.5 if n == 0 else 1.0)  # term 0 = halves + halves (only mode 0 halved)
            sign = -1.0 if n == 0 else 1.0
            f.copy_(torch.stack([halves, halves, a[n][:, 1], a[n][:, 2], sign * a[n][:, 2]], 1))
    planted = sum(torch.einsum("a,b,c,d->abcd", *(a[n][:, r] for n in range(4))) for r in range(2)).reshape(16, 16)
    return layer, planted


@pytest.mark.parametrize("method", list(POSTERIORS))
def test_prune_merges_a_degenerate_cp_fit_to_its_planted_rank(method):
    layer, planted = _degenerate_cp_layer(method)
    t = layer.weight
    torch.testing.assert_close(t.to_matrix(), planted)
    assert t.active_ranks() == [5]  # every component is large: the threshold alone removes none
    opt = torch.optim.Adam(layer.parameters(), lr=1e-9)  # a step that creates Adam's state, W kept
    layer(torch.randn(8, 16, dtype=torch.float64)).sum().backward()
    opt.step()
    before = t.to_matrix().detach().clone()
    bt.prune(layer, threshold=1e-3, optimizer=opt)
    assert t.ranks == [2]
    assert (t.to_matrix() - before).norm() / before.norm() <= 1e-3
    assert all(p.shape == st["exp_avg"].shape for p, st in opt.state.items())
    layer(torch.randn(8, 16, dtype=torch.float64)).sum().backward()
    opt.step()  # training goes on with the same optimizer


def test_cp_merge_finds_the_planted_rank_when_a_cancelling_pair_is_the_largest():
    """A planted rank-2 tensor plus a large cancelling pair: ALS from the two largest components (the pair) misses,
    and the merge finds the planted rank from another start."""
    from bayestensor.tensors.decompose import _cp_full, cp_als, cp_merge

    g = torch.Generator().manual_seed(0)
    a = [torch.randn(n, 2, generator=g, dtype=torch.float64) for n in (4, 5, 3, 4)]
    c = [torch.randn(n, 1, generator=g, dtype=torch.float64) * 3 for n in (4, 5, 3, 4)]
    factors = [torch.cat([a[n], c[n], c[n] * (-1.0 if n == 0 else 1.0)], 1) for n in range(4)]
    planted = _cp_full(a)
    torch.testing.assert_close(_cp_full(factors), planted)
    pair = cp_als(planted, 2, n_iter=100, init=[f[:, 2:] for f in factors])
    assert (_cp_full(pair) - planted).norm() / planted.norm() > 0.1  # the old warm start alone
    for restarts in (0, 3):  # the HOSVD start finds it; random starts change nothing then
        keep, fit = cp_merge(factors, 1e-3, restarts=restarts)
        assert keep == [2, 3] and len(fit) == 4 and fit[0].shape == (4, 2)  # the two largest indices, refitted
        assert (_cp_full(fit) - planted).norm() / planted.norm() <= 1e-3


def test_cp_rank_floor_never_excludes_a_fit_that_exists():
    """Soundness against fits that exist: whenever ALS reaches error ``e`` with ``j`` components, the floor at
    ``max_change = e`` is at most ``j``; and a generic planted CP's floor is its rank (the unfoldings' rank)."""
    from bayestensor.tensors.decompose import _cp_full, cp_als, cp_rank_floor

    g = torch.Generator().manual_seed(5)
    for dims, rank in (((4, 5, 6), 3), ((3, 4, 4, 5), 6), ((2, 3, 4, 2, 3), 5)):
        a = [torch.randn(n, rank, generator=g, dtype=torch.float64) for n in dims]
        planted = _cp_full(a)
        assert cp_rank_floor(planted, 1e-8) == rank
        noise = torch.randn(dims, generator=g, dtype=torch.float64)
        noisy = planted + 0.05 * planted.norm() / noise.norm() * noise
        for j in range(1, rank + 2):
            err = min(
                float((_cp_full(cp_als(noisy, j, n_iter=300, init=init, generator=g)) - noisy).norm() / noisy.norm())
                for init in (None, None, [f[:, :j] for f in a] if j <= rank else None)
            )
            assert cp_rank_floor(noisy, err * (1 + 1e-9)) <= j


def test_cp_merge_of_a_generic_fit_runs_no_als(monkeypatch):
    """Random factors below the balanced unfolding's size: the floor proves that no fewer components fit, so the
    merge returns at once instead of a bisection of ALS refits (the unfolding's tail is checked independently)."""
    from bayestensor.tensors import decompose

    calls = []
    original = decompose.cp_als
    monkeypatch.setattr(decompose, "cp_als", lambda *a, **k: calls.append(1) or original(*a, **k))
    g = torch.Generator().manual_seed(2)
    factors = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    full = decompose._cp_full(factors)
    sv = torch.linalg.svdvals(full.reshape(16, 16))
    assert float(sv[6:].square().sum().sqrt() / full.norm()) < 1e-10  # the unfolding has rank 6 ...
    assert float(sv[5] / full.norm()) > 1e-3  # ... and no rank-5 matrix, hence no 5-component CP, is within 1e-3
    assert decompose.cp_merge(factors, 1e-3) is None
    assert calls == []


def test_cp_spread_is_the_posteriors_expected_distance_of_w_from_its_mean():
    """``cp_spread`` against a Monte Carlo estimate of ``sqrt(E‖W − W̄‖²) / ‖W̄‖`` under independent Gaussian entries."""
    from bayestensor.tensors.decompose import _cp_full, cp_spread

    g = torch.Generator().manual_seed(3)
    means = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (3, 4, 2)]
    stds = [0.3 * torch.rand(n, 3, generator=g, dtype=torch.float64) for n in (3, 4, 2)]
    draws = 200_000
    sampled = [
        m + s * torch.randn(draws, *m.shape, generator=g, dtype=torch.float64) for m, s in zip(means, stds, strict=True)
    ]
    w = torch.einsum("bir,bjr,bkr->bijk", *sampled)
    mean_w = _cp_full(means)
    mc = math.sqrt((w - mean_w).square().sum((1, 2, 3)).mean() / mean_w.square().sum())
    exact = cp_spread(means, [m.square() + s.square() for m, s in zip(means, stds, strict=True)])
    assert exact == pytest.approx(mc, rel=0.01)
    assert cp_spread(means, [m.square() for m in means]) == 0.0  # a point mass has no spread


@pytest.mark.parametrize("method", list(POSTERIORS))
def test_cp_merge_by_noise_accepts_a_refit_within_the_posterior_spread(method):
    """A planted rank-2 weight plus a third component of 1 % of its norm: no rank-2 refit is within the pruning
    threshold, so only a posterior whose spread of ``W`` exceeds the refit's change merges it, and only with
    ``by_noise``."""
    from bayestensor.tensors.decompose import cp_als, cp_spread

    g = torch.Generator().manual_seed(1)
    a = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(4)]
    planted = torch.einsum("ar,br,cr,dr->abcd", *(f[:, :2] for f in a))
    extra = torch.einsum("a,b,c,d->abcd", *(f[:, 2] for f in a))
    scale = (0.01 * planted.norm() / extra.norm()) ** 0.25
    factors = [torch.cat([f[:, :2], f[:, 2:] * scale], 1) for f in a]
    full = torch.einsum("ar,br,cr,dr->abcd", *factors)
    change = (
        min(  # the best rank-2 refit over several starts: about the extra component's 1 %
            float(
                (torch.einsum("ar,br,cr,dr->abcd", *cp_als(full, 2, n_iter=200, init=init, generator=g)) - full).norm()
            )
            for init in [[f[:, :2] for f in factors], None, None, None]
        )
        / float(full.norm())
    )
    assert 1e-3 < change < 0.02
    for std, merges in ((0.02, True), (0.001, False)):  # spreads of about 5 % and 0.2 %
        layer = bt.TensorizedLinear(
            16, 16, format="cp", max_rank=3, in_shape=(4, 4), out_shape=(4, 4), method=method, dtype=torch.float64
        )
        t = layer.weight
        with torch.no_grad():
            for p, f in zip(t.factors, factors, strict=True):
                p.copy_(f)
            for plist in t.posterior.factor_parameters():  # the mean-field posterior's raw scales
                for p in plist:
                    p.copy_(inverse_softplus(torch.full_like(p, std)))
        spread = cp_spread(list(t.factors), t.posterior.second_moments(list(t.factors)))
        expected = t.posterior.stochastic and merges
        assert (spread > change) == expected
        before = t.to_matrix().detach().clone()
        assert not t.merge_components_(1e-3)  # by the threshold alone: the extra component is needed
        assert t.merge_components_(1e-3, by_noise=True) == expected
        assert t.ranks == ([2] if expected else [3])
        moved = float((t.to_matrix().detach() - before).norm() / before.norm())
        assert moved <= max(1e-3, spread) and (moved > 1e-3) == expected


def test_merge_leaves_a_generic_cp_fit_and_other_formats_alone():
    torch.manual_seed(0)
    for fmt in bt.available_formats():
        layer = bt.TensorizedLinear(16, 16, format=fmt, max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method="map")
        before = layer.weight.to_matrix().detach().clone()
        assert not layer.weight.merge_components_(1e-3)  # random factors: no fewer components reproduce W
        assert layer.weight.ranks == bt.ranks(layer)[""] and torch.equal(layer.weight.to_matrix(), before)


def test_prune_never_drops_a_bond_below_rank_one():
    layer = bt.TensorizedLinear(16, 16, format="tt", max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method="map")
    with torch.no_grad():
        for f in layer.weight.factors:
            f.mul_(1e-20)
    bt.prune(layer, threshold=0.999)
    assert all(r >= 1 for r in layer.weight.ranks)


def test_pruned_checkpoint_loads_into_a_fresh_model():
    def build():
        torch.manual_seed(0)
        return bt.TensorizedLinear(16, 16, format="ttm", max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method="map")

    layer = build()
    shrink_some_components(layer)
    bt.prune(layer)
    fresh = build()
    fresh.load_state_dict(layer.state_dict())
    assert fresh.weight.ranks == layer.weight.ranks
    x = torch.randn(4, 16)
    torch.testing.assert_close(fresh(x), layer(x))


def test_predict_and_prior_loss_edge_cases():
    svi = bt.TensorizedLinear(8, 4, format="tt", max_rank=2, method="svi")
    svi.eval()
    mean, std = bt.predict(svi, torch.randn(5, 8), num_samples=8)
    assert mean.shape == (5, 4) and (std > 0).all()
    mapped = bt.TensorizedLinear(8, 4, format="tt", max_rank=2, method="map")
    _, std = bt.predict(mapped, torch.randn(5, 8))
    assert (std == 0).all()
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        bt.predict(svi, torch.randn(5, 8), num_samples=0)
    plain = nn.Linear(3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert float(bt.prior_loss(plain)) == 0.0
        assert float(bt.prior_loss(plain)) == 0.0
    assert len([w for w in caught if "no tensorized layers" in str(w.message)]) == 1


def test_kl_weight_schedule():
    assert bt.kl_weight(1, no_kl_epochs=2, warmup_epochs=4) == 0.0
    assert bt.kl_weight(4, no_kl_epochs=2, warmup_epochs=4, max_weight=0.5) == 0.25
    assert bt.kl_weight(10, no_kl_epochs=2, warmup_epochs=4, max_weight=0.5) == 0.5
    with pytest.raises(ValueError, match=">= 0"):
        bt.kl_weight(1, warmup_epochs=-1)


def test_ranks_names_layers():
    model = nn.Sequential(
        bt.TensorizedLinear(8, 8, format="tt", max_rank=2),
        nn.ReLU(),
        bt.TensorizedLinear(8, 4, format="cp", max_rank=3),
    )
    assert bt.ranks(model) == {"0": model[0].weight.ranks, "2": [3]}


def _scale_(t, alpha):
    """Multiply every factor mean and posterior std of ``t`` by ``alpha`` in place."""
    with torch.no_grad():
        for f in t.factors:
            f.mul_(alpha)
        for raw in getattr(t.posterior, "raw_scales", []):
            raw.copy_(inverse_softplus(F.softplus(raw) * alpha))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prior", bt.available_priors())
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_scale_free_prior_ignores_the_overall_scale_and_is_the_fixed_one_rescaled(fmt, prior, method):
    torch.manual_seed(0)
    free = tensor(fmt, method, prior=prior, prior_kwargs={"scale_free": 1})
    torch.manual_seed(0)
    fixed = tensor(fmt, method, prior=prior, prior_kwargs={"scale_floor": 0})
    assert free.scale_free and not fixed.scale_free
    torch.testing.assert_close(free.prior_loss(), fixed.prior_loss())  # ε = ε_0 at construction
    before, lam_before = free.prior_loss(), [lam.clone() for lam in free.rank_variance_update()]
    _scale_(free, 1.7)
    _scale_(fixed, 1.7)
    torch.testing.assert_close(free.prior_loss(), before)  # unchanged under W -> α W (α on every factor)
    assert not torch.allclose(fixed.prior_loss(), before)
    for new, old in zip(free.rank_variance_update(), lam_before, strict=True):
        torch.testing.assert_close(new, old)  # the M-step sees the same relative energies
    # independent form: the fixed-scale prior at the factors rescaled to ε_0 (means and stds alike)
    energy, count = free.flat_rank_statistics()
    c = float((free.prior_reference / (energy.sum() / count.sum())).sqrt().detach())
    _scale_(fixed, c)
    torch.testing.assert_close(free.prior_loss(), fixed.prior_loss())
    # the gradient has no component along the scale direction: d/dα R(α W) = 0 at α = 1
    grads = torch.autograd.grad(free.prior_loss(), list(free.factors))
    radial = sum((g * f).sum() for g, f in zip(grads, free.factors, strict=True))
    if method == "svi":
        sigma_grads = torch.autograd.grad(free.prior_loss(), list(free.posterior.raw_scales))
        radial = radial + sum(
            (g * F.softplus(r) / torch.sigmoid(r)).sum()  # dσ/dρ = sigmoid(ρ), so ρ's share of σ·∂R/∂σ
            for g, r in zip(sigma_grads, free.posterior.raw_scales, strict=True)
        )
    assert abs(float(radial)) < 1e-8 * max(1.0, float(before.abs()))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prior", bt.available_priors())
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_scale_floor_is_the_fixed_prior_above_it_and_scale_free_below(fmt, prior, method):
    phi = 0.1
    torch.manual_seed(0)
    floored = tensor(fmt, method, prior=prior, prior_kwargs={"scale_floor": phi})
    torch.manual_seed(0)
    fixed = tensor(fmt, method, prior=prior, prior_kwargs={"scale_floor": 0})
    assert floored.scale_floor == phi and fixed.scale_floor == 0.0 and not fixed.scale_relative
    n = len(floored.factors)
    # above the floor (W at φ^{1/2} of its scale when every factor shrinks alike) it is the fixed-scale prior
    for t in (floored, fixed):
        _scale_(t, phi ** (0.5 / n))
    torch.testing.assert_close(floored.prior_loss(), fixed.prior_loss())
    for a, b in zip(floored.rank_variance_update(), fixed.rank_variance_update(), strict=True):
        torch.testing.assert_close(a, b)

    # below it (W at φ/2, then φ/8): shrinking further changes nothing in the prior's cross-entropy part (SVI's
    # entropy changes by the stds' log, as it would for any prior; the floor adds no correction for it)
    def cross(t):
        return t.prior_loss() + t.posterior.entropy(list(t.factors)).to(torch.float64)

    _scale_(floored, (0.5 * phi**0.5) ** (1.0 / n))
    below = cross(floored)
    _scale_(floored, 0.25 ** (1.0 / n))
    torch.testing.assert_close(cross(floored), below)
    # independent form: the fixed-scale prior at the factors rescaled until W is at φ of its start (means and stds)
    torch.manual_seed(0)
    fixed = tensor(fmt, method, prior=prior, prior_kwargs={"scale_floor": 0})
    start_rms = fixed.weight_rms()
    _scale_(fixed, (phi / 8) ** (1.0 / n))
    _scale_(fixed, (phi * start_rms / fixed.weight_rms()) ** (1.0 / n))
    assert fixed.weight_rms() == pytest.approx(phi * start_rms, rel=1e-9)
    torch.testing.assert_close(cross(floored), cross(fixed))
    # so the prior no longer pulls the whole layer: no gradient along the scale direction below the floor
    grads = torch.autograd.grad(cross(floored), list(floored.factors))
    radial = sum((g * f).sum() for g, f in zip(grads, floored.factors, strict=True))
    if method == "svi":
        sigma_grads = torch.autograd.grad(cross(floored), list(floored.posterior.raw_scales))
        radial = radial + sum(
            (g * F.softplus(r) / torch.sigmoid(r)).sum()
            for g, r in zip(sigma_grads, floored.posterior.raw_scales, strict=True)
        )
    assert abs(float(radial)) < 1e-8 * max(1.0, float(below.abs()))
    if method == "svi":  # means shrinking on their own below the floor raise the prior term: they are pushed back
        before = floored.prior_loss()
        with torch.no_grad():
            for f in floored.factors:
                f.mul_(0.5 ** (1.0 / n))
        assert floored.prior_loss() > before


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("prior", bt.available_priors())
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_m_step_memo_of_the_scale_floor_changes_neither_value_nor_gradient(fmt, prior, method, monkeypatch):
    # above its floor the M-step notes it, and the loss at the same parameters skips W's norm: the clamp is
    # inactive there, so the value and every gradient are those of the full computation, bit for bit
    import bayestensor.tensors.factorized as factorized

    calls = []
    norm = factorized.squared_norm
    monkeypatch.setattr(factorized, "squared_norm", lambda *a: calls.append(1) or norm(*a))
    phi = 0.1
    torch.manual_seed(0)
    t = tensor(fmt, method, prior=prior, prior_kwargs={"scale_floor": phi})
    params = list(t.parameters())

    def loss_and_grads():
        loss = t.prior_loss()
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    def assert_same(a, b):
        assert torch.equal(a[0], b[0])
        for x, y in zip(a[1], b[1], strict=True):
            assert (x is None and y is None) or torch.equal(x, y)

    n = len(t.factors)
    for scale, above in ((1.0, True), ((0.5 * phi) ** (1.0 / n), False)):  # at the start; W at φ/2 of it
        _scale_(t, scale)
        t.update_rank_variances_()
        assert t._known_above_floor() is above
        calls.clear()
        fast = loss_and_grads()
        assert len(calls) == (0 if above else 1)
        t._above_floor = None  # the full computation at the same parameters and λ
        assert_same(fast, loss_and_grads())
    # a memo of other parameters is not used: an in-place update invalidates it
    _scale_(t, 1.0 / scale)
    t.update_rank_variances_()
    assert t._known_above_floor()
    with torch.no_grad():
        t.factors[0].mul_(1.5)
    calls.clear()
    t.prior_loss()
    assert not t._known_above_floor() and len(calls) == 1


@pytest.mark.parametrize("prior_kwargs", [{"scale_floor": 0}, {"scale_free": 1}, {"scale_floor": 0.3}, {}])
def test_scale_free_prior_keeps_a_layer_that_batch_norm_follows(prior_kwargs):
    """Batch norm makes the loss blind to the layer's scale; the fixed-scale prior then shrinks it without end."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = torch.tanh(x @ torch.randn(16, 4, generator=g)) @ torch.randn(4, 1, generator=g)
    torch.manual_seed(1)
    layer = bt.TensorizedLinear(16, 16, format="tt", max_rank=4, method="map", prior_kwargs=prior_kwargs)
    net = nn.Sequential(layer, nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    ard = bt.ARD(net, opt, num_data=len(x), epochs=30, no_kl_epochs=0, warmup_epochs=0, prune_every=1000)
    start = layer.weight.weight_rms()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bt.CollapseWarning)
        for _ in range(30):
            for idx in torch.arange(len(x)).split(32):
                loss = ard.loss(F.mse_loss(net(x[idx]), y[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            ard.end_epoch()
    ratio = layer.weight.weight_rms() / start
    net.eval()
    with torch.no_grad():
        fit = float(F.mse_loss(net(x), y) / y.var())
    floor = prior_kwargs.get("scale_floor", bt.priors.DEFAULT_SCALE_FLOOR)
    if "scale_free" in prior_kwargs:
        assert ratio > 0.5 and fit < 0.35, (ratio, fit)
    elif floor:
        assert 0.8 * floor < ratio and fit < 0.35, (ratio, fit)  # the prior stops pulling at φ of the start's RMS
    else:
        assert ratio < 0.1, ratio  # and it would go on shrinking


def test_scale_free_prior_checks_its_value_and_survives_export():
    with pytest.raises(ValueError, match="scale_free must be 0 or 1, got 2"):
        bt.TensorizedLinear(8, 8, method="map", prior_kwargs={"scale_free": 2})
    for bad in (-0.1, 1, True, "0.1"):
        with pytest.raises(ValueError, match=r"scale_floor must be a number in \[0, 1\), got"):
            bt.TensorizedLinear(8, 8, method="map", prior_kwargs={"scale_floor": bad})
    with pytest.raises(ValueError, match="cannot be combined"):
        bt.TensorizedLinear(8, 8, method="map", prior_kwargs={"scale_free": 1, "scale_floor": 0.1})
    floored = bt.TensorizedLinear(8, 8, format="tt", max_rank=2, method="map", prior_kwargs={"scale_floor": 0.25})
    twin = bt.TensorizedLinear(**floored.export_kwargs)
    twin.load_state_dict(floored.state_dict())
    assert twin.weight.scale_floor == 0.25
    torch.testing.assert_close(twin.weight.prior_reference, floored.weight.prior_reference)
    layer = bt.TensorizedLinear(8, 8, format="tt", max_rank=2, method="svi", prior_kwargs={"scale_free": 1})
    kwargs = layer.export_kwargs
    assert kwargs["prior_kwargs"]["scale_free"] == 1.0
    twin = bt.TensorizedLinear(**kwargs)
    twin.load_state_dict(layer.state_dict())
    assert twin.weight.scale_free
    torch.testing.assert_close(twin.weight.prior_reference, layer.weight.prior_reference)
    torch.testing.assert_close(twin.weight.prior_loss(), layer.weight.prior_loss())


def test_checkpoints_from_before_the_scale_floor_load_with_it_off():
    torch.manual_seed(0)
    layer = bt.TensorizedLinear(16, 16, format="tt", max_rank=3, method="map")
    assert layer.weight.scale_floor == bt.priors.DEFAULT_SCALE_FLOOR and layer.weight.scale_relative
    old = {k: v for k, v in layer.state_dict().items() if not k.endswith(("prior.scale_floor", "prior_reference"))}
    twin = bt.TensorizedLinear(16, 16, format="tt", max_rank=3, method="map")
    twin.load_state_dict(old)  # strict: no missing key
    assert twin.weight.scale_floor == 0.0 and not twin.weight.scale_relative  # trained with a fixed scale, kept so
    fixed = bt.TensorizedLinear(16, 16, format="tt", max_rank=3, method="map", prior_kwargs={"scale_floor": 0})
    fixed.load_state_dict(old)
    _scale_(twin.weight, 0.05)
    _scale_(fixed.weight, 0.05)
    torch.testing.assert_close(twin.weight.prior_loss(), fixed.weight.prior_loss())
    # and the other way round: a floored checkpoint into a layer built without the floor takes the floor
    fixed.load_state_dict(layer.state_dict())
    assert fixed.weight.scale_floor == bt.priors.DEFAULT_SCALE_FLOOR and fixed.weight.scale_relative
    torch.testing.assert_close(fixed.weight.prior_loss(), layer.weight.prior_loss())
    off = bt.TensorizedLinear(16, 16, format="tt", max_rank=3, method="map", prior_kwargs={"scale_floor": 0})
    again = bt.TensorizedLinear(16, 16, format="tt", max_rank=3, method="map")
    again.load_state_dict(off.state_dict())  # a saved floor of 0 stays 0
    assert again.weight.scale_floor == 0.0 and not again.weight.scale_relative
