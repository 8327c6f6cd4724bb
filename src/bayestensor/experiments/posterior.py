"""The sampler phase of ``model.method = "svgd" | "sghmc"``, after the MAP fit of the same run.

The MAP epochs (``train.epochs``, ARD with its warm-up and pruning) determine the ranks. Then
``sampler.particles`` particles (SVGD) or chains (SGHMC) run for ``sampler.epochs`` passes over the
training data with the same batch size, at the KL weight the MAP phase's ARD ended at,
``β = train.kl_weight · m`` with ``m`` the multiplier of its ``train.tolerance`` and
``train.target_compression`` controllers (:attr:`~bayestensor.ARD.beta_scale`; ``m = 1`` without
them). A stated trade-off holds the MAP phase's prior at ``m β``; a sampler at the full ``β`` would
go on pulling the components the trade-off kept, and the final pruning would remove them
(``fashion-mnist-resnet`` with ``target_compression = 10``: SVGD ended at 15.7× against its MAP
phase's 11.4×, and below MAP in accuracy and NLL). The particles thus sample the posterior the
stated trade-off chose:

* ``sampler.init = "scratch"`` (default): every particle is a fresh initialisation of the
  experiment's model at the ranks ARD found (:meth:`~bayestensor.Ensemble.from_scratch`), so the
  particles start as far apart as independent trainings do;
* ``sampler.init = "map"``: every particle is a copy of the MAP model, perturbed by
  ``sampler.jitter`` (paper (B)'s recipe). With ``sampler.keep_optimizer`` (default) SVGD's Adam
  continues the MAP fit's state, each particle with the moments of the parameter it was cloned
  from (:meth:`~bayestensor.Ensemble.load_optimizer_state_`): a fresh Adam's first steps move every
  entry by about the learning rate whatever its gradient, which on ``fashion-mnist-resnet`` took
  the particles from their MAP phase's 0.8972 to a mean of 0.8657 in one epoch.

Each particle keeps its own rank variances and their M-step; at the end the ensemble is pruned to
what any particle still uses (:meth:`~bayestensor.Ensemble.prune_`) and predicts by averaging its
particles (SGHMC: the kept samples of all chains).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inference import SGHMC, SVGD, Ensemble, ranks
from ..inference.svgd import DRIVES
from ..layers import TensorizedConv2d
from .config import ConfigError, RunConfig
from .models import SAMPLERS
from .optim import make_optimizer

__all__ = ["SAMPLERS", "SamplerPhase", "check_sampler_config", "sampler_passes", "sampler_steps"]


#: SGHMC step size on the mean loss when ``sampler.lr`` is 0 (an SGD learning rate times ``1 − friction``).
SGHMC_DEFAULT_LR = 0.01
INITS = ("scratch", "map")
EXECUTIONS = ("auto", "vmap", "loop")


def check_sampler_config(cfg: RunConfig) -> None:
    """Clear errors for a ``[sampler]`` section that cannot run (before any file is written)."""
    s = cfg.sampler
    if s.particles < 1:
        raise ConfigError(f"sampler.particles: expected an int >= 1, got {s.particles}")
    if s.init not in INITS:
        raise ConfigError(f"sampler.init: expected one of {', '.join(INITS)}, got {s.init!r}")
    if s.execution not in EXECUTIONS:
        raise ConfigError(f"sampler.execution: expected one of {', '.join(EXECUTIONS)}, got {s.execution!r}")
    if s.drive not in DRIVES:
        raise ConfigError(f"sampler.drive: expected one of {', '.join(DRIVES)}, got {s.drive!r}")
    if not 0 <= s.epochs < math.inf:
        raise ConfigError(
            f"sampler.epochs: expected passes over the data > 0 (0.5 = half of one), or 0 for train.epochs, "
            f"got {s.epochs}"
        )
    if not s.lr >= 0:
        raise ConfigError(f"sampler.lr: expected a step size > 0, or 0 for the default, got {s.lr}")
    if not s.jitter >= 0:
        raise ConfigError(f"sampler.jitter: expected >= 0, got {s.jitter}")
    if not s.bandwidth >= 0:
        raise ConfigError(
            f"sampler.bandwidth: expected an RBF bandwidth h > 0, or 0 for the median heuristic, got {s.bandwidth}"
        )
    if not 0 < s.temperature < math.inf:
        raise ConfigError(f"sampler.temperature: expected a finite T > 0 (1 = the posterior), got {s.temperature}")
    if not 0 < s.friction <= 1:
        raise ConfigError(f"sampler.friction: expected a friction in (0, 1], got {s.friction}")
    if not 0 <= s.burn_in < 1:
        raise ConfigError(f"sampler.burn_in: expected a fraction of the steps in [0, 1), got {s.burn_in}")
    if s.thin < 0:
        raise ConfigError(f"sampler.thin: expected steps >= 1, or 0 to spread the samples evenly, got {s.thin}")
    if cfg.model.method == "sghmc" and s.max_samples < s.particles:
        raise ConfigError(
            f"sampler.max_samples: expected at least one kept sample per chain ({s.particles}), got {s.max_samples}"
        )
    if cfg.model.method == "svgd" and s.init == "map" and s.particles > 1 and s.jitter == 0:
        raise ConfigError(
            "sampler.jitter = 0 clones identical particles, between which SVGD has no repulsion; set sampler.jitter > 0"
        )


def vectorize(execution: str, model: nn.Module) -> bool:
    """Whether the particles run in one ``vmap`` call: ``"auto"`` loops for convolutional models on CPU only.

    Measured with ``benchmarks/svgd_step.py`` (8 particles, 1 thread, this project's 2-core CPU), one SVGD
    step (``drive="parameters"``) under ``vmap`` against a loop of functional calls: the digits TTM
    classifier 12.3 against 16.8 ms (the loop's per-call overhead dominates a small model), the
    Fashion-MNIST FC model 83 against 71 ms, the LeNet-style CNN 2448 against 681 ms (``vmap`` makes each
    convolution a grouped one over strided memory). Elsewhere, and on GPUs (not measured here), ``vmap``.
    """
    if execution != "auto":
        return execution == "vmap"
    convs = any(isinstance(m, nn.Conv2d | TensorizedConv2d) for m in model.modules())
    return not (convs and next(model.parameters()).device.type == "cpu")


def sampler_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """The sampler's steps: ``sampler.epochs`` (or ``train.epochs`` for 0) passes of ``steps_per_epoch``, at least 1."""
    return max(1, round((cfg.sampler.epochs or cfg.train.epochs) * steps_per_epoch))


def sampler_passes(cfg: RunConfig, steps_per_epoch: int) -> list[int]:
    """The batches of each of the sampler's passes over the data: full passes, the last one cut to the remainder."""
    total = sampler_steps(cfg, steps_per_epoch)
    return [min(steps_per_epoch, total - k) for k in range(0, total, steps_per_epoch)]


class SamplerPhase:
    """The particles, their sampler and its optimizer, with a checkpointable state."""

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        num_train: int,
        steps_per_epoch: int,
        build: Callable[[], nn.Module],
        kl_weight: float | None = None,
        map_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        check_sampler_config(cfg)
        s = cfg.sampler
        self.method = cfg.model.method
        #: ``β`` of the potential: ``kl_weight`` (the trainer passes ``m · train.kl_weight``), else the config's
        self.kl_weight = cfg.train.kl_weight if kl_weight is None else float(kl_weight)
        self.prune_threshold = cfg.train.prune_threshold
        if s.init == "scratch":
            self.ensemble = Ensemble.from_scratch(build, s.particles, ranks=ranks(model))
        else:
            self.ensemble = Ensemble.clone(model, s.particles, jitter=s.jitter)
        self.ensemble.vectorize = vectorize(s.execution, model)
        self.optimizer: torch.optim.Optimizer | None = None
        if self.method == "svgd":
            self.optimizer = make_optimizer(self.ensemble, s.lr or cfg.train.lr)
            if s.init == "map" and s.keep_optimizer and map_optimizer is not None:
                self.ensemble.load_optimizer_state_(self.optimizer, map_optimizer, model)
            self.sampler: SVGD | SGHMC = SVGD(
                self.ensemble,
                self.optimizer,
                num_data=num_train,
                kl_weight=self.kl_weight,
                bandwidth=s.bandwidth if s.bandwidth > 0 else None,
                temperature=s.temperature,
                drive=s.drive,
            )
        else:
            steps = sampler_steps(cfg, steps_per_epoch)
            burn_in = int(s.burn_in * steps)
            thin = s.thin or max(1, (steps - burn_in) * s.particles // s.max_samples)
            self.sampler = SGHMC(
                self.ensemble,
                num_data=num_train,
                lr=s.lr or SGHMC_DEFAULT_LR,
                friction=s.friction,
                temperature=s.temperature,
                burn_in=burn_in,
                thin=thin,
                max_samples=s.max_samples,
                kl_weight=self.kl_weight,
            )

    def step(self, x: Tensor, y: Tensor) -> float:
        """One sampler step on a batch; returns the particles' mean potential ``U``."""
        self.ensemble.train()
        logits = self.ensemble(x)  # (P, B, C)
        p = logits.shape[0]
        losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(p), reduction="none").view(p, -1).mean(1)  # (P,)
        if isinstance(self.sampler, SVGD):
            return self.sampler.step(losses, logits)["potential"]
        return self.sampler.step(losses)["potential"]

    def current(self) -> Ensemble:
        """What predicts now: the SVGD particles, or the SGHMC samples kept so far (the chains before any)."""
        if isinstance(self.sampler, SGHMC) and self.sampler.kept:
            return self.sampler.samples()
        return self.ensemble

    def posterior(self) -> Ensemble:
        """The final posterior, pruned to the rank components that any of its particles uses."""
        post = self.current()
        post.prune_(self.prune_threshold)
        return post

    def state_dict(self) -> dict[str, Any]:
        """Particles, optimizer (SVGD) or chains' momenta and kept samples (SGHMC)."""
        return {
            "particles": self.ensemble.num_particles,
            "ensemble": self.ensemble.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "sghmc": self.sampler.state_dict() if isinstance(self.sampler, SGHMC) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same particle count and method)."""
        self.ensemble.load_state_dict(state["ensemble"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self.sampler, SGHMC):
            self.sampler.load_state_dict(state["sghmc"])
