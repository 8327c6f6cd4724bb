"""The command line: listing, help, env, config errors (exit code 2), reports, quiet output off a terminal."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields

import pytest

from _datafiles import write_idx_dir
from bayestensor.cli.main import main
from bayestensor.experiments import available_experiments
from bayestensor.experiments.config import merge
from bayestensor.experiments.progress import Console
from bayestensor.experiments.registry import default_config


def test_experiments_lists_every_registered_experiment(capsys):
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    names = available_experiments()
    assert {"digits-fc", "mnist-fc", "fashion-mnist-fc", "fashion-mnist-cnn", "fashion-mnist-vit", "cifar10-cnn",
            "cifar10-resnet", "criteo-dlrm"} <= set(names)  # fmt: skip
    for name in names:
        assert name in out


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["report", "--help"], ["experiments", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: bayestensor" in capsys.readouterr().out


def test_env(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "formats" in out


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 2\nlearning_rate = 0.1\n")
    err = _error(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path)])
    assert "unknown config key(s) train.learning_rate" in err and "train.lr" in err
    assert "unknown section 'modle'" in _error(capsys, ["train", "--set", "modle.max_rank=3", "--out", str(tmp_path)])
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xc0\xff\x00epochs")
    assert f"config file {str(binary)!r} is not valid TOML" in _error(capsys, ["train", "--config", str(binary)])
    assert f"config file {str(tmp_path)!r} is a folder" in _error(capsys, ["train", "--config", str(tmp_path)])


def test_an_interrupted_command_says_so_without_a_traceback(monkeypatch, capsys):
    import bayestensor.cli.train as train_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "run", interrupted)
    assert main(["train", "--smoke"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; a run's last checkpoint is kept, and --resume continues it" in err and "Traceback" not in err


def test_bad_types(tmp_path, capsys):
    err = _error(capsys, ["train", "--set", "train.epochs=three", "--out", str(tmp_path)])
    assert "train.epochs: expected an integer, got 'three'" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsynthetic = "yes"\n')
    assert "data.synthetic: expected a boolean" in _error(capsys, ["train", "--config", str(cfg)])
    assert "model.bottom_mlp" in _error(
        capsys, ["train", "criteo-dlrm", "--synthetic", "--set", "model.bottom_mlp=a-b", "--out",
                 str(tmp_path)]
    )  # fmt: skip


@pytest.mark.parametrize("experiment", available_experiments())
def test_every_float_setting_takes_a_fraction_whatever_the_experiments_default(experiment):
    """Types come from the config's declarations: an experiment that sets ``sampler.epochs = 1`` keeps it a number."""
    cfg = default_config(experiment)
    for section in fields(cfg):
        if not dataclasses.is_dataclass(getattr(cfg, section.name)):
            continue
        for f in fields(getattr(cfg, section.name)):
            if isinstance(f.default, float):
                merge(cfg, {section.name: {f.name: 0.5}})
                assert getattr(getattr(cfg, section.name), f.name) == 0.5


@pytest.mark.parametrize("experiment", ["mnist-fc", "cifar10-cnn", "cifar10-resnet", "criteo-dlrm"])
def test_missing_data_dir(experiment, tmp_path, capsys):
    err = _error(capsys, ["train", experiment, "--smoke", "--out", str(tmp_path)])
    assert "--data-dir" in err
    missing = tmp_path / "nowhere"
    err = _error(capsys, ["train", experiment, "--smoke", "--data-dir", str(missing), "--out", str(tmp_path)])
    assert str(missing) in err
    expected = {"mnist-fc": "train-images-idx3-ubyte", "cifar10-cnn": "data_batch_1", "cifar10-resnet": "data_batch_1",
                "criteo-dlrm": "train.txt"}[experiment]  # fmt: skip
    assert expected in err


def test_dense_dlrm_at_full_size_is_refused(tmp_path, capsys):
    err = _error(capsys, ["train", "criteo-dlrm", "--synthetic", "--dense", "--out", str(tmp_path)])
    assert "GiB" in err and "data.max_cardinality" in err


