"""The ARD training API: pure loss, one M-step per optimizer step, warm-up, pruning schedule, collapse, DDP, init."""

import copy
import math
import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import bayestensor as bt
from bayestensor.data import planted_regression, planted_teacher
from bayestensor.formats import get_format
from bayestensor.tensors import POSTERIORS

FORMATS = bt.available_formats()


def small_model(method="map", em_step=1.0, fmt="ttm"):
    torch.manual_seed(0)
    kw = dict(format=fmt, max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method=method, em_step=em_step)
    return nn.Sequential(bt.TensorizedLinear(16, 16, **kw), nn.Tanh(), bt.TensorizedLinear(16, 16, **kw))


def data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)


def planted_layer(fmt, rank, **kwargs):
    """A rank-4 MAP layer of 16 x 16, 256 samples of a teacher of ``rank`` on every bond, and its Adam."""
    torch.manual_seed(0)
    layer = bt.TensorizedLinear(
        16, 16, format=fmt, max_rank=4, in_shape=(4, 4), out_shape=(4, 4), method="map", **kwargs
    )
    teacher = planted_teacher(fmt, (4, 4), (4, 4), [rank] * layer.weight.num_bonds, dtype=torch.float32)
    x, y = planted_regression(teacher, 256)
    return layer, x, y, torch.optim.Adam(layer.parameters(), lr=2e-2)


def train(ard, opt, model, x, y, loss_fn, *, epochs, batch_size):
    """The documented loop: ``ard.loss`` per batch, one optimizer step, ``ard.end_epoch()`` per epoch."""
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch_size):
            loss = ard.loss(loss_fn(model(x[idx]), y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        ard.end_epoch()


def m_step_targets(t):
    energies, counts = t.rank_statistics()
    return [t.prior.map_update(e.detach(), c) for e, c in zip(energies, counts, strict=True)]


def test_loss_changes_no_state_and_repeats_exactly():
    model = small_model()
    x, y = data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=len(x), epochs=4, no_kl_epochs=0, warmup_epochs=0)
    assert all(t.rank_variances_are_current() for _, t in ard.tensors)  # a new tensor's λ fits its factors
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = ard.loss(F.mse_loss(model(x), y))
    second = ard.loss(F.mse_loss(model(x), y))
    assert torch.equal(first, second)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("use_ard", [True, False])
def test_damped_m_step_runs_once_per_optimizer_step_under_gradient_accumulation(use_ard):
    """λ ← ½ λ + ½ λ*(W) exactly once per step, though the loss is evaluated three times per step."""
    model = small_model(em_step=0.5)
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=len(x), epochs=4, no_kl_epochs=0, warmup_epochs=0) if use_ard else None
    tensors = [m.weight for m in model if isinstance(m, bt.TensorizedLinear)]
    reference = [[lam.clone() for lam in t.rank_variances()] for t in tensors]
    for _ in range(3):
        opt.zero_grad()
        for chunk in range(3):  # gradient accumulation over 3 micro-batches, plus a logging evaluation
            idx = slice(chunk * 20, chunk * 20 + 20)
            task = F.mse_loss(model(x[idx]), y[idx])
            loss = ard.loss(task) if use_ard else task + bt.prior_loss(model) / len(x)
            (loss / 3).backward()
        (ard.loss(task) if use_ard else bt.prior_loss(model)).detach()
        opt.step()
        if not use_ard:
            bt.prior_loss(model)  # the plain loop's next evaluation runs the step's M-step
        for t, ref in zip(tensors, reference, strict=True):
            for b, target in enumerate(m_step_targets(t)):
                ref[b] = 0.5 * ref[b] + 0.5 * target
    for t, ref in zip(tensors, reference, strict=True):
        for lam, want in zip(t.rank_variances(), ref, strict=True):
            torch.testing.assert_close(lam, want)


def test_warm_up_schedule_follows_the_run():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=10, epochs=10, kl_weight=0.5, steps_per_epoch=4)
    assert ard.no_kl_epochs == pytest.approx(1.0) and ard.warmup_epochs == pytest.approx(2.0)
    seen = []
    x, y = data(8)
    for _epoch in range(10):
        for _ in range(4):
            seen.append(ard.beta)
            opt.zero_grad()
            ard.loss(F.mse_loss(model(x), y)).backward()
            opt.step()
        ard.end_epoch()
    expected = [bt.kl_weight(s / 4, no_kl_epochs=1, warmup_epochs=2, max_weight=0.5) for s in range(40)]
    assert seen == pytest.approx(expected)
    assert seen[0] == 0 and seen[-1] == 0.5


