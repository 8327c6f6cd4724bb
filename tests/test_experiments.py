"""Built-in experiments end to end: smoke runs on written files, resume after a hard kill, DDP, export, metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import bayestensor as bt
from _datafiles import write_cifar_dir, write_criteo_dir, write_idx_dir
from bayestensor.cli.main import main
from bayestensor.data import KAGGLE_CARDINALITIES
from bayestensor.experiments import available_experiments
from bayestensor.experiments.auc import roc_auc
from bayestensor.experiments.classification import ClassificationTask
from bayestensor.experiments.clock import TrainingClock
from bayestensor.experiments.config import ConfigError, RunConfig
from bayestensor.experiments.dlrm_model import DLRM, largest_tables
from bayestensor.experiments.models import tensor_kwargs
from bayestensor.experiments.optim import LazyAdam
from bayestensor.experiments.resnet import CifarResNet
from bayestensor.experiments.run_state import layer_table, weight_rms
from bayestensor.experiments.trainer import KILL_ENV, KILL_STATUS
from bayestensor.io import load, save

SRC = Path(__file__).resolve().parents[1] / "src"

# experiment name -> (id, function writing its data and returning extra CLI arguments)
SMOKE_CASES = {
    "digits-fc": lambda d: [],
    "mnist-fc": lambda d: ["--data-dir", str(write_idx_dir(d / "mnist"))],
    "fashion-mnist-fc": lambda d: ["--data-dir", str(write_idx_dir(d / "fashion"))],
    "fashion-mnist-cnn": lambda d: ["--data-dir", str(write_idx_dir(d / "fashion"))],
    "fashion-mnist-vit": lambda d: ["--data-dir", str(write_idx_dir(d / "fashion"))],
    "cifar10-cnn": lambda d: ["--data-dir", str(write_cifar_dir(d / "cifar"))],
    "cifar10-resnet": lambda d: ["--data-dir", str(write_cifar_dir(d / "cifar")), "--set", "model.depth=8"],
    "fashion-mnist-resnet": lambda d: ["--data-dir", str(write_idx_dir(d / "fashion"))],
    "criteo-dlrm": lambda d: ["--data-dir", str(write_criteo_dir(d / "criteo"))],
    "criteo-dlrm --synthetic": lambda d: ["--synthetic"],
}


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_every_experiment_has_a_smoke_test():
    covered = {case.split()[0] for case in SMOKE_CASES}
    missing = sorted(set(available_experiments()) - covered)
    assert not missing, f"experiments without a smoke test in SMOKE_CASES: {missing}"


@pytest.mark.parametrize("case", sorted(SMOKE_CASES))
def test_smoke_run_writes_a_complete_run_folder(case, tmp_path):
    name = case.split()[0]
    args = SMOKE_CASES[case](tmp_path)
    out = tmp_path / "runs"
    assert main(["train", name, "--smoke", "--quiet", "--out", str(out), *args]) == 0
    (run_dir,) = out.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    for key in (
        "experiment",
        "format",
        "method",
        "prior",
        "test_accuracy",
        "dense_params",
        "params",
        "compression",
        "layers",
        "prune_threshold",
        "epochs",
        "train_seconds",
        "peak_rss_mb",
    ):
        assert key in report, key
    assert report["experiment"] == name and 0.0 <= report["test_accuracy"] <= 1.0
    assert report["compression"] == pytest.approx(report["dense_params"] / report["params"])
    assert report["layers"], "no tensorized layer reported"
    layer_dense = sum(row["dense_params"] for row in report["layers"].values())
    layer_params = sum(row["params"] for row in report["layers"].values())
    assert report["tensorized_layers_compression"] == pytest.approx(layer_dense / layer_params)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(report["epochs"]))
    for f in ("config.toml", "checkpoint.pt", "report.md", "ranks.png", "params.png", "spectrum.png"):
        assert (run_dir / f).is_file(), f
    # the exported model rebuilds without the experiment code and has the pruned size
    model = load(run_dir)
    assert bt.count_params(model) == report["params"]
    assert bt.ranks(model) == {k: v["final_ranks"] for k, v in report["layers"].items()}
    if name == "criteo-dlrm":
        assert 0.0 <= report["test_auc"] <= 1.0 and report["samples_per_second"] > 0
        big = largest_tables(KAGGLE_CARDINALITIES, 5)
        # --smoke keeps the true table sizes (at embedding dim 8)
        assert report["tensorized_tables_dense_params"] == 8 * sum(KAGGLE_CARDINALITIES[t] for t in big)
        assert report["tensorized_tables_params"] == sum(t["params"] for t in report["tensorized_tables"].values())
        if "--synthetic" in case:
            assert 0.5 < report["teacher_auc"] <= 1.0
            assert report["prior_rows"] == 39_291_958  # the Kaggle training split the stream stands in for
    for row in report["layers"].values():
        assert row["collapsed"] == (row["weight_rms"] < 1e-2 * row["initial_weight_rms"])


@pytest.mark.parametrize("extra", [[], ["--set", "train.target_compression=40"]], ids=["plain", "target"])
def test_resume_after_a_hard_kill_matches_an_uninterrupted_run(extra, tmp_path):
    """Also with a target, which prunes this smoke run to 40x (its state's round trip: test_ard's cap test)."""
    data = write_idx_dir(tmp_path / "fashion")
    base = [sys.executable, "-m", "bayestensor", "train", "fashion-mnist-fc", "--smoke", "--quiet", "--method", "svi",
            "--data-dir", str(data), "--epochs", "3", *extra]  # fmt: skip
    killed = tmp_path / "killed"
    run = subprocess.run([*base, "--out", str(killed)], env={**env(), KILL_ENV: "2"}, capture_output=True, text=True)
    assert run.returncode == KILL_STATUS, run.stderr
    (run_dir,) = killed.iterdir()
    assert not (run_dir / "report.json").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = subprocess.run([*base, "--out", str(killed), "--resume"], env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    full = tmp_path / "full"
    assert main(["train", *base[4:], "--out", str(full)]) == 0
    a = json.loads((run_dir / "report.json").read_text())
    b = json.loads((full / run_dir.name / "report.json").read_text())
    for key in ("test_accuracy", "nll", "ece", "params", "layers", "spectra", "accuracy_before_prune"):
        assert a[key] == b[key], key
    rows_a = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (full / run_dir.name / "metrics.jsonl").read_text().splitlines()]
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b
    ]


def test_the_training_clock_leaves_out_what_it_scores_and_starts_from_a_resumed_runs_values():
    clock = TrainingClock(train_seconds=5.0, scoring_seconds=1.0)
    before = clock.train_seconds
    assert clock.score(lambda s: time.sleep(s) or "scored", 0.4) == "scored"
    with pytest.raises(ZeroDivisionError):
        clock.score(lambda: (time.sleep(0.3), 1 / 0))
    after = clock.train_seconds
    assert 5.0 <= before <= after < before + 0.3  # the calls' 0.7 s of scoring does not count as training
    assert 1.7 <= clock.scoring_seconds < 2.2


def _slowed_epoch_metrics(seconds: float):
    """``ClassificationTask.epoch_metrics`` that first sleeps ``seconds``: scoring that takes a known time."""
    scored = ClassificationTask.epoch_metrics

    def slow_metrics(self, model):
        time.sleep(seconds)
        return scored(self, model)

    return slow_metrics


def test_a_runs_test_set_scoring_is_not_training_time(tmp_path, monkeypatch):
    slow = 1.0
    monkeypatch.setattr(ClassificationTask, "epoch_metrics", _slowed_epoch_metrics(slow))
    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path), "--epochs", "2"]) == 0
    (run_dir,) = tmp_path.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # each epoch's row scores once, and the last epoch once more before its final pruning: 3 s of scoring
    assert report["scoring_seconds"] >= 3 * slow
    assert rows[1]["seconds"] - rows[0]["seconds"] < slow  # a smoke epoch trains in far less than the sleep
    assert report["train_seconds"] == pytest.approx(rows[1]["seconds"], abs=slow)
    assert "| scoring seconds (test metrics, not training) |" in (run_dir / "report.md").read_text()


class _Killed(Exception):
    pass


def test_a_resumed_run_goes_on_from_both_clocks_of_its_checkpoint(tmp_path, monkeypatch):
    """Killed after epoch 2 of 3 (its scoring slowed by 1 s a call), resumed with fast scoring."""
    slow = 1.0

    def kill(status):
        raise _Killed(status)

    args = ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--epochs", "3"]
    with monkeypatch.context() as m:
        m.setattr(ClassificationTask, "epoch_metrics", _slowed_epoch_metrics(slow))
        m.setattr(os, "_exit", kill)  # the trainer's hard kill, raised instead of ending pytest
        m.setenv(KILL_ENV, "2")
        with pytest.raises(_Killed):
            main(args)
    (run_dir,) = tmp_path.iterdir()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["scoring_seconds"] >= 2 * slow  # two epochs' rows, each scored once
    assert state["elapsed"] < slow  # a smoke epoch trains in far less than the sleep
    assert main([*args, "--resume"]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    # the resumed run adds its own fast scoring to the checkpoint's, and its training time to the checkpoint's
    assert state["scoring_seconds"] <= report["scoring_seconds"] < state["scoring_seconds"] + slow
    assert state["elapsed"] <= rows[1]["seconds"] <= rows[2]["seconds"] <= report["train_seconds"]
    assert report["train_seconds"] < slow


def _one_epoch_run(tmp_path: Path) -> tuple[list[str], Path]:
    """A finished one-epoch digits smoke run under ``tmp_path / "runs"``: its CLI arguments and its folder."""
    out = tmp_path / "runs"
    args = ["train", "--smoke", "--quiet", "--out", str(out), "--epochs", "1"]
    assert main(args) == 0
    (run_dir,) = out.iterdir()
    return args, run_dir


def _resume_from(damaged: bytes, ckpt: Path, args: list[str], capsys) -> str:
    """Write ``damaged`` as the checkpoint and resume: exit code 2, the file left as it was; returns stderr."""
    ckpt.write_bytes(damaged)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert ckpt.read_bytes() == damaged
    return capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error_and_is_left_untouched(tmp_path, capsys):
    args, run_dir = _one_epoch_run(tmp_path)
    ckpt = run_dir / "checkpoint.pt"
    for damaged in (ckpt.read_bytes()[: ckpt.stat().st_size // 2], b"not a checkpoint"):
        err = _resume_from(damaged, ckpt, args, capsys)
        assert "truncated or corrupt" in err and str(ckpt) in err


def test_a_new_run_never_writes_into_an_earlier_runs_folder(tmp_path, capsys):
    """Run twice without --resume: the second run gets ``NAME-2``; the first keeps every file, byte for byte."""
    args, first = _one_epoch_run(tmp_path)
    out = first.parent
    saved = {f.name: f.read_bytes() for f in first.iterdir() if f.is_file()}
    assert main([*args, "--lr", "0.05"]) == 0
    second = out / f"{first.name}-2"
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, second.name])
    assert {f.name: f.read_bytes() for f in first.iterdir() if f.is_file()} == saved
    assert json.loads((second / "report.json").read_text())["run_dir"] == str(second)
    assert f"{first} holds a finished run; this run writes {second}" in capsys.readouterr().out
    # the named folder resumes; the saved config's other keys must match, and those that differ are named
    assert main([*args, "--lr", "0.05", "--set", f"name={second.name}", "--resume"]) == 0
    capsys.readouterr()
    assert main([*args, "--lr", "0.02", "--seed", "3", "--set", f"name={second.name}", "--resume"]) == 2
    assert "(train.lr, train.seed differ)" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_hold_this_runs_state_is_named_and_left_untouched(tmp_path, capsys):
    args, run_dir = _one_epoch_run(tmp_path)
    ckpt = run_dir / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    for key, value, shown in (("rng", "x", "TypeError"), ("epoch", "3x", "ValueError"), ("model", {}, "Missing key")):
        torch.save({**state, key: value}, ckpt)
        err = _resume_from(ckpt.read_bytes(), ckpt, args, capsys)
        assert f"checkpoint {str(ckpt)!r} does not hold this run's state" in err and shown in err, err
        assert "Traceback" not in err


def test_ddp_two_processes_prune_identically(tmp_path):
    data = write_idx_dir(tmp_path / "fashion")
    out = tmp_path / "runs"
    worker = Path(__file__).with_name("_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(worker), str(tmp_path / "dump"), "fashion-mnist-fc", "--smoke", "--quiet", "--out", str(out),
           "--data-dir", str(data), "--epochs", "3", "--set", "train.prune_threshold=0.2"]  # fmt: skip
    run = subprocess.run(cmd, env={**env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    dumps = [json.loads((tmp_path / f"dump.{r}.json").read_text()) for r in (0, 1)]
    assert dumps[0]["world_size"] == dumps[1]["world_size"] == 2
    assert dumps[0]["ranks"] == dumps[1]["ranks"] and dumps[0]["params"] == dumps[1]["params"]
    assert dumps[0]["checksum"] == dumps[1]["checksum"]  # identical weights after pruning and training
    assert any(r < 4 for rs in dumps[0]["ranks"].values() for r in rs), "nothing was pruned; test is vacuous"
    (run_dir,) = out.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["params"] == dumps[0]["params"]


def test_export_round_trip_of_a_pruned_model(tmp_path):
    torch.manual_seed(0)
    model = DLRM(
        [50, 7, 300, 11],
        num_dense=3,
        embedding_dim=4,
        bottom=[8, 4],
        top=[6, 1],
        tensorized=2,
        tensor={"format": "tt", "max_rank": 3, "method": "map", "prior": "half_cauchy", "prior_kwargs": {}},
    )
    for _, t in bt.inference.bayesian_tensors(model):
        t.truncate_([torch.tensor([i for i in (0, 2) if i < r]) for r in t.ranks])
    save(model, tmp_path / "m")
    back = load(tmp_path / "m.safetensors")
    dense, sparse = torch.rand(5, 3), torch.stack([torch.randint(0, c, (5,)) for c in (50, 7, 300, 11)], 1)
    model.eval()
    assert torch.equal(back(dense, sparse), model(dense, sparse))
    assert bt.ranks(back) == bt.ranks(model) and bt.count_params(back) == bt.count_params(model)


@pytest.mark.parametrize("fmt", bt.available_formats())
def test_max_rank_zero_starts_every_tensorized_layer_from_the_parameter_budget(fmt):
    """``model.max_rank = 0``: each layer's ranks are the largest uniform ones within 10 % of its dense weight."""
    cfg = RunConfig()
    cfg.model.format, cfg.model.max_rank = fmt, 0
    kwargs = tensor_kwargs(cfg.model)
    assert kwargs["max_rank"] is None
    model = CifarResNet(8, 10, 1.0, kwargs, in_channels=1)
    layers = bt.inference.tensorized_layers(model)
    assert layers
    for name, layer in layers:
        t = layer.weight
        dense = math.prod(t.out_shape) * math.prod(t.in_shape)
        bigger = t.fmt.resolve_ranks([r + 1 for r in t.ranks], t.out_shape, t.in_shape)
        assert t.n_params() <= 0.1 * dense, name
        assert bigger == list(t.ranks) or t.fmt.n_params(t.out_shape, t.in_shape, bigger) > 0.1 * dense, name
    cfg.model.max_rank = -2
    with pytest.raises(ConfigError, match=r"model\.max_rank: expected a rank >= 1, or 0 .* got -2"):
        tensor_kwargs(cfg.model)


