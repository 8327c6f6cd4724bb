"""``model.method = "svgd" | "sghmc"`` in the trainer: the posterior file, OOD score, resume, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import bayestensor as bt
from _datafiles import write_idx_dir
from bayestensor.cli.main import main
from bayestensor.data import load_digits_ood, load_fashion_mnist
from bayestensor.experiments.checkpoint import load_checkpoint
from bayestensor.experiments.models import SAMPLERS
from bayestensor.experiments.posterior import SamplerPhase, vectorize
from bayestensor.experiments.registry import default_config, get_experiment
from bayestensor.experiments.trainer import KILL_ENV, KILL_STATUS
from bayestensor.inference import ood_auroc, predictive_entropy
from bayestensor.inference.ard import MIN_BETA_SCALE

SRC = Path(__file__).resolve().parents[1] / "src"


def env():
    return {**os.environ, "PYTHONPATH": str(SRC)}


def _args(data: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["train", "fashion-mnist-fc", "--smoke", "--quiet", "--method", method, "--data-dir", str(data),
            "--out", str(out), "--set", "sampler.particles=3", "--set", "sampler.epochs=2",
            "--set", "sampler.max_samples=9", *extra]  # fmt: skip


@pytest.mark.parametrize("method", SAMPLERS)
def test_sampler_run_writes_a_posterior_that_predicts_what_the_report_says(method, tmp_path):
    data = write_idx_dir(tmp_path / "fashion")
    assert main(_args(data, tmp_path / "runs", method)) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["method"] == method and report["sampler"]["particles"] == 3
    # the posterior file rebuilds every particle from the exported first one
    first = bt.load(run_dir / "model")
    state = torch.load(run_dir / "posterior.pt", weights_only=True)
    size = bt.Ensemble.particles_in(state)
    assert size == report["predictive_samples"] == (3 if method == "svgd" else 9)
    posterior = bt.Ensemble.clone(first, size)
    posterior.load_state_dict(state)
    posterior.vectorize = vectorize("auto", first)  # as the run's execution "auto": the same summation order
    test = load_fashion_mnist(data).test
    x, y = test.images[:64], test.labels[:64]  # --smoke keeps the first 64 test images
    probs, _ = bt.predict(posterior.eval(), x, transform=lambda z: z.softmax(-1))
    assert float((probs.argmax(1) == y).double().mean()) == pytest.approx(report["test_accuracy"], abs=1e-12)
    ood, _ = bt.predict(posterior, load_digits_ood((28, 28)), transform=lambda z: z.softmax(-1))
    assert report["ood_auroc"] == pytest.approx(ood_auroc(probs.double(), ood.double()), abs=1e-9)
    # the members' own scores, particle by particle, and the averaged prediction's confidence
    with torch.no_grad():
        each = [posterior(x)[i].softmax(-1).double() for i in range(size)]
    members = report["members"]
    assert members["accuracy"] == pytest.approx(sum(float((p.argmax(1) == y).double().mean()) for p in each) / size)
    assert members["ece"] == pytest.approx(sum(bt.expected_calibration_error(p, y) for p in each) / size, abs=1e-6)
    nll = sum(float(-p[torch.arange(len(y)), y].log().mean()) for p in each) / size
    assert members["nll"] == pytest.approx(nll, rel=1e-5)
    assert members["confidence"] == pytest.approx(float(torch.stack(each).max(-1).values.mean()), abs=1e-6)
    with torch.no_grad():
        away = posterior(load_digits_ood((28, 28))).softmax(-1).double()  # (P, M, C)
    own = sum(ood_auroc(p, q) for p, q in zip(each, away, strict=True)) / size
    assert members["ood_auroc"] == pytest.approx(own, abs=1e-6)
    assert report["confidence"] == pytest.approx(float(probs.max(1).values.mean()), abs=1e-6)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("sampler_epoch") for r in rows[-2:]] == [0, 1]
    assert (run_dir / "report.md").read_text().count("| OOD AUROC (predictive entropy) |") == 1
    assert (run_dir / "report.md").read_text().count("| the MAP fit before the sampler") == 1
    assert (run_dir / "report.md").read_text().count("members, mean of their own") == 1


def test_a_sampler_run_reports_the_map_fit_before_its_sampler_as_a_map_run_scores_it(tmp_path):
    """``map_fit``: the MAP phase scored like the posterior, equal to a ``--method map`` run of the same seed."""
    data = write_idx_dir(tmp_path / "fashion")
    assert main(_args(data, tmp_path / "map", "map")) == 0
    (map_dir,) = (tmp_path / "map").iterdir()
    alone = json.loads((map_dir / "report.json").read_text())
    assert "map_fit" not in alone
    for method in SAMPLERS:
        assert main(_args(data, tmp_path / method, method)) == 0
        (run_dir,) = (tmp_path / method).iterdir()
        fit = json.loads((run_dir / "report.json").read_text())["map_fit"]
        assert fit == {k: alone[k] for k in ("test_accuracy", "nll", "ece", "ood_auroc")}, method
        assert f"{fit['nll']:.4f}" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("method", SAMPLERS)
def test_resume_in_the_sampler_phase_matches_an_uninterrupted_run(method, tmp_path):
    data = write_idx_dir(tmp_path / "fashion")
    killed, full = tmp_path / "killed", tmp_path / "full"
    base = [sys.executable, "-m", "bayestensor", *_args(data, killed, method)]
    run = subprocess.run(base, env={**env(), KILL_ENV: "3"}, capture_output=True, text=True)  # 2 MAP + 1 sampler
    assert run.returncode == KILL_STATUS, run.stderr
    (run_dir,) = killed.iterdir()
    assert load_checkpoint(run_dir / "checkpoint.pt")["sampler"]["epoch"] == 0
    resumed = subprocess.run([*base, "--resume"], env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert main(_args(data, full, method)) == 0
    a = json.loads((run_dir / "report.json").read_text())
    b = json.loads((full / run_dir.name / "report.json").read_text())
    for key in ("test_accuracy", "nll", "ece", "ood_auroc", "params", "layers", "predictive_samples", "map_fit"):
        assert a[key] == b[key], key
    pa = torch.load(run_dir / "posterior.pt", weights_only=True)
    pb = torch.load(full / run_dir.name / "posterior.pt", weights_only=True)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("target", [0.0, 3.0])
def test_the_sampler_samples_at_the_kl_weight_the_stated_trade_off_held_map_at(target, tmp_path):
    """With ``train.target_compression`` past the start, ARD's cap holds β at its floor; the sampler keeps it there."""
    data = write_idx_dir(tmp_path / "fashion")
    args = _args(data, tmp_path / "runs", "svgd", "--set", f"train.target_compression={target}")
    assert main(args) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    ard = load_checkpoint(run_dir / "checkpoint.pt")["ard"]
    scale = ard["cap_beta_scale"] * ard["beta_scale"]  # the target's and the tolerance's multipliers
    assert scale == (1.0 if target == 0 else MIN_BETA_SCALE)  # the smoke model starts at 25.9x, past the target
    beta = tomllib.loads((run_dir / "config.toml").read_text())["train"]["kl_weight"]  # the run's train.kl_weight
    assert report["sampler_kl_weight"] == pytest.approx(beta * scale, rel=1e-12)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_weight"] for r in rows if "sampler_epoch" in r] == [report["sampler_kl_weight"]] * 2