def test_finetune_turns_the_prior_off_and_freezes_the_ranks_for_the_last_epochs():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=10, epochs=10, kl_weight=0.5, steps_per_epoch=4, finetune_epochs=3)
    seen, passes, ranks = [], [], []
    x, y = data(8)
    for epoch in range(10):
        for _ in range(4):
            seen.append(ard.beta)
            loss = F.mse_loss(model(x), y)
            if epoch >= 7:
                assert torch.equal(ard.loss(loss), loss)  # no prior term in the fine-tune
            opt.zero_grad()
            ard.loss(loss).backward()
            opt.step()
        if ard.end_epoch() is not None:
            passes.append(epoch)
        ranks.append(bt.ranks(model))
    expected = [bt.kl_weight(s / 4, no_kl_epochs=1, warmup_epochs=2, max_weight=0.5) for s in range(28)]
    assert seen == pytest.approx(expected + [0.0] * 12)
    assert passes == [1, 2, 3, 4, 5, 6]  # pruning from the first epoch with the prior on; the last pass ends epoch 7
    assert ranks[6] == ranks[7] == ranks[8] == ranks[9]


@pytest.mark.parametrize(
    "epochs, warmup, target, expected",
    [(10, None, None, 0), (10, None, 30.0, 3), (80, None, 30.0, 24), (3, None, 30.0, 0), (10, (4, 4), 30.0, 2)],
)
def test_finetune_by_default_only_with_a_target(epochs, warmup, target, expected):
    """A target fixes the size, so by default the last 30 % of the run (what the warm-up leaves) refits the ranks."""
    model = small_model()
    no_kl, ramp = warmup or (None, None)
    ard = bt.ARD(model, torch.optim.SGD(model.parameters(), lr=0.1), num_data=8, epochs=epochs,
                 no_kl_epochs=no_kl, warmup_epochs=ramp, target_compression=target)  # fmt: skip
    assert ard.finetune_epochs == expected  # ⌊0.3 · epochs⌋ with a target, at most epochs − warm-up; else none


@pytest.mark.parametrize("fmt", FORMATS)
def test_finetune_refits_the_weights_the_prior_shrank_at_the_ranks_it_found(fmt):
    """At the Bayesian weight the prior shrinks the kept components; a fine-tune fits them to the noise floor."""

    def fit(finetune):
        layer, x, y, opt = planted_layer(fmt, rank=2)
        ard = bt.ARD(layer, opt, num_data=len(x), epochs=60, finetune_epochs=finetune)
        train(ard, opt, layer, x, y, lambda a, b: F.mse_loss(a, b, reduction="sum") / len(a), epochs=60, batch_size=32)
        with torch.no_grad():
            return float((layer(x) - y).norm() / y.norm()), bt.ranks(layer)

    (shrunk, ranks), (refit, ranks_refit) = fit(0), fit(10)
    assert ranks == ranks_refit
    assert refit < 0.01 < shrunk  # the teacher's noise is 0.3 % of its output; shrinkage left 1-5 %


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_data": 0}, "num_data must be a positive int"),
        ({"num_data": -5}, "num_data must be a positive int"),
        ({"epochs": 0}, "epochs must be a positive int"),
        ({"no_kl_epochs": 3, "warmup_epochs": 3}, "longer than the run"),
        ({"kl_weight": -1.0}, "kl_weight must be"),
        ({"kl_weight": True}, r"kl_weight must be a number in \[0, inf\), got True"),
        ({"warmup_epochs": float("nan")}, "no_kl_epochs and warmup_epochs must be >= 0, got .* and nan"),
        ({"prune_threshold": 0.0}, "prune_threshold must be"),
        ({"prune_threshold": 1.0}, r"prune_threshold must be in \(0, 1\)"),
        ({"prune_every": 0}, "prune_every must be"),
        ({"prune_start": -1}, "prune_start must be"),
        ({"tolerance": -0.01}, "tolerance must be a finite number > 0"),
        ({"tolerance": 0.0}, "tolerance must be a finite number > 0"),
        ({"tolerance": float("nan")}, "tolerance must be a finite number > 0"),
        ({"finetune_epochs": -1}, "finetune_epochs must be >= 0 and shorter than the run"),
        ({"finetune_epochs": 5}, "finetune_epochs must be >= 0 and shorter than the run"),
        ({"finetune_epochs": 2, "no_kl_epochs": 2, "warmup_epochs": 2}, "finetune_epochs=2 are longer than the run"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    args = {"num_data": 10, "epochs": 5} | kwargs
    with pytest.raises(ValueError, match=match):
        bt.ARD(model, opt, **args)


@pytest.mark.parametrize("fmt", FORMATS)
def test_end_epoch_prunes_physically_and_keeps_the_optimizer(fmt):
    """Components driven to zero are removed on schedule; Adam's moments follow; training goes on and fits."""
    layer, x, y, opt = planted_layer(fmt, rank=1)
    ard = bt.ARD(layer, opt, num_data=len(x), epochs=90, prune_every=20)
    pruned_at, start = [], bt.count_params(layer)
    for epoch in range(90):
        for idx in torch.randperm(len(x)).split(32):
            loss = ard.loss(F.mse_loss(layer(x[idx]), y[idx], reduction="sum") / len(idx))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch == 89:  # what ARD does to an unneeded component: shrink it to nothing
            t = layer.weight
            with torch.no_grad():
                weakest = [int(c.argmin()) for c in t.contributions()]
                for group in t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks):
                    if t.ranks[group.bond] > 1:
                        f, axis = group.members[0]
                        t.factors[f].index_fill_(axis, torch.tensor([weakest[group.bond]]), 0.0)
        if ard.end_epoch() is not None:
            pruned_at.append(epoch)
    assert pruned_at == [9, 29, 49, 69, 89]  # no KL in epochs 0-8, then every 20th epoch from the 10th
    assert bt.count_params(layer) < start
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in layer.parameters()}
    for p, state in opt.state.items():
        assert state["exp_avg"].shape == p.shape
    assert (layer(x) - y).norm() / y.norm() < 0.1


