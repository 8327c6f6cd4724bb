"""The training loop of the built-in experiments: ARD training, periodic pruning, checkpoints, resume, DDP.

The loop is shared; what a batch, a loss and a test metric are comes from the experiment's task
(:class:`~.classification.ClassificationTask` or :class:`~.clicks.ClicksTask`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..inference import ARD, bayesian_tensors, ranks
from ..io import save as export_model
from ..tensors import count_params, dense_params
from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .classification import ClassificationTask, Evaluation, evaluate
from .clicks import ClicksTask
from .clock import TrainingClock
from .compiled import CompiledObjective, check_compile_mode, use_compile
from .config import ConfigError, RunConfig, check_values, dump_toml
from .distributed import (
    DistContext,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    process_group,
    shutdown,
    wrap,
)
from .optim import epoch_learning_rate, make_optimizer, set_learning_rate
from .posterior import SAMPLERS, SamplerPhase, check_sampler_config, sampler_passes
from .progress import Console
from .registry import Experiment, get_experiment
from .report import write_report
from .run_folder import config_differences, fresh_run_dir
from .run_state import lambda_spectra as _lambda_spectra
from .run_state import layer_table, peak_rss_mb, rng_state, seed_everything, set_rng_state, weight_rms

CHECKPOINT = "checkpoint.pt"
#: Config keys that say where a run is, not what it computes: a resume may name its folder differently.
WHERE_KEYS = ("out", "name")
#: Test hook: exit hard (``os._exit``) right after epoch ``k`` (1-based) has been checkpointed.
KILL_ENV = "BAYESTENSOR_TEST_KILL_AFTER_EPOCH"
#: Exit status of that hard exit.
KILL_STATUS = 75

__all__ = ["CHECKPOINT", "Console", "Evaluation", "evaluate", "train"]


class Task(Protocol):
    """What the loop needs from a task."""

    num_train: int
    validation: Any  # the held-out examples of ``data.validation``, or ``None``

    def objective(self, net: nn.Module, ard: ARD) -> Callable[..., tuple[Tensor, Tensor]]: ...

    def train_epoch(
        self,
        net: nn.Module,
        objective: Callable[..., tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        epoch: int,
        console: Console,
    ) -> dict[str, float]: ...

    def validation_loss(self, model: nn.Module) -> float: ...

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]: ...

    def final_metrics(self, model: nn.Module, num_samples: int) -> dict[str, Any]: ...

    def report_extras(self, model: nn.Module, history: list[dict[str, Any]]) -> dict[str, Any]: ...


def make_task(exp: Experiment, cfg: RunConfig, ctx: DistContext, device: torch.device) -> Task:
    """The task object of ``exp`` (loads the data)."""
    if exp.task == "clicks":
        return ClicksTask(exp, cfg, ctx, device)
    return ClassificationTask(exp, cfg, ctx, device)


def make_ard(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, num_train: int, ctx: DistContext
) -> ARD:
    """The run's :class:`~bayestensor.ARD`: ``train.kl_weight``, warm-up, pruning, tolerance, fine-tune, target."""
    t = cfg.train
    try:
        epoch_learning_rate(t.lr, t.lr_schedule, 0, max(t.epochs, 1))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not t.tolerance >= 0:
        raise ConfigError(f"train.tolerance: expected 0 (off) or a relative loss rise > 0, got {t.tolerance!r}")
    if t.target_compression != 0 and not t.target_compression > 1:
        raise ConfigError(
            f"train.target_compression: expected 0 (off) or a compression > 1, got {t.target_compression!r}"
        )
    if cfg.data.validation and not t.tolerance > 0:
        raise ConfigError(
            f"data.validation={cfg.data.validation} holds examples out to prune within train.tolerance, which is "
            "0 (off); set train.tolerance too (for example --set train.tolerance=0.01)"
        )
    bayes = bool(bayesian_tensors(model))
    with warnings.catch_warnings():
        if not bayes:  # a dense twin: nothing to determine, no schedule to check, nothing to warn about
            warnings.simplefilter("ignore")
        return ARD(
            model,
            optimizer,
            num_data=num_train,
            epochs=t.epochs,
            kl_weight=t.kl_weight,
            no_kl_epochs=t.no_kl_epochs if bayes else 0,
            warmup_epochs=t.warmup_epochs if bayes else 0,
            prune_every=t.prune_every,
            prune_start=t.prune_start,
            prune_threshold=t.prune_threshold,
            process_group=process_group(ctx),
            tolerance=t.tolerance if bayes and t.tolerance > 0 else None,
            finetune_epochs=(None if t.finetune_epochs == -1 else t.finetune_epochs) if bayes else 0,
            target_compression=t.target_compression if bayes and t.target_compression > 0 else None,
            optimizer_state=t.optimizer_state,
        )


