"""Integration: ARD recovers planted ranks of a low-rank teacher, in every format, with MAP and SVI."""

import pytest
import torch
import torch.nn.functional as F

import bayestensor as bt
from bayestensor.data import planted_regression, planted_teacher
from bayestensor.tensors import POSTERIORS

# format -> (out_shape, in_shape, planted ranks); student max_rank 8 on a 64 x 64 weight
PLANTED = {
    "cp": ((4, 4, 4), (4, 4, 4), [3]),
    "tucker": ((8, 8), (8, 8), [2, 3, 3, 2]),
    "tt": ((4, 4, 4), (4, 4, 4), [2, 3, 3, 3, 2]),
    "ttm": ((4, 4, 4), (4, 4, 4), [2, 3]),
}


def test_every_format_has_a_planted_case():
    assert set(PLANTED) == set(bt.available_formats())


@pytest.mark.slow
@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("fmt", sorted(PLANTED))
def test_ard_recovers_planted_ranks(fmt, method):
    torch.manual_seed(0)
    out_s, in_s, planted = PLANTED[fmt]
    teacher = planted_teacher(fmt, out_s, in_s, planted, dtype=torch.float32)
    x, y = planted_regression(teacher, 2048)
    x_test, y_test = planted_regression(teacher, 512, seed=5)
    layer = bt.TensorizedLinear(
        64, 64, format=fmt, max_rank=8, in_shape=in_s, out_shape=out_s, bias=False, method=method
    )
    assert all(r > p + 1 for r, p in zip(layer.weight.ranks, planted, strict=True))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    n = len(x)
    for step in range(1500):
        idx = torch.randint(0, n, (256,))
        loss = F.mse_loss(layer(x[idx]), y[idx]) + bt.prior_loss(layer) / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 499:
            bt.prune(layer, optimizer=opt)
    bt.prune(layer)
    found = bt.ranks(layer)[""]
    assert all(abs(f - p) <= 1 for f, p in zip(found, planted, strict=True)), (found, planted)
    layer.eval()
    with torch.no_grad():
        rel_err = (layer(x_test) - y_test).norm() / y_test.norm()
    assert rel_err < 0.05


# ---------------------------------------------------------------- the seeded sweep's CI subset
SWEEP_SEEDS = range(2000, 2000 + len(bt.available_formats()))  # one fresh draw per format (formats cycle)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_random_planted_case_fits_without_collapse(seed, method):
    """A drawn case (benchmarks/planted_sweep.py runs 24 of them) with a held Adam step: the fit holds, no collapse.

    Without a tolerance and without a decaying learning rate ARD's threshold pruning leaves ranks too
    high on many draws (README), so here the ranks are only required to stay within the start; the
    next test checks the full target.
    """
    from bayestensor.data import draw_planted_case
    from bayestensor.experiments.planted import FIT_TOLERANCE, fit_planted

    case = draw_planted_case(seed)
    result = fit_planted(case, method, epochs=200, lr_schedule="constant")
    assert result["rel_error"] < FIT_TOLERANCE, result
    assert not result["collapsed"], result
    assert all(f <= m for f, m in zip(result["found"], case.max_rank, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_random_planted_case_recovers_its_ranks_when_pruning_by_validation_loss(seed, method):
    """With a cosine lr, ARD's tolerance and ``end_epoch(evaluate=held-out NLL)`` the full target holds on the CI draws.

    The fit holds and no bond ends more than 1 above its planted rank (``passed``), as on all 480 runs of the
    README's sweeps. Seed 2001 under SVI ended at ranks ``[1, 4, 1]`` of planted ``[1, 2, 1]`` while the
    signal-to-noise rule also pruned during the KL warm-up (it cut the last bond to its planted rank one
    pass early); ARD now applies that rule only from the end of the warm-up.
    """
    from bayestensor.data import draw_planted_case
    from bayestensor.experiments.planted import fit_planted

    result = fit_planted(draw_planted_case(seed), method, epochs=200, tolerance=0.01, lr_schedule="cosine")
    assert result["passed"] and not result["collapsed"], result


@pytest.mark.slow
def test_a_tucker_svi_draw_that_collapsed_under_the_point_mass_gauge_split_now_fits():
    """Seed 9011 (Tucker, 4 modes, planted ``[3, 3, 4, 1]``) under SVI, cosine lr, no tolerance.

    When every regauge split each bond's scale by the point mass's rule, the optimiser pulled the means
    back between pruning passes while the posterior scales stayed, so the factors' scales grew pass after
    pass (0.004 to 45) and the weight collapsed to zero (relative error 0.999; README).
    """
    from bayestensor.data import draw_planted_case
    from bayestensor.experiments.planted import fit_planted

    case = draw_planted_case(9011)
    assert (case.format, case.planted) == ("tucker", (3, 3, 4, 1))
    result = fit_planted(case, "svi", epochs=200, lr_schedule="cosine")
    assert result["passed"] and not result["collapsed"], result


def test_fit_planted_rejects_an_unknown_lr_schedule():
    from bayestensor.data import draw_planted_case
    from bayestensor.experiments.planted import fit_planted

    with pytest.raises(ValueError, match="lr_schedule must be 'cosine' or 'constant', got 'step'"):
        fit_planted(draw_planted_case(0), "map", epochs=1, lr_schedule="step")