def test_a_collapsed_layer_is_named_and_never_pruned():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=10, epochs=2, no_kl_epochs=0, warmup_epochs=0)
    ranks = bt.ranks(model)["2"]
    with torch.no_grad():
        for f in model[2].weight.factors:
            f.mul_(1e-3)
    with pytest.warns(bt.CollapseWarning, match="'2'"):
        ard.end_epoch()
    assert ard.collapsed == ["2"] and bt.ranks(model)["2"] == ranks


def test_with_a_target_a_collapsed_layer_is_not_paid_for_by_the_others():
    """A collapsed layer keeps its full size; the target's budget holds only the others to R.

    Counting the collapsed layer against the target would leave the others a budget of 0 here
    (it alone holds more than ``dense / R``), and pruning would cut every bond to rank 1.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        *(bt.TensorizedLinear(64, 64, format="tt", start_fraction=1.0, method="map") for _ in range(2))
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ard = bt.ARD(model, opt, num_data=10, epochs=1, no_kl_epochs=0, warmup_epochs=0, target_compression=4.0)
    full = bt.ranks(model)["0"]
    with torch.no_grad():
        for f in model[0].weight.factors:
            f.mul_(1e-3)
    assert model[0].get_num_params() > sum(m.dense_params() for m in model) / 4  # alone past the whole budget
    with pytest.warns(bt.CollapseWarning, match="'0'"):
        ard.end_epoch()  # the last epoch: the pass prunes to the target
    assert ard.collapsed == ["0"] and bt.ranks(model)["0"] == full
    kept = model[1].dense_params() / model[1].get_num_params()
    assert 4.0 <= kept <= 4.0 * (1 + bt.inference.ard.TARGET_BAND), kept
    assert max(bt.ranks(model)["1"]) > 1


def _ddp_prune(rank, world, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = small_model()
        if rank == 1:
            model[0].weight.truncate_([torch.arange(2), torch.arange(4), torch.arange(4)][: model[0].weight.num_bonds])
        try:
            bt.prune(model, process_group=dist.group.WORLD)
            queue.put((rank, "no error"))
        except RuntimeError as err:
            queue.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


def test_ddp_prune_refuses_ranks_that_differ_across_processes():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_ddp_prune, args=(r, 2, init_file, queue)) for r in range(2)]
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
    for msg in results.values():
        assert "different ranks" in msg and "'0'" in msg


# ---------------------------------------------------------------- starting points of tensorize
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_init_has_the_dense_weight_std(fmt):
    torch.manual_seed(0)
    for dense in (nn.Linear(256, 128), nn.Conv2d(32, 64, 3)):
        layer = bt.from_dense(dense, format=fmt, max_rank=8, init="random")
        with torch.no_grad():
            ratio = float(layer.full_weight().std() / dense.weight.std())
        assert ratio == pytest.approx(1.0, rel=0.05), (type(dense).__name__, ratio)
        torch.testing.assert_close(layer.bias, dense.bias)


def test_tensorize_defaults_to_random_and_decompose_is_explicit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    std = float(net[0].weight.std())
    model, summary = bt.tensorize(net, format="tt", min_params=2_000)
    assert summary[0]["rel_error"] > 1.0  # random factors, not a (poor) decomposition of a random weight
    assert float(model[0].full_weight().std()) / std == pytest.approx(1.0, rel=0.05)
    net = nn.Sequential(nn.Linear(256, 128))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(128, 2) @ torch.randn(2, 256))  # a "trained", low-rank weight
    model, summary = bt.tensorize(net, format="tt", max_rank=64, min_params=2_000, init="decompose")
    assert summary[0]["rel_error"] < 1e-6
    with pytest.raises(ValueError, match="unknown init 'svd'"):
        bt.tensorize(nn.Sequential(nn.Linear(256, 128)), min_params=0, init="svd")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3])
def test_default_ranks_fill_the_parameter_budget(fmt, fraction):
    f = get_format(fmt)
    for out_s, in_s in (((8, 8, 8), (14, 14, 16)), ((4, 4), (8, 8)), ((16, 32), (32, 32))):
        if f.paired_modes and len(out_s) != len(in_s):
            continue
        dense = math.prod(out_s) * math.prod(in_s)
        t = bt.FactorizedTensor(fmt, out_s, in_s, None, start_fraction=fraction)
        assert t.n_params() <= max(fraction * dense, f.n_params(out_s, in_s, f.resolve_ranks(1, out_s, in_s)))
        bigger = f.resolve_ranks(max(t.ranks) + 1, out_s, in_s)
        assert bigger == list(t.ranks) or f.n_params(out_s, in_s, bigger) > fraction * dense
    with pytest.raises(ValueError, match="start_fraction"):
        bt.FactorizedTensor(fmt, (4, 4), (4, 4), None, start_fraction=0.0)


# ---------------------------------------------------------------- stating the trade-off
@pytest.mark.parametrize("fmt", FORMATS)
def test_prune_to_a_parameter_budget_removes_the_weakest_components_first(fmt, monkeypatch):
    from bayestensor.inference import pruning

    seen = []  # the relative contributions prune reads after its regauge (indices are the regauged ones)
    original = pruning._relative_contributions
    monkeypatch.setattr(pruning, "_relative_contributions", lambda found: seen.append(original(found)) or seen[-1])

    model = small_model(fmt=fmt)
    layers = {"0": model[0].weight, "2": model[2].weight}
    start = sum(t.n_params() for t in layers.values())
    budget = start // 2
    kept_before = {n: [list(range(r)) for r in t.ranks] for n, t in layers.items()}
    report = bt.prune(model, threshold=1e-12, max_params=budget)
    assert report.params_after <= budget < report.params_before
    rel = seen[-1]
    removed, kept = [], []
    for n, t in layers.items():
        for b, r_after in enumerate(t.ranks):
            order = sorted(kept_before[n][b], key=lambda r: -rel[n][b][r])
            kept += [rel[n][b][r] for r in order[:r_after] if r_after > 1]
            removed += [rel[n][b][r] for r in order[r_after:]]
    assert removed and max(removed) <= min(kept, default=1.0) + 1e-9
    tiny = bt.prune(model, threshold=1e-12, max_params=0)  # nothing fits: every bond ends at rank 1
    assert all(r == 1 for ranks in tiny.after.values() for r in ranks)


def mlp_64_256_10(method: str = "map"):
    """The digits experiment's shape, TTM layers of ``method`` at the default starting ranks (seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(
        bt.TensorizedLinear(64, 256, format="ttm", method=method), nn.ReLU(),
        bt.TensorizedLinear(256, 10, format="ttm", method=method),
    )  # fmt: skip