@pytest.mark.parametrize("method", SAMPLERS)
def test_the_sampler_phase_runs_at_the_kl_weight_it_is_given(method):
    """The sampler's potential uses the trainer's ``β`` (``m · train.kl_weight``), and the config's without one.

    Its temperature is ``sampler.temperature``.
    """
    cfg = default_config("digits-fc")
    cfg.model.method, cfg.sampler.init, cfg.sampler.particles = method, "map", 2
    exp = get_experiment("digits-fc")
    model = exp.build_model(cfg)
    given = SamplerPhase(cfg, model, 100, 1, lambda: exp.build_model(cfg), kl_weight=0.25)
    assert given.sampler.kl_weight == given.kl_weight == 0.25 != cfg.train.kl_weight
    default = SamplerPhase(cfg, model, 100, 1, lambda: exp.build_model(cfg))
    assert default.sampler.kl_weight == default.kl_weight == cfg.train.kl_weight
    assert default.sampler.temperature == 1.0  # the posterior, unless sampler.temperature says otherwise
    cfg.sampler.temperature = 0.5
    assert SamplerPhase(cfg, model, 100, 1, lambda: exp.build_model(cfg)).sampler.temperature == 0.5
    if method == "svgd":
        assert default.sampler.drive == "parameters"
        cfg.sampler.drive = "function"
        assert SamplerPhase(cfg, model, 100, 1, lambda: exp.build_model(cfg)).sampler.drive == "function"


def test_svgd_from_map_clones_continues_the_map_optimizer():
    """``init="map"``: every particle gets the MAP fit's Adam moments and step; scratch draws and
    ``sampler.keep_optimizer = false`` start a fresh Adam."""
    cfg = default_config("digits-fc")
    cfg.model.method, cfg.sampler.init, cfg.sampler.particles = "svgd", "map", 3
    exp = get_experiment("digits-fc")
    model = exp.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x = torch.randn(16, 64)
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    phase = SamplerPhase(cfg, model, 100, 1, lambda: exp.build_model(cfg), map_optimizer=opt)
    params, _ = phase.ensemble.stacked()
    for name, p in model.named_parameters():
        state = phase.optimizer.state[params[name]]
        assert int(state["step"]) == 2
        assert torch.equal(state["exp_avg_sq"], opt.state[p]["exp_avg_sq"].expand(3, *p.shape))
    for init, keep in (("scratch", True), ("map", False)):
        cfg.sampler.init, cfg.sampler.keep_optimizer = init, keep
        fresh = SamplerPhase(cfg, model, 100, 1, lambda: exp.build_model(cfg), map_optimizer=opt)
        assert not fresh.optimizer.state