def test_report_writes_markdown_and_plots_and_compares_runs(tmp_path, capsys):
    data = write_idx_dir(tmp_path / "fashion")
    out = tmp_path / "runs"
    common = ["--smoke", "--quiet", "--out", str(out)]
    assert main(["train", "fashion-mnist-fc", *common, "--data-dir", str(data)]) == 0
    assert main(["train", "fashion-mnist-fc", *common, "--data-dir", str(data), "--dense"]) == 0
    assert main(["train", "criteo-dlrm", "--synthetic", *common]) == 0
    runs = sorted(out.iterdir())
    for run in runs:
        for f in ("report.md", "ranks.png", "params.png"):
            (run / f).unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["report", *map(str, runs), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for run in runs:
        assert (run / "report.md").is_file() and (run / "ranks.png").is_file() and (run / "params.png").is_file()
    assert (tmp_path / "accuracy_vs_compression.png").is_file()
    dlrm = next(r for r in runs if r.name.startswith("criteo-dlrm"))
    report = json.loads((dlrm / "report.json").read_text())
    assert f"| test AUC | {report['test_auc']:.4f} |" in printed
    assert "tensorized tables: compression" in (dlrm / "report.md").read_text()
    assert _error(capsys, ["report", str(tmp_path / "missing")])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--set", "train.batch_size=0"], "train.batch_size: expected an integer >= 1, got 0"),
        (["--set", "data.limit=-5"], "data.limit: expected an integer >= 0 (0 = all examples), got -5"),
        (["--set", "train.predict_samples=0"], "train.predict_samples: expected an integer >= 1"),
        (["--lr", "inf"], "train.lr: expected a finite number > 0, got inf"),
        (["--device", "tpu"], "train.device: expected cpu, cuda or cuda:N, got 'tpu'"),
        (["--method", "foo"], "model.method: expected one of map, svi, none, svgd, sghmc, got 'foo'"),
        (["--format", "TTM"], "model.format: expected one of cp, tt, ttm, tucker, got 'TTM'"),
        (["--set", "train.epochs.x=1"], "--set train.epochs.x: train.epochs is a value, not a section"),
        (["--set", "name=../elsewhere"], "name: expected a folder name under out (no path separators)"),
    ],
)
def test_bad_values_are_named_before_anything_is_written(flags, message, tmp_path, capsys):
    out = tmp_path / "runs"
    err = _error(capsys, ["train", "--quiet", "--epochs", "2", "--out", str(out), *flags])
    assert message in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_report_names_what_is_wrong_with_a_run_folder(tmp_path, capsys):
    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    good = (run / "report.json").read_text()
    for text, message in (("{}", "lacks ['experiment'"), ("[1, 2]", "holds a JSON list; expected an object")):
        (run / "report.json").write_text(text)
        assert message in _error(capsys, ["report", str(run)])
    (run / "report.json").write_text(good)
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows) + "\n{not json\n")
    assert f"metrics.jsonl', line {len(rows) + 1}: not valid JSON" in _error(capsys, ["report", str(run)])
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    (tmp_path / "plot").write_text("")
    assert "is a file; expected a folder" in _error(
        capsys, ["report", str(run), str(run), "--out", str(tmp_path / "plot")]
    )


def test_training_output_is_quiet_off_a_terminal(tmp_path, capsys):
    assert main(["train", "--smoke", "--out", str(tmp_path)]) == 0  # no --quiet: capsys is not a TTY
    out = capsys.readouterr().out
    assert "epoch" not in out and "test accuracy" in out
    console = Console(quiet=False)
    with console.rich.capture() as cap:
        console.epoch({"epoch": 0, "train_loss": 1.5, "test_accuracy": 0.5, "params": 10, "ranks": {"0": [2]},
                       "seconds": 0.1})  # fmt: skip
        with console.progress(3, "epoch 1") as advance:
            advance()
    assert "1.5000" in cap.get() and "0.5000" in cap.get()


def test_bad_ard_arguments_fail_before_a_finished_run_is_touched(tmp_path, capsys):
    """A bad tolerance, target or max rank, or a warm-up longer than the run, is named; the saved run is kept."""
    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    saved = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    err = _error(capsys, ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "train.tolerance=-0.1"])
    assert "train.tolerance: expected 0 (off) or a relative loss rise > 0, got -0.1" in err
    err = _error(capsys, ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "train.target_compression=1"])
    assert "train.target_compression: expected 0 (off) or a compression > 1, got 1.0" in err
    err = _error(capsys, ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "train.optimizer_state=keep"])
    assert "train.optimizer_state: expected 'reset' or 'transport', got 'keep'" in err
    err = _error(capsys, ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "train.lr_schedule=linear"])
    assert "train.lr_schedule: expected one of 'constant', 'cosine', got 'linear'" in err
    err = _error(capsys, ["train", "--quiet", "--out", str(tmp_path), "--max-rank", "-1"])
    assert "model.max_rank: expected a rank >= 1, or 0 for ranks from a parameter budget, got -1" in err
    err = _error(capsys, ["train", "--quiet", "--out", str(tmp_path), "--epochs", "1"])  # the default warm-up is 12
    assert "longer than the run" in err
    err = _error(capsys, ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "data.validation=40"])
    assert "data.validation=40 holds examples out to prune within train.tolerance, which is 0 (off)" in err
    smoke_tol = ["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "train.tolerance=0.01"]
    err = _error(capsys, [*smoke_tol, "--set", "data.validation=256"])
    assert "data.validation: expected between 1 and 255 held-out examples (the training set has 256), got 256" in err
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == saved
    criteo = ["train", "criteo-dlrm", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "c")]
    err = _error(capsys, [*criteo, "--set", "train.tolerance=0.01", "--set", "data.validation=100"])
    assert "data.validation holds out synthetic rows only (--synthetic)" in err