@pytest.mark.parametrize("fmt", bt.available_formats())
def test_model_init_frames_reaches_every_tensorized_layer(fmt):
    """``model.init = "frames"``: each layer's non-root factors are isometries (tree formats), at the layer's std."""
    cfg = RunConfig()
    cfg.model.format, cfg.model.max_rank, cfg.model.init = fmt, 0, "frames"
    torch.manual_seed(0)
    model = CifarResNet(8, 10, 1.0, tensor_kwargs(cfg.model), in_channels=1)
    layers = bt.inference.tensorized_layers(model)
    assert layers
    for name, layer in layers:
        t = layer.weight
        frames = t.fmt.network(t.out_shape, t.in_shape, list(t.ranks)).isometry_frames()
        assert t.weight_rms() == pytest.approx(math.sqrt(2.0 / (layer.in_channels * 9)), rel=1e-5), name  # He
        for f, axis in frames[1] if frames else ():
            m = t.factors[f].detach().double().movedim(axis, -1)
            m = m.reshape(-1, m.shape[-1])
            gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
            torch.testing.assert_close(gram, torch.eye(len(gram), dtype=gram.dtype), atol=1e-6, rtol=0)
    cfg.model.init = "decompose"  # needs a trained dense weight, which an experiment's fresh model has not
    with pytest.raises(ConfigError, match=r"model\.init: expected one of \('random', 'frames'\), got 'decompose'"):
        tensor_kwargs(cfg.model)
    with pytest.raises(ValueError, match=r"unknown init 'svd' for a new tensor; expected one of \('random',"):
        bt.TensorizedLinear(16, 16, init="svd")