def test_resume_with_another_particle_count_is_a_clear_error(tmp_path, capsys):
    data = write_idx_dir(tmp_path / "fashion")
    args = _args(data, tmp_path / "runs", "svgd")
    assert main(args) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    before = (run_dir / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main([*args, "--set", "sampler.particles=4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds 3 particles, this run asks for sampler.particles=4" in err
    assert (run_dir / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sampler.particles=0"], "sampler.particles: expected an int >= 1, got 0"),
        (["sampler.init=best"], "sampler.init: expected one of scratch, map, got 'best'"),
        (["sampler.drive=weights"], "sampler.drive: expected one of parameters, function, got 'weights'"),
        (["sampler.friction=1.5"], "sampler.friction: expected a friction in (0, 1], got 1.5"),
        (["sampler.temperature=0"], "sampler.temperature: expected a finite T > 0 (1 = the posterior), got 0.0"),
        (["sampler.bandwidth=-1"], "sampler.bandwidth: expected an RBF bandwidth h > 0, or 0 for the median heuristic"),
        (["sampler.burn_in=1"], "sampler.burn_in: expected a fraction of the steps in [0, 1), got 1.0"),
        (["sampler.init=map", "sampler.jitter=0"], "sampler.jitter = 0 clones identical particles"),
        (["sampler.epochs=-0.5"], "sampler.epochs: expected passes over the data > 0 (0.5 = half of one), or 0 for"),
    ],
)
def test_bad_sampler_settings_fail_before_any_file_is_written(overrides, message, tmp_path, capsys):
    out = tmp_path / "runs"
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["train", "--smoke", "--quiet", "--method", "svgd", "--out", str(out), *sets]) == 2
    assert message in capsys.readouterr().err
    assert not any(p.is_file() for p in out.rglob("*"))


def test_samplers_refuse_the_clicks_task(tmp_path, capsys):
    argv = ["train", "criteo-dlrm", "--synthetic", "--smoke", "--quiet", "--method", "sghmc", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "runs on the classification experiments in one process; 'criteo-dlrm' is a clicks task" in (
        capsys.readouterr().err
    )


def test_ood_set_and_score():
    flat, chans = load_digits_ood((28, 28)), load_digits_ood((1, 28, 28))
    assert flat.shape == (1797, 28, 28) and chans.shape == (1797, 1, 28, 28)
    assert 0.0 <= float(flat.min()) and float(flat.max()) <= 1.0
    torch.testing.assert_close(chans[:, 0], flat)
    with pytest.raises(ValueError, match=r"shape must be \(H, W\) or \(C, H, W\)"):
        load_digits_ood((784,))
    # entropy of known distributions, and an AUROC equal to the pairwise definition
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    torch.testing.assert_close(predictive_entropy(probs), torch.tensor([0.0, 0.6931471805599453], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 3, generator=g).softmax(-1)
    b = (0.3 * torch.randn(30, 3, generator=g)).softmax(-1)  # flatter: more entropy
    ha, hb = predictive_entropy(a), predictive_entropy(b)
    pairwise = ((hb[None, :] > ha[:, None]).double() + 0.5 * (hb[None, :] == ha[:, None]).double()).mean()
    assert ood_auroc(a, b) == pytest.approx(float(pairwise), abs=1e-12)


def test_vmap_and_loop_execution_train_the_same_posterior(tmp_path):
    data = write_idx_dir(tmp_path / "fashion")
    reports = []
    for execution in ("vmap", "loop"):
        out = tmp_path / execution
        assert main(_args(data, out, "svgd", "--set", f"sampler.execution={execution}")) == 0
        (run_dir,) = out.iterdir()
        reports.append(json.loads((run_dir / "report.json").read_text()))
    a, b = reports
    assert a["sampler"]["execution"] == "vmap" and b["sampler"]["execution"] == "loop"
    assert a["params"] == b["params"]
    for key in ("nll", "ece", "ood_auroc"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def _sampler_steps_taken(run_dir: Path) -> int:
    """The SVGD optimizer's step count in the run's checkpoint (particles from scratch: the sampler's steps)."""
    state = load_checkpoint(run_dir / "checkpoint.pt")["sampler"]["state"]["optimizer"]["state"]
    return {int(s["step"]) for s in state.values()}.pop()


def test_a_fraction_of_a_sampler_epoch_runs_that_share_of_the_batches(tmp_path):
    """``sampler.epochs = 1.5``: one full pass, then half of the next one's batches."""
    data = write_idx_dir(tmp_path / "fashion")
    taken, rows = {}, {}
    for epochs in ("1", "1.5"):
        out = tmp_path / f"runs{epochs}"
        assert main(_args(data, out, "svgd", "--set", f"sampler.epochs={epochs}")) == 0
        (run_dir,) = out.iterdir()
        taken[epochs] = _sampler_steps_taken(run_dir)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        rows[epochs] = [r for r in map(json.loads, lines) if "sampler_epoch" in r]
    per_epoch = taken["1"]
    assert per_epoch > 1 and taken["1.5"] == round(1.5 * per_epoch)
    assert [r["sampler_epoch"] for r in rows["1"]] == [0] and [r["sampler_epoch"] for r in rows["1.5"]] == [0, 1]
