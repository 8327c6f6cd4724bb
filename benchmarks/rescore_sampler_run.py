"""Score a finished ``--method svgd|sghmc`` run again from its folder, and the MAP fit its sampler followed.

Run:  python benchmarks/rescore_sampler_run.py RUN_DIR [RUN_DIR ...] [--threads 2]

For each run folder (written by ``bayestensor train``), this rebuilds

* the posterior: ``bt.Ensemble.clone(bt.load(RUN_DIR/"model"), P)`` loaded from ``posterior.pt``;
* the MAP fit: the experiment's model loaded from ``checkpoint.pt``'s ``"model"``, which the sampler
  phase leaves as the MAP phase ended it;

and scores both with the experiment's own ``final_metrics`` (test accuracy, NLL, ECE, OOD AUROC, and the
members' own scores for the posterior). Runs from builds before the report held ``map_fit`` and the
members' OOD AUROC get them this way; for newer runs it checks that the report says the same.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import bayestensor as bt
from bayestensor.experiments.checkpoint import load_checkpoint
from bayestensor.experiments.config import RunConfig, load_toml, merge
from bayestensor.experiments.distributed import DistContext
from bayestensor.experiments.posterior import vectorize
from bayestensor.experiments.registry import get_experiment
from bayestensor.experiments.trainer import make_task

SCORES = ("test_accuracy", "nll", "ece", "ood_auroc")


def rescore(run_dir: Path) -> dict[str, object]:
    """``{"posterior": …, "map_fit": …, "report": …}`` for one sampler run folder."""
    cfg = RunConfig()
    merge(cfg, load_toml(run_dir / "config.toml"))
    exp = get_experiment(cfg.experiment)
    task = make_task(exp, cfg, DistContext(), torch.device("cpu"))
    state = torch.load(run_dir / "posterior.pt", weights_only=True)
    size = bt.Ensemble.particles_in(state)
    posterior = bt.Ensemble.clone(bt.load(run_dir / "model"), size)
    posterior.load_state_dict(state)
    posterior.vectorize = vectorize(cfg.sampler.execution, posterior.base)  # as the run: the same summation order
    fit = exp.build_model(cfg)
    fit.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt", required=("model",))["model"])
    report = json.loads((run_dir / "report.json").read_text())
    return {
        "posterior": task.final_metrics(posterior, None),
        "map_fit": task.final_metrics(fit, 1),
        "report": {k: report.get(k) for k in (*SCORES, "members", "map_fit")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run_dir in args.runs:
        print(run_dir)
        print(json.dumps(rescore(run_dir), indent=1))


if __name__ == "__main__":
    main()
