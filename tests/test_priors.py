"""Rank priors against scipy densities and numerical maximisers of the M-step objective."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import bayestensor as bt
from bayestensor.priors import get_prior

# name -> (kwargs, reference log density of λ as a scipy expression, or None for improper priors)
PRIORS = {
    "half_cauchy": ({"eta": 0.7}, lambda lam: stats.halfcauchy(scale=0.7).logpdf(np.sqrt(lam))),
    "inverse_gamma": ({"alpha": 2.0, "beta": 0.3}, lambda lam: stats.invgamma(a=2.0, scale=0.3).logpdf(lam)),
    "log_uniform": ({}, None),
}


def test_every_registered_prior_has_a_row():
    assert set(bt.available_priors()) == set(PRIORS)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_log_prob_matches_reference(name):
    kwargs, ref = PRIORS[name]
    prior = get_prior(name, **kwargs)
    lam = torch.tensor([1e-4, 0.03, 0.5, 2.0, 17.0], dtype=torch.float64)
    ours = prior.log_prob(lam)
    if ref is None:  # improper p(s) ∝ 1/s: only differences are defined, log p(λ1) − log p(λ2) = log(s2/s1)
        torch.testing.assert_close(ours - ours[0], torch.log(lam[0].sqrt() / lam.sqrt()))
    else:
        torch.testing.assert_close(ours, torch.from_numpy(ref(lam.numpy())))


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_log_prob_follows_hyperparameters_changed_in_place_and_the_dtype(name):
    """The prior keeps its distribution object between calls; a changed buffer or dtype must not reuse it."""
    kwargs, _ = PRIORS[name]
    prior = get_prior(name, **kwargs)
    lam = torch.tensor([0.03, 0.5, 2.0], dtype=torch.float64)
    prior.log_prob(lam.float())  # builds and keeps it, on float32 copies of the float64 buffers
    doubled = {k: 2 * v for k, v in kwargs.items()}
    with torch.no_grad():
        for key, value in doubled.items():
            getattr(prior, key).fill_(value)
    low = prior.log_prob(lam.float())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, get_prior(name, **doubled).log_prob(lam).float())
    torch.testing.assert_close(prior.log_prob(lam), get_prior(name, **doubled).log_prob(lam))


@pytest.mark.parametrize("name", sorted(PRIORS))
@pytest.mark.parametrize("energy,count", [(0.3, 12.0), (1e-5, 200.0), (40.0, 3.0), (0.0, 8.0)])
def test_map_update_maximises_its_objective(name, energy, count):
    prior = get_prior(name, **PRIORS[name][0])

    def neg_objective(log_lam):
        lam = torch.tensor(math.exp(log_lam), dtype=torch.float64)
        value = -0.5 * count * lam.log() - energy / (2 * lam) + prior.log_prob(lam)
        return -float(value)

    closed = float(prior.map_update(torch.tensor(energy, dtype=torch.float64), torch.tensor(count)))
    if energy == 0.0 and prior.placed_on == "scale":
        assert closed == 0.0  # -(D/2) log λ + log p(√λ) increases without bound as λ -> 0
        return
    res = optimize.minimize_scalar(neg_objective, bounds=(-40, 10), method="bounded", options={"xatol": 1e-10})
    assert math.isclose(math.log(closed), res.x, abs_tol=1e-4)


def test_half_cauchy_update_is_the_authors_closed_form():
    eta, m, d = 0.1, 2.5, 37.0
    expected = (m - d * eta**2 + math.sqrt(m**2 + (2 * d + 8) * eta**2 * m + eta**4 * d**2)) / (2 * d + 4)
    got = get_prior("half_cauchy", eta=eta).map_update(torch.tensor(m), torch.tensor(d))
    assert math.isclose(float(got), expected, rel_tol=1e-6)


def test_bad_priors_raise():
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        get_prior("laplace")
    with pytest.raises(ValueError, match="eta must be a finite positive number, got -1"):
        get_prior("half_cauchy", eta=-1)
    with pytest.raises(ValueError, match="beta must be a finite positive number, got 0"):
        get_prior("inverse_gamma", beta=0)
    with pytest.raises(ValueError, match="bad hyper-parameters"):
        get_prior("log_uniform", eta=1.0)
    with pytest.raises(ValueError, match="unknown method 'vi'"):
        bt.TensorizedLinear(8, 8, method="vi")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_half_cauchy_update_keeps_weak_components_without_cancellation(dtype):
    """M ≪ Dη²: the textbook root loses every digit in float32 (it gave λ = 0 and a huge M/λ term);
    the reference is a bracketing root-finder on (D+2)λ² + (Dη² − M)λ − Mη², whose terms do not cancel."""
    eta = 1.0
    energy, count = [2.9e-6, 1e-12], [232.0, 5000.0]
    got = get_prior("half_cauchy", eta=eta).map_update(
        torch.tensor(energy, dtype=dtype), torch.tensor(count, dtype=dtype)
    )
    for g, m, d in zip(got.tolist(), energy, count, strict=True):
        ref = optimize.brentq(
            lambda lam, m=m, d=d: (d + 2) * lam**2 + (d * eta**2 - m) * lam - m * eta**2, 0.0, m, xtol=1e-30, rtol=1e-14
        )
        assert math.isclose(g, ref, rel_tol=1e-5)
