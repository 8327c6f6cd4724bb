"""Every example script runs (with --smoke); a new example without a smoke entry fails the coverage test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bayestensor as bt

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE = {"quickstart.py": ["--smoke"], "warm_start_digits.py": ["--smoke"]}


def test_every_example_has_a_smoke_entry():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SMOKE)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_example_runs(name):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *SMOKE[name]], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout


def test_cnn_benchmark_smoke(tmp_path):
    """benchmarks/cnn_ard.py (the README's CNN table and curve) runs end to end on random images."""
    script = EXAMPLES.parent / "benchmarks" / "cnn_ard.py"
    plot = tmp_path / "curve.png"
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--variants", "dense,fixed,map,svi", "--curve", "20",
         "--models", "lenet5,vgg,resnet20", "--plot", str(plot), "--save", str(tmp_path / "runs.jsonl")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| lenet5") or line.startswith("| vgg")]
    assert len(rows) == 10 and plot.exists()
    saved = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(saved) == 15 and sum(r["target"] == 20 for r in saved) == 3
    replot = subprocess.run(
        [sys.executable, str(script), "--plot-from", str(tmp_path / "runs.jsonl"), "--models", "lenet5,vgg",
         "--plot", str(tmp_path / "again.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert replot.returncode == 0, replot.stderr
    assert (tmp_path / "again_lenet5.png").exists() and (tmp_path / "again_vgg.png").exists()
    assert not (tmp_path / "again_resnet20.png").exists()
    target_row = next(r for r in rows if "target 20x" in r)
    compression = float(target_row.split("|")[5].strip().rstrip("x"))
    assert 15.0 <= compression <= 25.0
    tolerant = subprocess.run(
        [sys.executable, str(script), "--smoke", "--variants", "map", "--models", "lenet5", "--tolerance", "0.05",
         "--holdout", "16"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tolerant.returncode == 0, tolerant.stderr
    assert any(line.startswith("| lenet5 | map |") for line in tolerant.stdout.splitlines())


def test_svgd_step_benchmark_smoke():
    """benchmarks/svgd_step.py (the README's sampler cost table) runs and prints its ratios."""
    script = EXAMPLES.parent / "benchmarks" / "svgd_step.py"
    result = subprocess.run(
        [sys.executable, str(script), "--model", "fc", "--rounds", "1", "--particles", "2", "--batch", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fastest SVGD x2 step: " in result.stdout and "a loop of 2 MAP steps (target < 1)" in result.stdout
    for drive in bt.inference.svgd.DRIVES:  # every drive is timed, with vmap and looped
        assert f"SVGD x2, vmap, drive={drive}" in result.stdout and f"SVGD x2, loop, drive={drive}" in result.stdout


def test_rescore_sampler_run_reproduces_the_report(tmp_path):
    """benchmarks/rescore_sampler_run.py rebuilds a run's posterior and MAP fit from its folder: the report's scores."""
    import importlib.util

    from _datafiles import write_idx_dir
    from bayestensor.cli.main import main

    data = write_idx_dir(tmp_path / "fashion")
    args = ["train", "fashion-mnist-fc", "--smoke", "--quiet", "--method", "svgd", "--data-dir", str(data),
            "--out", str(tmp_path / "runs"), "--set", "sampler.particles=3"]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    spec = importlib.util.spec_from_file_location("rescore", EXAMPLES.parent / "benchmarks" / "rescore_sampler_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.rescore(run_dir)
    assert out["map_fit"] == out["report"]["map_fit"]
    for key in module.SCORES:
        assert out["posterior"][key] == pytest.approx(out["report"][key], abs=1e-12), key
    assert out["posterior"]["members"] == pytest.approx(out["report"]["members"], abs=1e-12)


def test_cp_merge_benchmark_smoke():
    """benchmarks/cp_merge.py (the README's merge table) loads a revision's merge and prints both results."""
    root = EXAMPLES.parent
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the benchmark compares against a git revision")
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "cp_merge.py"), "--smoke", "--rounds", "1", "--base", "HEAD"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    degenerate = next(line for line in result.stdout.splitlines() if "degenerate" in line)
    cells = [c.strip() for c in degenerate.split("│")]
    assert cells[2:4] == ["4", "4"]  # both versions merge the planted rank 4 held in 8 components


def test_train_step_benchmark_smoke():
    """benchmarks/train_step.py (the README's whole-step table) runs every case, compiled ones included."""
    from bayestensor.experiments.compiled import compiler_problem

    problem = compiler_problem(torch.device("cpu"))
    if problem is not None:
        pytest.skip(f"torch.compile's default backend does not work on this machine: {problem}")
    script = EXAMPLES.parent / "benchmarks" / "train_step.py"
    result = subprocess.run(
        [sys.executable, str(script), "--model", "fc", "--rounds", "1", "--inner", "1", "--batch", "8", "--compile"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for case in ("fixed rank", "MAP prior term only", "SVI", "MAP compiled"):
        assert f"│ {case} " in result.stdout, case


def test_train_step_benchmark_times_a_revision_beside_this_checkout():
    """``--base REV`` imports the package at REV beside this one and times its cases in the same rounds."""
    root = EXAMPLES.parent
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the benchmark compares against a git revision")
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "train_step.py"), "--model", "fc", "--rounds", "1", "--inner", "1",
         "--batch", "8", "--base", "HEAD"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for case in ("fixed rank", "MAP", "MAP prior term only", "SVI"):
        assert f"│ {case} " in result.stdout and f"│ {case} (HEAD) " in result.stdout, case