def train(cfg: RunConfig, *, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Train ``cfg.experiment`` and write the run folder ``cfg.out / cfg.run_name``.

    The loss of a batch is the task's mean loss (cross-entropy, or BCE for clicks) plus
    ``β(epoch) · prior_loss(model) / N`` (:func:`bayestensor.prior_loss` also runs the
    closed-form ``λ`` M-step), with ``β`` ramped by :func:`bayestensor.kl_weight` up to
    ``train.kl_weight``. Every ``prune_every`` epochs from ``prune_start`` the model is
    physically pruned (optimizer state truncated; ``train.optimizer_state``: the regauged factors' moments
    restart, or are rotated with them). A
    checkpoint is written atomically after every epoch; ``resume=True`` continues from it and
    reproduces an uninterrupted run on CPU.

    Under ``torchrun`` (``WORLD_SIZE > 1``) it trains with DDP; see :mod:`.distributed`. Only
    rank 0 writes files; every process returns the same report.

    The run folder gets ``config.toml``, ``metrics.jsonl``, ``checkpoint.pt``, ``report.json``,
    ``report.md`` with PNG plots, and the exported model ``model.safetensors`` + ``model.json``
    (:func:`bayestensor.io.load` rebuilds it).

    Returns the report dict also written to ``report.json``.
    """
    check_values(cfg)
    ctx = init_distributed(cfg.train.device)
    try:
        return _train(cfg, ctx, resume, console)
    finally:
        shutdown(ctx)


def _train(cfg: RunConfig, ctx: DistContext, resume: bool, console: Console | None) -> dict[str, Any]:
    if console is None or not ctx.is_main:
        console = Console(quiet=None if ctx.is_main and console is None else True)
    exp = get_experiment(cfg.experiment)
    check_compile_mode(cfg.train.compile)
    run_dir = Path(cfg.out) / cfg.run_name
    if not resume:  # never into an earlier run's folder (a finished report, a resumable checkpoint)
        chosen = Path(broadcast_object(str(fresh_run_dir(run_dir)) if ctx.is_main else None, ctx))
        if chosen != run_dir:
            earlier = (
                "a finished run" if (run_dir / "report.json").exists() else "an interrupted run (--resume continues it)"
            )
            console.print(
                f"{run_dir} holds {earlier}; this run writes {chosen} "
                f"(resume it with --resume --set name={chosen.name})"
            )
        run_dir = chosen
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = ctx.device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    task = make_task(exp, cfg, ctx, device)
    model = exp.build_model(cfg).to(device)
    if ctx.enabled:
        torch.manual_seed(cfg.train.seed + 1 + ctx.rank)  # different dropout / SVI noise per process
    bayes = bool(bayesian_tensors(model))
    initial_ranks = ranks(model)
    initial_params = count_params(model)
    initial_rms = weight_rms(model)
    optimizer = make_optimizer(model, cfg.train.lr)
    history: list[dict[str, Any]] = []
    start, elapsed, scoring = 0, 0.0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        state = load_checkpoint(ckpt_path, required=("model", "optimizer", "epoch", "history", "rng", "config"))
        held = (state.get("sampler") or {}).get("particles")
        if held is not None and held != cfg.sampler.particles:
            raise CheckpointError(
                f"checkpoint {str(ckpt_path)!r} holds {held} particles, this run asks for sampler.particles="
                f"{cfg.sampler.particles}; resume with the same number or start a new run (--out/--set name=...)"
            )
        changed = [k for k in config_differences(state["config"], cfg.to_dict()) if k not in WHERE_KEYS]
        if changed:
            raise CheckpointError(
                f"checkpoint {str(ckpt_path)!r} was written with another configuration ({', '.join(changed)} "
                "differ); resume with the same arguments or start a new run (--out/--set name=...)"
            )
        try:  # a file that unpickles but does not hold this run's state
            model.load_state_dict(state["model"])
            optimizer = make_optimizer(model, cfg.train.lr)
            optimizer.load_state_dict(state["optimizer"])
            rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
            resume_rng = rngs[ctx.rank] if len(rngs) == ctx.world_size else rngs[0]
            set_rng_state(resume_rng)
            start, history, elapsed = int(state["epoch"]) + 1, list(state["history"]), state.get("elapsed", 0.0)
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint {str(ckpt_path)!r} does not hold this run's state ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:400]}); it was left untouched"
            ) from None
        scoring = state.get("scoring_seconds", 0.0)
        initial_ranks, initial_params = state["initial_ranks"], state["initial_params"]
        initial_rms = state.get("initial_rms", initial_rms)
    ard = make_ard(model, optimizer, cfg, task.num_train, ctx)  # bad schedule arguments fail before any write
    sampling = cfg.model.method in SAMPLERS and not cfg.model.dense
    if sampling:
        check_sampler_config(cfg)
        if not isinstance(task, ClassificationTask) or ctx.enabled:
            why = "runs under torchrun" if ctx.enabled else "is a clicks task"
            raise ConfigError(
                f"model.method={cfg.model.method!r} runs on the classification experiments in one process; "
                f"{cfg.experiment!r} {why}"
            )
    compiling = use_compile(cfg.train.compile, device)  # a compiler that does not work fails before any write
    if resume:
        ard.load_state_dict(state.get("ard") or {**ard.state_dict(), "epoch": start, "initial_rms": initial_rms})
    elif ctx.is_main:
        (run_dir / "config.toml").write_text(dump_toml(cfg.to_dict()))
    if ctx.is_main:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    net = wrap(model, ctx)
    compiled: list[CompiledObjective] = []

    def make_objective(net: nn.Module) -> Callable[..., tuple[Tensor, Tensor]]:
        """The task's batch objective for ``net``, compiled with ``train.compile``."""
        objective = task.objective(net, ard)
        if compiling:
            if compiled:  # a new DDP wrapper after pruning: the graphs of the old one are dead
                compiled[-1].ranks_changed()
            compiled.append(CompiledObjective(objective, model))
            return compiled[-1]
        return objective

    objective = make_objective(net)
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

    validating = bayes and task.validation is not None
    held_out_loss = (lambda: task.validation_loss(model)) if validating else None  # pruning within train.tolerance

    clock = TrainingClock(elapsed, scoring)
    before, params_before = None, 0

    def save_checkpoint(epoch: int, rng: Any, seconds: float, **extra: Any) -> None:
        """Everything a resume needs after ``epoch`` (and, in the sampler phase, the sampler's ``extra``)."""
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None,
            "ard": ard.state_dict(),
            "before_final_prune": (before, params_before),
            "epoch": epoch,
            "history": history,
            "rng": rng,
            "config": cfg.to_dict(),
            "elapsed": seconds,
            "scoring_seconds": clock.scoring_seconds,
            "initial_ranks": initial_ranks,
            "initial_params": initial_params,
            "initial_rms": initial_rms,
            "world_size": ctx.world_size,
        }
        save_atomic(payload | extra, ckpt_path)

    for epoch in range(start, cfg.train.epochs):
        beta = ard.beta
        lr = epoch_learning_rate(cfg.train.lr, cfg.train.lr_schedule, epoch, cfg.train.epochs)
        set_learning_rate(optimizer, lr)
        losses = task.train_epoch(net, objective, optimizer, epoch, console)
        if epoch + 1 == cfg.train.epochs:  # the last end_epoch prunes
            before, params_before = clock.score(task.epoch_metrics, model), count_params(model)
        report_prune = ard.end_epoch(held_out_loss) if bayes else None
        pruned = report_prune.changed if report_prune is not None else None
        if pruned and ctx.enabled:
            net = wrap(model, ctx)  # DDP buckets follow the new parameter shapes
            objective = make_objective(net)
        elif pruned and compiling:
            compiled[-1].ranks_changed()
        row = {
            "epoch": epoch,
            **losses,
            "kl_weight": beta,
            "lr": lr,
            **clock.score(task.epoch_metrics, model),
            **({"validation_loss": clock.score(held_out_loss)} if validating else {}),
            "params": count_params(model),
            "ranks": ranks(model),
            "pruned": pruned,
            "lambda_min_ratio": {k: [min(s) for s in v] for k, v in _lambda_spectra(model).items()},
            "seconds": clock.train_seconds,
        }
        history.append(row)
        rngs = gather_objects(rng_state(), ctx)
        if ctx.is_main:
            save_checkpoint(epoch, rngs if ctx.enabled else rngs[0], row["seconds"])
            with (run_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        barrier(ctx)
        console.epoch(row)
        if kill_after and epoch + 1 == kill_after:
            os._exit(KILL_STATUS)
    ard.close()

    if before is None:  # resumed after the last epoch: what it measured before its final prune
        before, params_before = state.get("before_final_prune") or (
            clock.score(task.epoch_metrics, model),
            count_params(model),
        )
    samples = cfg.train.predict_samples if cfg.model.method == "svi" and not cfg.model.dense else 1
    posterior, map_fit = None, None
    if sampling:
        # the MAP model the sampler follows, scored like the posterior: the same run's baseline
        map_fit = clock.score(task.final_metrics, model, 1)
        steps = -(-task.num_train // cfg.train.batch_size)
        # at the KL weight ARD ended at: the stated trade-off (tolerance, target) holds the sampler's prior too
        phase = SamplerPhase(
            cfg,
            model,
            task.num_train,
            steps,
            lambda: exp.build_model(cfg).to(device),
            cfg.train.kl_weight * ard.beta_scale,
            optimizer,
        )
        done = state.get("sampler") if resume else None
        if done is not None:
            phase.load_state_dict(done["state"])
            set_rng_state(resume_rng)  # cloning drew random numbers that the uninterrupted run did not draw here
        passes = sampler_passes(cfg, steps)
        for k in range(0 if done is None else done["epoch"] + 1, len(passes)):
            out = task.sampler_epoch(phase, k, console, passes[k])
            current = phase.current()
            row = {
                "epoch": cfg.train.epochs + k,
                "sampler_epoch": k,
                **out,
                "kl_weight": phase.kl_weight,
                **clock.score(task.epoch_metrics, current),
                "particles": current.num_particles,
                "params": count_params(phase.ensemble.base),  # per particle
                "ranks": ranks(phase.ensemble.base),
                "seconds": clock.train_seconds,
            }
            history.append(row)
            sampler_state = {"epoch": k, "particles": cfg.sampler.particles, "state": phase.state_dict()}
            save_checkpoint(cfg.train.epochs - 1, rng_state(), row["seconds"], sampler=sampler_state)
            with (run_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            console.epoch(row)
            if kill_after and cfg.train.epochs + k + 1 == kill_after:
                os._exit(KILL_STATUS)
        posterior = phase.posterior()
        model, samples = posterior.base, None  # the layer table and the export: the first particle

    train_seconds = clock.train_seconds
    final = clock.score(task.final_metrics, posterior if posterior is not None else model, samples)
    params = count_params(model)
    dense = dense_params(model)
    layers = layer_table(model, initial_ranks, initial_rms)
    tensorized_dense = sum(row["dense_params"] for row in layers.values())
    tensorized_stored = sum(row["params"] for row in layers.values())
    report = {
        "experiment": cfg.experiment,
        "format": "dense" if cfg.model.dense else cfg.model.format,
        "method": "dense" if cfg.model.dense else cfg.model.method,
        "prior": cfg.model.prior if bayes else None,
        **final,
        "accuracy_before_prune": before["test_accuracy"],
        "predictive_samples": posterior.num_particles if posterior is not None else samples,
        **(
            {"sampler": dataclasses.asdict(cfg.sampler), "sampler_kl_weight": phase.kl_weight, "map_fit": map_fit}
            if posterior is not None
            else {}
        ),
        "dense_params": dense,
        "initial_params": initial_params,
        "params_before_prune": params_before,
        "params": params,
        "compression": dense / params,
        "tensorized_layers_dense_params": tensorized_dense,
        "tensorized_layers_params": tensorized_stored,
        "tensorized_layers_compression": tensorized_dense / tensorized_stored if tensorized_stored else None,
        "layers": layers,
        "collapsed_layers": [name for name, row in layers.items() if row.get("collapsed")],
        "spectra": _lambda_spectra(model),
        "prune_threshold": cfg.train.prune_threshold,
        "prior_rows": task.num_train,
        "validation_examples": cfg.data.validation,
        "epochs": cfg.train.epochs,
        "train_seconds": train_seconds,
        "scoring_seconds": clock.scoring_seconds,
        "compile": cfg.train.compile,
        "compiles": sum(c.compiles for c in compiled) if compiling else None,
        **task.report_extras(model, history),
        "peak_rss_mb": peak_rss_mb(),
        "run_dir": str(run_dir),
    }
    if ctx.is_main:
        export_model(model, run_dir / "model", config=cfg.to_dict())
        if posterior is not None:  # every particle: bt.Ensemble.clone(bt.load(model), P).load_state_dict(...)
            save_atomic(posterior.state_dict(), run_dir / "posterior.pt")
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_report(run_dir)
    barrier(ctx)
    return report
