"""Every registered posterior, on every format, through one battery: moments against Monte Carlo,
gauge maps, pruning, checkpoints and conversion to a point mass."""

import pytest
import torch

import bayestensor as bt
from bayestensor.inference.ensemble import as_point_mass
from bayestensor.tensors import POSTERIORS, FactorizedTensor, get_posterior

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