@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("target", [20.0, 40.0])
def test_target_compression_is_met_within_a_quarter(target, method):
    model = mlp_64_256_10(method)
    x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ard = bt.ARD(model, opt, num_data=len(x), epochs=10, kl_weight=0.2, target_compression=target)
    start = ard.compression()
    assert start < target
    train(ard, opt, model, x, y, F.cross_entropy, epochs=10, batch_size=64)
    assert 0.75 * target <= ard.compression() <= 1.25 * target, ard.compression()


def test_target_compression_holds_a_prior_that_would_go_further():
    """An overweighted prior (8x the posterior's) shrinks the model until it hardly classifies; with
    target_compression the run ends within [R, 1.25 R], nothing collapsed, and it still classifies."""
    from bayestensor.data import load_digits_split

    x, y, x_test, y_test = load_digits_split()

    def fit(target):
        model = mlp_64_256_10()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        ard = bt.ARD(model, opt, num_data=len(x) // 8, epochs=10, target_compression=target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bt.CollapseWarning)
            train(ard, opt, model, x, y, F.cross_entropy, epochs=10, batch_size=64)
        with torch.no_grad():
            return ard, float((model(x_test).argmax(1) == y_test).float().mean())

    free, free_accuracy = fit(None)
    assert free_accuracy < 0.6  # what the prior does on its own
    target = 12.0
    held, accuracy = fit(target)
    assert held.initial_compression < target
    assert target <= held.compression() <= (1 + bt.inference.ard.TARGET_BAND) * target, held.compression()
    assert not held.collapsed and accuracy > 0.8
    assert held.cap.beta_scale < 1e-2  # the cap, not the schedule alone, stopped the prior


def still_model_and_ard(steps_per_epoch, **kwargs):
    """A small model that SGD at lr 0 leaves as it is, its data, optimizer, and an ARD with the prior on from step 1."""
    model = small_model()
    x, _ = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ard = bt.ARD(model, opt, num_data=64, epochs=10, no_kl_epochs=0, warmup_epochs=0, steps_per_epoch=steps_per_epoch,
                 **kwargs)  # fmt: skip
    return model, x, opt, ard


def test_target_cap_follows_its_formula_step_by_step(monkeypatch):
    steps, target = 100, 4.0
    model, x, opt, ard = still_model_and_ard(steps, target_compression=target)
    assert ard.initial_compression < target
    every = steps // bt.inference.ard.TARGET_CHECKS_PER_EPOCH
    projected = [2.0] * 10 + [8.0] * 20 + [4.4] * 10 + [3.0] * 30
    calls = iter(projected)
    monkeypatch.setattr(ard, "projected_compression", lambda: next(calls))
    m, expected = 1.0, []
    for k in range(every * len(projected)):  # the cap written out independently
        if k % every == 0:
            e = math.log(projected[k // every] / target) / math.log(1.25)
            step = bt.inference.ard.TARGET_RATE * (every / steps) * min(max(e, -1.0), 4.0)
            m = min(1.0, max(1e-6, m * math.exp(-step if e > 0 else -step / 10)))
        expected.append(m)
    seen = []
    for _ in expected:
        opt.zero_grad()
        ard.loss(model(x).sum()).backward()
        opt.step()
        seen.append(ard.beta_scale)
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[19] == 1.0 and min(seen) < 0.2 and seen[-1] > min(seen)  # falls past the target, recovers below it
    assert ard.beta == pytest.approx(seen[-1])  # β = β_sched · m with β_sched = 1 here
    state = ard.state_dict()
    again = bt.ARD(model, opt, num_data=64, epochs=10, target_compression=target)
    again.load_state_dict(state)
    assert again.cap == ard.cap and again.initial_compression == ard.initial_compression


def test_target_below_the_start_warns_with_both_numbers():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    start = bt.ARD(model, opt, num_data=8, epochs=2).compression()
    with pytest.warns(UserWarning, match=r"target_compression=1\.01 is below the model's compression at the start"):
        bt.ARD(model, opt, num_data=8, epochs=2, target_compression=1.01)
    assert start > 1.25 * 1.01


@pytest.mark.parametrize("value", [1.0, 0.5, -3.0, float("inf")])
def test_target_compression_must_exceed_one(value):
    model = small_model()
    with pytest.raises(ValueError, match="target_compression must be a finite number > 1"):
        bt.ARD(model, torch.optim.SGD(model.parameters(), lr=0.1), num_data=8, epochs=2, target_compression=value)


def test_tolerance_controller_follows_its_formula_and_reads_only_back_propagated_losses():
    """m falls while the smoothed loss is above (1 + τ) · best, rises back, and ignores losses not back-propagated."""
    tau, steps = 0.1, 20
    model, x, opt, ard = still_model_and_ard(steps, tolerance=tau)
    values = [1.0] * 30 + [1.5] * 40 + [1.0] * 60
    decay, rate = bt.inference.ard.LOSS_DECAY, bt.inference.ard.BETA_RATE / (10 * steps)
    avg, best, m, expected = 0.0, math.inf, 1.0, []
    for k, v in enumerate(values, start=1):  # the controller written out independently
        avg = decay * avg + (1 - decay) * v
        smoothed = avg / (1 - decay**k)
        best = min(best, smoothed)
        g = (smoothed - (1 + tau) * best) / (tau * best)
        m = min(1.0, max(bt.inference.ard.MIN_BETA_SCALE, m * math.exp(-rate * min(max(g, -1.0), 10.0))))
        expected.append(m)
    seen = []
    for v in values:
        task = model(x).sum() * 0 + v
        ard.loss(model(x).sum() * 0 + 99.0)  # evaluated for logging, never back-propagated: ignored
        opt.zero_grad()
        ard.loss(task).backward()
        opt.step()
        seen.append(ard.beta_scale)
    assert seen == pytest.approx(expected, rel=1e-12)
    assert min(seen) < 0.5 and seen[29] == 1.0 and seen[-1] > min(seen)  # backs off under the rise, then recovers
    assert ard.beta == pytest.approx(seen[-1])  # β = β_sched · m with β_sched = 1 here
    state = ard.state_dict()
    again = bt.ARD(model, opt, num_data=64, epochs=10, tolerance=tau)
    again.load_state_dict(state)
    assert again.constraint == ard.constraint


@pytest.mark.parametrize("fmt", FORMATS)
def test_tolerance_keeps_an_overweighted_prior_from_collapsing_the_layer(fmt):
    """A prior 256x too strong (num_data=1 with a mean loss) collapses every format without a scale floor;
    with the tolerance none collapses, and with the default scale floor none collapses either."""

    def fit(tolerance, **prior_kwargs):
        layer, x, y, opt = planted_layer(fmt, rank=2, prior_kwargs=prior_kwargs)
        start = layer.weight.weight_rms()
        ard = bt.ARD(layer, opt, num_data=1, epochs=20, tolerance=tolerance)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bt.CollapseWarning)
            train(ard, opt, layer, x, y, F.mse_loss, epochs=20, batch_size=8)
        with torch.no_grad():
            return float((layer(x) - y).norm() / y.norm()), ard.collapsed, layer.weight.weight_rms() / start

    rel, collapsed, _ = fit(None, scale_floor=0)
    assert collapsed == [""] and rel > 0.95
    rel, collapsed, _ = fit(0.05, scale_floor=0)
    assert collapsed == [] and rel < 0.6
    _, collapsed, kept = fit(None)  # the default floor: the prior cannot pull the whole layer under 0.1 of its RMS
    assert collapsed == [] and kept > 0.5 * bt.priors.DEFAULT_SCALE_FLOOR, kept


@pytest.mark.parametrize("fmt", FORMATS)
def test_prune_by_loss_removes_the_most_weakest_components_the_tolerance_allows(fmt):
    """The pruned model's loss is within L_0 + τ|L_0|, and physically removing one more component breaks it."""
    model = small_model(fmt=fmt)
    x, _ = data()
    with torch.no_grad():
        y = model(x) + 1.0 * torch.randn(x.shape[0], 16, generator=torch.Generator().manual_seed(3))

    def loss_of(m):
        with torch.no_grad():
            return float(F.mse_loss(m(x), y))

    tau, threshold = 0.3, 1e-3
    base = copy.deepcopy(model)
    bt.prune(base, threshold)  # the threshold's ranks, SVD gauge
    bound = loss_of(base) * (1 + tau)
    tensors = {n: m.weight for n, m in bt.inference.tensorized_layers(base)}
    rel = {n: [(c / c.max()).tolist() for c in t.contributions()] for n, t in tensors.items()}
    order = sorted(
        (v, n, b, r) for n in tensors for b, vs in enumerate(rel[n]) for r, v in enumerate(vs) if r != vs.index(max(vs))
    )

    def removing(k):  # the k weakest removed physically from a copy of the threshold-pruned model
        m = copy.deepcopy(base)
        gone = {(n, b, r) for _, n, b, r in order[:k]}
        for n, layer in bt.inference.tensorized_layers(m):
            t = layer.weight
            keep = [torch.tensor([r for r in range(rank) if (n, b, r) not in gone]) for b, rank in enumerate(t.ranks)]
            t.truncate_(keep)
        return m

    report = bt.prune(model, threshold, evaluate=lambda: loss_of(model), tolerance=tau)
    k = sum(sum(r) for r in bt.ranks(base).values()) - sum(sum(r) for r in report.after.values())
    assert 0 < k < len(order), (k, len(order))  # τ leaves something to decide either way
    assert loss_of(model) <= bound
    assert loss_of(model) == pytest.approx(loss_of(removing(k)), rel=1e-5)  # zeroing was exact, factors restored
    assert loss_of(removing(k + 1)) > bound


def test_loss_and_noise_based_pruning_wait_for_the_end_of_the_warm_up(monkeypatch):
    """Before the KL weight reaches its peak a pass prunes by the threshold alone; from then on (and last) by loss
    and, under SVI, by signal-to-noise too."""
    from bayestensor.inference import ard as ard_module

    seen = []
    original = ard_module.prune

    def recording_prune(model, *args, **kwargs):
        by_loss = kwargs["evaluate"] is not None and kwargs["tolerance"] == 0.1
        seen.append((by_loss, kwargs["merge_restarts"], kwargs["by_noise"]))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(ard_module, "prune", recording_prune)
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ard = bt.ARD(model, opt, num_data=8, epochs=7, no_kl_epochs=1, warmup_epochs=2.5, prune_every=2, tolerance=0.1)
    for _ in range(7):
        ard.end_epoch(lambda: 1.0)
    # passes after epochs 1, 3, 5 (prune_start = 1, every 2) and 6 (the last); the warm-up ends at 3.5 epochs;
    # the last pass also tries random starts when it merges CP layers
    restarts = ard_module.MERGE_RESTARTS
    assert seen == [(False, 0, False), (True, 0, True), (True, 0, True), (True, restarts, True)] and restarts > 0


def test_prune_by_loss_arguments_are_checked():
    model = small_model()
    with pytest.raises(ValueError, match="needs a tolerance >= 0"):
        bt.prune(model, evaluate=lambda: 1.0)
    with pytest.raises(ValueError, match="pass the loss function too"):
        bt.prune(model, tolerance=0.1)
    with pytest.raises(ValueError, match="expected a finite loss"):
        bt.prune(model, evaluate=lambda: float("nan"), tolerance=0.1)
    with pytest.raises(ValueError, match="merge_restarts must be an int >= 0, got -1"):
        bt.prune(model, merge_restarts=-1)
    for threshold in (0.0, 1.0, 2):  # relative to a bond's largest component: 1 or more would keep only that
        with pytest.raises(ValueError, match=rf"threshold must be in \(0, 1\).*got {threshold}"):
            bt.prune(model, threshold=threshold)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # a pruned checkpoint loaded after the optimizer was built replaces the factors it holds
    pruned = small_model()
    opt_pruned = torch.optim.SGD(pruned.parameters(), lr=0.1)
    bt.prune(pruned, threshold=0.5, optimizer=opt_pruned)
    fresh = small_model()
    opt_fresh = torch.optim.SGD(fresh.parameters(), lr=0.1)
    ard = bt.ARD(fresh, opt_fresh, num_data=8, epochs=2)
    fresh.load_state_dict(pruned.state_dict())
    x, y = data(8)
    ard.loss(F.mse_loss(fresh(x), y)).backward()
    with pytest.raises(ValueError, match="optimizer holds none of the model's tensorized factors .*replaced after"):
        opt_fresh.step()
    stale = torch.optim.SGD(small_model().parameters(), lr=0.1)  # built on another model
    with pytest.raises(ValueError, match="optimizer holds none of the model's tensorized factors"):
        bt.ARD(model, stale, num_data=8, epochs=2)
    with pytest.raises(ValueError, match=r"build ARD\(tolerance=...\)"):
        bt.ARD(model, opt, num_data=8, epochs=2).end_epoch(evaluate=lambda: 1.0)