@pytest.mark.parametrize("case", ["digits-fc", "criteo-dlrm --synthetic"])
def test_validation_examples_decide_pruning_within_the_tolerance(case, tmp_path, monkeypatch):
    """``data.validation`` holds examples out of training; their loss is what ``prune`` keeps within the tolerance."""
    import torch
    import torch.nn.functional as F

    from bayestensor.experiments import default_config, get_experiment
    from bayestensor.experiments.classification import hold_out
    from bayestensor.inference import ard as ard_module

    name, *flags = case.split()
    calls = []
    original = ard_module.prune

    def recording_prune(model, *args, **kwargs):
        calls.append((model, kwargs["evaluate"], kwargs["tolerance"]))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(ard_module, "prune", recording_prune)
    held = ["--set", "data.validation=40", "--set", "train.tolerance=0.05"]
    assert main(["train", name, *flags, "--smoke", "--quiet", "--out", str(tmp_path), *held]) == 0
    (run,) = tmp_path.iterdir()
    report = json.loads((run / "report.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # loss-based passes once the warm-up is over (and the last one always); the earlier ones prune by the threshold
    assert calls and calls[-1][1] is not None
    assert all((evaluate is None) == (tolerance is None) for _, evaluate, tolerance in calls)
    assert {tolerance for _, evaluate, tolerance in calls if evaluate is not None} == {0.05}
    assert report["validation_examples"] == 40 and all(row["validation_loss"] > 0 for row in rows)
    if name != "digits-fc":
        return
    cfg = default_config(name)
    get_experiment(name).smoke(cfg)
    x, y, _, _ = get_experiment(name).load_data(cfg)
    x_train, _, x_val, y_val = hold_out(x, y, 40)
    assert report["prior_rows"] == len(x_train) == len(x) - 40
    assert not (x_val[:, None] == x_train[None]).all(-1).any()  # no held-out image is trained on
    model = calls[-1][0]
    model.eval()
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x_val).double(), y_val))
    assert abs(calls[-1][1]() - expected) < 1e-6 * expected  # float32 softmax probabilities against float64 logits


def test_cosine_learning_rate_schedule_sets_each_epochs_rate(tmp_path):
    """``train.lr_schedule=cosine``: epoch ``e`` of ``E`` trains at ``lr · (1 + cos(π e / E)) / 2`` (``lr`` logged)."""
    args = ["train", "--smoke", "--quiet", "--lr", "0.01", "--out", str(tmp_path)]  # --smoke: 3 epochs
    assert main([*args, "--set", "train.lr_schedule=cosine"]) == 0
    assert main([*args, "--set", "name=held"]) == 0
    rows = {}
    for run in tmp_path.iterdir():
        rows[run.name] = [json.loads(r)["lr"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows.pop("held") == [0.01] * 3
    (cosine,) = rows.values()
    assert cosine == pytest.approx([0.01, 0.0075, 0.0025], rel=1e-12)  # cos(π/3) = 1/2, cos(2π/3) = -1/2


def test_train_tolerance_and_target_reach_ard(tmp_path, monkeypatch):
    from bayestensor.experiments import trainer

    made = []
    original = trainer.make_ard
    monkeypatch.setattr(trainer, "make_ard", lambda *a: made.append(original(*a)) or made[-1])
    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path), "--set", "train.tolerance=0.05"]) == 0
    assert made[0].tolerance == 0.05 and made[0].constraint.loss_steps > 0  # the controller saw the losses
    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path / "off")]) == 0
    assert made[1].tolerance is None and made[1].constraint.loss_steps == 0
    assert made[1].target_compression is None
    assert (
        main(["train", "--smoke", "--quiet", "--out", str(tmp_path / "t"), "--set", "train.target_compression=30"]) == 0
    )
    assert made[2].target_compression == 30.0 and made[2].compression() >= 30.0  # the last pass meets it


def test_plots_of_many_layers_put_the_legend_beside_the_axes(tmp_path):
    """A model with dozens of layer bonds (a ViT has 48) gets readable plots, without matplotlib's layout warning."""
    import warnings

    from matplotlib.image import imread

    from bayestensor.experiments.report import write_report

    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path)]) == 0
    run = next(tmp_path.iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row["ranks"] = {f"blocks.layers.{i}.self_attn.q_proj": [8, 8] for i in range(30)}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = json.loads((run / "report.json").read_text())
    report["spectra"] = {f"blocks.layers.{i}.linear1": [[1.0, 0.5, 1e-4]] for i in range(30)}
    (run / "report.json").write_text(json.dumps(report))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(run)
    for name in ("ranks.png", "spectrum.png"):
        height, width = imread(run / name).shape[:2]
        assert width > 1.5 * height  # 6 x 4 inches at 100 dpi, widened by the legend's columns beside it
