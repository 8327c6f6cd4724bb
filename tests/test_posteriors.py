"""Every registered posterior, on every format, through one battery: moments against Monte Carlo,
gauge maps, pruning, checkpoints and conversion to a point mass."""

import math

import pytest
import torch

import bayestensor as bt
from bayestensor.inference.ensemble import as_point_mass
from bayestensor.tensors import POSTERIORS, FactorizedTensor, get_posterior
from bayestensor.tensors.statistics import slice_sums

FORMATS = bt.available_formats()
SHAPE = ((2, 3, 2), (3, 2, 2))
DRAWS = 20000


def tensor(fmt, method, rank=3):
    torch.manual_seed(0)
    t = FactorizedTensor(fmt, *SHAPE, rank, method=method, dtype=torch.float64)
    with torch.no_grad():  # give a stochastic posterior a spread the Monte Carlo checks can see
        for plist in t.posterior.factor_parameters():
            for p in plist:
                p.uniform_(-2.0, -0.5)
    return t


def draws(t, n=DRAWS):
    with torch.no_grad():
        return [torch.stack(s) for s in zip(*(t.posterior.sample(list(t.factors)) for _ in range(n)), strict=True)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_second_moments_are_the_mean_square_of_draws(fmt, method):
    t = tensor(fmt, method)
    second = t.posterior.second_moments(list(t.factors))
    for f, (d, m2) in enumerate(zip(draws(t), second, strict=True)):
        mc = d.square().mean(0)
        err = d.square().std(0) / DRAWS**0.5
        assert ((mc - m2).abs() <= 5 * err + 1e-12).all(), f"factor {f}"
        if not t.posterior.stochastic:
            torch.testing.assert_close(d[0], t.factors[f].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_a_gauge_map_moves_the_posterior_with_its_factor(fmt, method):
    """Rotating the rank axis of a factor, ``G -> G T``, maps q's second moments like those of ``G T``, ``G ~ q``."""
    t = tensor(fmt, method)
    group = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)[0]
    f, axis = group.members[0]
    r = t.factors[f].shape[axis]
    gen = torch.Generator().manual_seed(1)
    mat = torch.randn(r, r, generator=gen, dtype=torch.float64)
    for leading in (False, True):
        before = draws(t)[f]  # (n, *shape)

        def apply(g, leading=leading, axis=axis):
            if leading:
                return torch.movedim(torch.tensordot(mat, torch.movedim(g, axis, 0), dims=1), 0, axis)
            return torch.movedim(torch.movedim(g, axis, -1) @ mat, -1, axis)

        expected = torch.stack([apply(b) for b in before])
        with torch.no_grad():
            t.factors[f].copy_(apply(t.factors[f]))
            t.posterior.rotate_(f, axis, mat, leading=leading)
        got = t.posterior.second_moments(list(t.factors))[f]
        mc, err = expected.square().mean(0), expected.square().std(0) / DRAWS**0.5
        assert ((mc - got).abs() <= 5 * err + 1e-9 * mc.abs().max()).all(), f"leading={leading}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_slice_rescaling_moves_the_posterior_with_its_factor(fmt, method):
    t = tensor(fmt, method)
    f, axis = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)[0].members[0]
    scale = torch.linspace(0.5, 2.0, t.factors[f].shape[axis], dtype=torch.float64)
    shape = [1] * t.factors[f].dim()
    shape[axis] = -1
    expected = [m2 * scale.view(shape).square() for m2 in t.posterior.second_moments(list(t.factors))[f : f + 1]]
    with torch.no_grad():
        t.factors[f].mul_(scale.view(shape))
        t.posterior.rescale_(f, axis, scale)
    torch.testing.assert_close(t.posterior.second_moments(list(t.factors))[f], expected[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_pruning_truncates_the_posterior_and_a_checkpoint_restores_it(fmt, method):
    t = tensor(fmt, method, rank=3)
    with torch.no_grad():  # switch off the last component of the first bond
        for f, axis in t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)[0].members:
            t.factors[f].select(axis, -1).zero_()
    t.prune_(regauge=False)
    assert t.ranks[0] < 3
    for plist in t.posterior.factor_parameters():
        assert [p.shape for p in plist] == [f.shape for f in t.factors]
    fresh = FactorizedTensor(fmt, *SHAPE, 3, method=method, dtype=torch.float64)
    fresh.load_state_dict(t.state_dict())
    assert fresh.ranks == t.ranks
    torch.testing.assert_close(fresh.prior_loss(), t.prior_loss(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", list(POSTERIORS))
def test_regauge_keeps_the_weight_and_the_posterior_consistent(method):
    t = tensor("tt", method, rank=3)
    w = t.to_matrix().detach().clone()
    t.regauge_()
    torch.testing.assert_close(t.to_matrix(), w, rtol=1e-9, atol=1e-12)
    for plist in t.posterior.factor_parameters():
        assert all(torch.isfinite(p).all() for p in plist)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_regauge_splits_a_bond_between_its_members_as_the_posterior_says(fmt, method):
    """After ``regauge_`` the last bond it touches has ``‖slice_r(G_k)‖ = c_r^{1/n} κ_k`` on every member ``k``.

    ``κ`` = ``gauge_split`` of the slices' entry counts: all 1 for a point mass (equal slice norms), equal
    mean square per entry for a spread posterior. (Earlier bonds share a factor with later ones, whose
    rotation moves their norms, so only the last is checked exactly.)
    """
    t = tensor(fmt, method)
    t.regauge_()
    group = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)[-1]
    norms = [slice_sums(t.factors[f].detach().square(), axis).sqrt() for f, axis in group.members]
    entries = [t.factors[f].numel() // t.factors[f].shape[axis] for f, axis in group.members]
    split = t.posterior.gauge_split(entries)
    assert math.prod(split) == pytest.approx(1.0, rel=1e-12)
    assert (split == [1.0] * len(entries)) != t.posterior.stochastic
    size = torch.stack(norms).prod(0) ** (1.0 / len(norms))
    for norm, kappa in zip(norms, split, strict=True):
        torch.testing.assert_close(norm, size * kappa, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", list(POSTERIORS))
def test_gauge_split_minimises_the_prior_profiled_over_the_rank_variance(method):
    """``gauge_split`` against a numerical minimum of ``(D/2) log Σ_k E_k(t) − H[q](t)`` over ``Π_k t_k = 1``.

    One rank index with three member slices (4, 9 and 25 entries), i.e. the prior term with ``λ`` at
    its M-step ``M / D`` (a flat hyper-prior). How ``E_k`` and ``H`` move when a slice is rescaled is
    read off the posterior itself (``rescale_`` at one ``t``), then the minimum is found by L-BFGS in
    ``log t``.
    """
    entries = [4, 9, 25]
    torch.manual_seed(3)
    slices = [torch.randn(1, i, dtype=torch.float64) for i in entries]  # rank axis first, one index
    post = get_posterior(method)
    post.create_(slices, [1.0] * len(slices))
    with torch.no_grad():
        for plist in post.factor_parameters():
            for p in plist:
                p.uniform_(-2.0, -0.5)
    with torch.no_grad():
        energy = torch.stack([e.sum() for e in post.second_moments(slices)])
        entropy = post.entropy(slices)
    probe = torch.tensor([1.7, 0.6, 1.3], dtype=torch.float64)  # how the posterior follows a rescaling
    scaled = [m * probe[k] for k, m in enumerate(slices)]
    for k in range(len(slices)):
        post.rescale_(k, 0, probe[k].view(1))
    with torch.no_grad():
        torch.testing.assert_close(torch.stack([e.sum() for e in post.second_moments(scaled)]), energy * probe**2)
        gain = (post.entropy(scaled) - entropy) / float(
            sum(i * math.log(p) for i, p in zip(entries, probe.tolist(), strict=True))
        )
    entropy_per_log_t = torch.tensor(entries, dtype=torch.float64) * (float(gain) if post.stochastic else 0.0)
    if post.stochastic:
        assert float(gain) == pytest.approx(1.0, rel=1e-9)

    def objective(free):
        log_t = torch.cat([free, -free.sum().view(1)])  # Π t_k = 1
        return 0.5 * sum(entries) * (energy * (2 * log_t).exp()).sum().log() - (entropy_per_log_t * log_t).sum()

    free = torch.zeros(len(entries) - 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([free], tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = objective(free)
        value.backward()
        return value

    for _ in range(5):
        opt.step(closure)
    t = torch.cat([free, -free.sum().view(1)]).detach().exp()
    size = (energy * t**2).sqrt()
    got = size / size.prod() ** (1 / len(entries))
    torch.testing.assert_close(got, torch.tensor(post.gauge_split(entries), dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("method", list(POSTERIORS))
def test_a_component_within_its_posterior_noise_is_inactive_only_under_a_spread_posterior(fmt, method):
    """A component at 5 % of the largest (above the 0.1 % threshold) whose means sit inside their spread.

    ``signal_to_noise`` is checked against ``‖μ‖² / (Σ E_q[w²] − ‖μ‖²)`` from ``second_moments``; the
    component is inactive exactly when the posterior has spread (the point mass's ratio is ``None``), and
    active again when ``by_noise=False`` leaves the ratio out.
    """
    t = tensor(fmt, method)
    group = t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks)[0]
    with torch.no_grad():
        n = len(group.members)
        for f, axis in group.members:  # contributions c = [1, 0.05, 0.5, ...], split equally over the members
            for r in range(t.ranks[group.bond]):
                piece = t.factors[f].select(axis, r)
                piece.mul_((1.0 if r == 0 else 0.05 if r == 1 else 0.5) ** (1 / n) / piece.norm())
        if t.posterior.stochastic:  # the small component's spread: 3× its mean's RMS on every member
            for (f, axis), raw in zip(
                group.members, (t.posterior.raw_scales[f] for f, _ in group.members), strict=True
            ):
                rms = t.factors[f].select(axis, 1).square().mean().sqrt()
                raw.select(axis, 1).copy_(torch.log(torch.expm1(3 * rms)).expand_as(raw.select(axis, 1)))
    c = t.contributions()[0]
    assert float(c[1] / c.max()) > 10 * bt.tensors.DEFAULT_PRUNE_THRESHOLD
    for f, axis in group.members:
        ratio = t.posterior.signal_to_noise(list(t.factors), f, axis)
        if not t.posterior.stochastic:
            assert ratio is None
            continue
        second = slice_sums(t.posterior.second_moments(list(t.factors))[f].detach(), axis)
        mean_sq = slice_sums(t.factors[f].detach().square(), axis)
        torch.testing.assert_close(ratio, mean_sq / (second - mean_sq), rtol=1e-9, atol=0)
        assert float(ratio[1]) == pytest.approx(1 / 9, rel=1e-6)
    active = t.active_masks()[0]
    assert bool(active[0]) and bool(active[1]) != t.posterior.stochastic
    assert bool(t.active_masks(by_noise=False)[0][1])


@pytest.mark.parametrize("method", list(POSTERIORS))
def test_point_mass_conversion_draws_from_q(method):
    model = torch.nn.Sequential(bt.TensorizedLinear(12, 12, format="tt", max_rank=3, method=method))
    t = model[0].weight
    point = as_point_mass(model, sample=True)
    pt = point[0].weight
    assert not pt.posterior.stochastic and not list(pt.posterior.parameters())
    same = all(torch.equal(a, b) for a, b in zip(pt.factors, t.factors, strict=True))
    assert same != t.posterior.stochastic  # a draw of a spread posterior moves the factors; a point mass stays


def test_an_svi_checkpoint_from_before_posterior_objects_loads():
    t = tensor("ttm", "svi")
    old = {k.replace("posterior.", ""): v for k, v in t.state_dict().items()}
    assert any(k.startswith("raw_scales.") for k in old)
    fresh = FactorizedTensor("ttm", *SHAPE, 3, method="svi", dtype=torch.float64)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.prior_loss(), t.prior_loss(), rtol=1e-12, atol=0)


def test_unknown_method_names_the_registered_posteriors():
    with pytest.raises(ValueError, match=r"unknown method 'laplace'.*'map'.*'svi'"):
        get_posterior("laplace")
    with pytest.raises(ValueError, match="unknown method 'laplace'"):
        FactorizedTensor("tt", *SHAPE, 3, method="laplace")