def test_roc_auc_matches_the_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (300,), generator=gen).float()  # many ties
    labels = (torch.rand(300, generator=gen) < 0.3).float()
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(scores, torch.zeros(300)) != roc_auc(scores, torch.zeros(300))  # nan with one class


def test_lazy_adam_matches_adam_and_sparse_adam():
    torch.manual_seed(0)
    dense_a, dense_b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    dense_b.load_state_dict(dense_a.state_dict())
    bag_a, bag_b = torch.nn.EmbeddingBag(20, 3, sparse=True), torch.nn.EmbeddingBag(20, 3, sparse=True)
    bag_b.load_state_dict(bag_a.state_dict())
    ours = LazyAdam([*dense_a.parameters(), *bag_a.parameters()], lr=0.01)
    ref_dense, ref_sparse = (
        torch.optim.Adam(dense_b.parameters(), lr=0.01),
        torch.optim.SparseAdam(bag_b.parameters(), lr=0.01),
    )
    for _ in range(5):
        x, ids = torch.randn(6, 4), torch.randint(0, 20, (6, 2))
        for lin, bag in ((dense_a, bag_a), (dense_b, bag_b)):
            (lin(x).square().sum() + bag(ids).pow(3).sum()).backward()
        ours.step()
        ref_dense.step()
        ref_sparse.step()
        for opt in (ours, ref_dense, ref_sparse):
            opt.zero_grad()
    for a, b in ((dense_a, dense_b), (bag_a, bag_b)):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_layer_table_reports_weight_rms_and_flags_collapsed_layers():
    model = nn.Sequential(
        bt.TensorizedLinear(24, 30, format="tt", max_rank=3, in_shape=(4, 3, 2), out_shape=(2, 5, 3), method="map"),
        nn.ReLU(),
        bt.TensorizedLinear(30, 10, format="ttm", max_rank=3, in_shape=(5, 6), out_shape=(2, 5), method="map"),
    )
    initial = weight_rms(model)
    for name, layer in (("0", model[0]), ("2", model[2])):
        assert initial[name] == pytest.approx(float(layer.full_weight().detach().square().mean().sqrt()), rel=1e-5)
    with torch.no_grad():
        for f in model[0].weight.factors:
            f.mul_(0.1)  # six cores: the weight shrinks by 1e-6
    table = layer_table(model, bt.ranks(model), initial)
    assert table["0"]["collapsed"] and not table["2"]["collapsed"]
    assert table["0"]["weight_rms"] == pytest.approx(1e-6 * initial["0"], rel=1e-4)
