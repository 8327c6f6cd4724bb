"""The training loop of the built-in classification experiments: ARD training, periodic pruning, resume."""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inference import (
    bayesian_tensors,
    expected_calibration_error,
    kl_weight,
    negative_log_likelihood,
    predict,
    prior_loss,
    prune,
    ranks,
    tensorized_layers,
)
from ..tensors import count_params, dense_params
from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .config import RunConfig, dump_toml
from .registry import get_experiment
from .report import write_report

CHECKPOINT = "checkpoint.pt"


@dataclass
class Evaluation:
    """Test-set metrics of a classifier."""

    accuracy: float
    nll: float
    ece: float


def evaluate(model: nn.Module, x: Tensor, y: Tensor, num_samples: int = 1, batch_size: int = 2048) -> Evaluation:
    """Accuracy, NLL and ECE of the (posterior-predictive, for SVI with ``num_samples > 1``) class probabilities."""
    model.eval()
    probs = []
    for i in range(0, len(x), batch_size):
        mean, _ = predict(model, x[i : i + batch_size], num_samples=num_samples, transform=lambda z: z.softmax(-1))
        probs.append(mean)
    p = torch.cat(probs).double()
    return Evaluation(
        accuracy=float((p.argmax(1) == y).double().mean()),
        nll=negative_log_likelihood(p, y),
        ece=expected_calibration_error(p, y),
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _lambda_spectra(model: nn.Module) -> dict[str, list[list[float]]]:
    out = {}
    for name, t in bayesian_tensors(model):
        layer = name[: -len(".weight")] if name.endswith(".weight") else name
        out[layer] = [sorted((lam / lam.max()).tolist(), reverse=True) for lam in t.rank_variances()]
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _layer_table(model: nn.Module, initial: dict[str, list[int]]) -> dict[str, Any]:
    table = {}
    for name, layer in tensorized_layers(model):
        t = layer.weight
        table[name] = {
            "format": t.fmt.name,
            "in_shape": list(t.in_shape),
            "out_shape": list(t.out_shape),
            "initial_ranks": initial.get(name, list(t.ranks)),
            "final_ranks": list(t.ranks),
            "params": layer.get_num_params(),
            "dense_params": layer.dense_params(),
        }
    return table


class Console:
    """Prints progress with rich when attached to a terminal; quiet otherwise (only final summaries)."""

    def __init__(self, quiet: bool | None = None) -> None:
        from rich.console import Console as RichConsole

        self.rich = RichConsole()
        self.quiet = (not self.rich.is_terminal) if quiet is None else quiet

    def epoch(self, row: dict[str, Any]) -> None:  # noqa: D102
        if not self.quiet:
            self.rich.print(
                f"epoch {row['epoch'] + 1:>3}  loss {row['train_loss']:.4f}  acc {row['test_accuracy']:.4f}  "
                f"params {row['params']:,}  ranks {row['ranks']}  {row['seconds']:.1f}s"
            )

    def print(self, *args: Any) -> None:  # noqa: D102
        self.rich.print(*args)


def train(cfg: RunConfig, *, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Train ``cfg.experiment`` and write the run folder ``cfg.out / cfg.run_name``.

    The loss of a batch is the mean cross-entropy plus ``β(epoch) · prior_loss(model) / N``
    (:func:`bayestensor.prior_loss` also runs the closed-form ``λ`` M-step), with ``β`` ramped by
    :func:`bayestensor.kl_weight` up to ``train.kl_weight``. Every ``prune_every`` epochs from
    ``prune_start`` the model is physically pruned (:func:`bayestensor.prune`, optimizer state
    kept). A checkpoint is written atomically after every epoch; ``resume=True`` continues from it
    and reproduces an uninterrupted run on CPU.

    Returns the report dict also written to ``report.json``.
    """
    console = console or Console()
    exp = get_experiment(cfg.experiment)
    run_dir = Path(cfg.out) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    _seed_everything(cfg.train.seed)
    xtr, ytr, xte, yte = (t.to(device) for t in exp.load_data(cfg))
    model = exp.build_model(cfg).to(device)
    bayes = bool(bayesian_tensors(model))
    initial_ranks = ranks(model)
    initial_params = count_params(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    history: list[dict[str, Any]] = []
    start = 0
    elapsed = 0.0
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        state = load_checkpoint(ckpt_path, required=("model", "optimizer", "epoch", "history", "rng", "config"))
        if state["config"] != cfg.to_dict():
            raise CheckpointError(
                f"checkpoint {str(ckpt_path)!r} was written with another configuration; resume with the same "
                "arguments or start a new run (--out/--set name=...)"
            )
        model.load_state_dict(state["model"])
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        start, history, elapsed = state["epoch"] + 1, state["history"], state.get("elapsed", 0.0)
        initial_ranks, initial_params = state["initial_ranks"], state["initial_params"]
    else:
        (run_dir / "config.toml").write_text(dump_toml(cfg.to_dict()))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    n_train = len(xtr)
    t0 = time.perf_counter() - elapsed
    for epoch in range(start, cfg.train.epochs):
        model.train()
        beta = kl_weight(
            epoch,
            no_kl_epochs=cfg.train.no_kl_epochs,
            warmup_epochs=cfg.train.warmup_epochs,
            max_weight=cfg.train.kl_weight,
        )
        gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        perm = torch.randperm(n_train, generator=gen).to(device)
        total, total_prior, batches = 0.0, 0.0, 0
        for i in range(0, n_train, cfg.train.batch_size):
            idx = perm[i : i + cfg.train.batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            if bayes:
                reg = prior_loss(model)
                loss = loss + beta * reg / n_train
                total_prior += float(reg.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        pruned = None
        if bayes and epoch >= cfg.train.prune_start and (epoch - cfg.train.prune_start) % cfg.train.prune_every == 0:
            pruned = prune(model, cfg.train.prune_threshold, optimizer=optimizer).changed
        ev = evaluate(model, xte, yte)
        row = {
            "epoch": epoch,
            "train_loss": total / batches,
            "prior_loss": total_prior / batches,
            "kl_weight": beta,
            "test_accuracy": ev.accuracy,
            "params": count_params(model),
            "ranks": ranks(model),
            "pruned": pruned,
            "lambda_min_ratio": {k: [min(s) for s in v] for k, v in _lambda_spectra(model).items()},
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None,
                "epoch": epoch,
                "history": history,
                "rng": _rng_state(),
                "config": cfg.to_dict(),
                "elapsed": row["seconds"],
                "initial_ranks": initial_ranks,
                "initial_params": initial_params,
            },
            ckpt_path,
        )
        with (run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        console.epoch(row)

    train_seconds = time.perf_counter() - t0
    samples = cfg.train.predict_samples if cfg.model.method == "svi" and not cfg.model.dense else 1
    before = evaluate(model, xte, yte)
    params_before = count_params(model)
    if bayes:
        prune(model, cfg.train.prune_threshold)
    after = evaluate(model, xte, yte, num_samples=samples)
    params = count_params(model)
    dense = dense_params(model)
    report = {
        "experiment": cfg.experiment,
        "format": "dense" if cfg.model.dense else cfg.model.format,
        "method": "dense" if cfg.model.dense else cfg.model.method,
        "prior": cfg.model.prior if bayes else None,
        "test_accuracy": after.accuracy,
        "accuracy_before_prune": before.accuracy,
        "nll": after.nll,
        "ece": after.ece,
        "predictive_samples": samples,
        "dense_params": dense,
        "initial_params": initial_params,
        "params_before_prune": params_before,
        "params": params,
        "compression": dense / params,
        "layers": _layer_table(model, initial_ranks),
        "spectra": _lambda_spectra(model),
        "prune_threshold": cfg.train.prune_threshold,
        "epochs": cfg.train.epochs,
        "train_seconds": train_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "run_dir": str(run_dir),
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(run_dir)
    return report
