"""The classification task: cross-entropy on in-memory image tensors, accuracy/NLL/ECE on the test set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import load_digits_ood
from ..inference import ARD, Ensemble, expected_calibration_error, negative_log_likelihood, ood_auroc, predict
from .config import ConfigError, RunConfig
from .distributed import DistContext
from .posterior import SamplerPhase
from .progress import Console
from .registry import Experiment
from .step import optimizer_step


@dataclass
class Evaluation:
    """Test-set metrics of a classifier."""

    accuracy: float
    nll: float
    ece: float


def predictive_probs(model: nn.Module, x: Tensor, num_samples: int | None = 1, batch_size: int = 2048) -> Tensor:
    """Class probabilities ``(N, C)`` in float64: the posterior-predictive mean (:func:`bayestensor.predict`).

    An ensemble runs all its particles on a batch at once, so its batches hold ``batch_size / P`` rows.
    """
    model.eval()
    if isinstance(model, Ensemble):
        batch_size = max(1, batch_size // model.num_particles)
    probs = []
    for i in range(0, len(x), batch_size):
        mean, _ = predict(model, x[i : i + batch_size], num_samples=num_samples, transform=lambda z: z.softmax(-1))
        probs.append(mean)
    return torch.cat(probs).double()


def evaluate(model: nn.Module, x: Tensor, y: Tensor, num_samples: int | None = 1, batch_size: int = 2048) -> Evaluation:
    """Accuracy, NLL and ECE of the posterior-predictive class probabilities.

    ``num_samples``: SVI weight draws, or an ensemble's first particles (``None``: all of them).
    """
    return scores(predictive_probs(model, x, num_samples, batch_size), y)


def scores(probs: Tensor, y: Tensor) -> Evaluation:
    """Accuracy, NLL and ECE of class probabilities ``probs`` ``(N, C)`` against labels ``y``."""
    return Evaluation(
        accuracy=float((probs.argmax(1) == y).double().mean()),
        nll=negative_log_likelihood(probs, y),
        ece=expected_calibration_error(probs, y),
    )


def member_probs(model: Ensemble, x: Tensor, num_samples: int | None = None, batch_size: int = 2048) -> Tensor:
    """Every particle's class probabilities ``(P, N, C)`` in float64 (the first ``num_samples``; ``None``: all)."""
    model.eval()
    rows = max(1, batch_size // model.num_particles)
    with torch.no_grad():
        probs = torch.cat([model(x[i : i + rows]).softmax(-1) for i in range(0, len(x), rows)], dim=1)  # (P, N, C)
    return (probs if num_samples is None else probs[:num_samples]).double()


def member_scores(probs: Tensor, y: Tensor) -> dict[str, float]:
    """Means over an ensemble's members of their own accuracy, NLL, ECE and confidence; ``probs`` is ``(P, N, C)``.

    The confidence is the mean top-class probability, ``(1/N) Σ_n max_c p_nc``. Beside the averaged
    prediction's, these say whether the members are calibrated one by one and what averaging them changes:
    members that are each over-confident can average to an under-confident ensemble when they disagree.
    """
    each = [scores(p, y) for p in probs]
    return {
        "accuracy": fmean(e.accuracy for e in each),
        "nll": fmean(e.nll for e in each),
        "ece": fmean(e.ece for e in each),
        "confidence": float(probs.max(-1).values.mean()),
    }


def digits_ood(x_test: Tensor) -> Tensor:
    """scikit-learn's digits resized to the test images' shape: the OOD set of the Fashion-MNIST experiments."""
    return load_digits_ood(tuple(x_test.shape[1:])).to(x_test.device)


#: Seed of the permutation that picks the ``data.validation`` examples: the same held-out set for every run seed.
VALIDATION_SEED = 20_221_003


def hold_out(x: Tensor, y: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_validation, y_validation)``: ``count`` examples drawn out of the training set.

    The held-out examples are a seeded random draw (:data:`VALIDATION_SEED`, whatever the order of
    the files); the rest keep their order.
    """
    if not 0 < count < len(x):
        raise ConfigError(
            f"data.validation: expected between 1 and {len(x) - 1} held-out examples (the training set has "
            f"{len(x)}), got {count}"
        )
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(VALIDATION_SEED)).to(x.device)
    held, keep = perm[:count], perm[count:].sort().values
    return x[keep], y[keep], x[held], y[held]


class ClassificationTask:
    """Mini-batch cross-entropy training on tensors held in memory, sharded over processes.

    Every epoch draws a permutation from ``(seed, epoch)`` alone (so a resumed run sees the same
    batches); process ``rank`` of ``world_size`` takes positions ``rank, rank + world_size, …`` of
    it, the same number on every process. With ``data.validation = k`` the training set loses
    ``k`` examples (:func:`hold_out`), whose cross-entropy decides pruning (:meth:`validation_loss`).
    """

    def __init__(self, exp: Experiment, cfg: RunConfig, ctx: DistContext, device: torch.device) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.xtr, self.ytr, self.xte, self.yte = (t.to(device) for t in exp.load_data(cfg))
        empty = [name for name, t in (("training", self.ytr), ("test", self.yte)) if len(t) == 0]
        if empty:
            where = f" in {cfg.data.data_dir!r}" if cfg.data.data_dir else ""
            raise ConfigError(f"{exp.name}: the {' and '.join(empty)} split of the data{where} holds no examples")
        self.validation = None
        if cfg.data.validation:
            self.xtr, self.ytr, *self.validation = hold_out(self.xtr, self.ytr, cfg.data.validation)
        self.num_train = len(self.xtr)
        self.device = device
        self.xood = exp.ood(self.xte) if exp.ood is not None else None

    def validation_loss(self, model: nn.Module) -> float:
        """Mean cross-entropy (NLL) of the posterior mean on the held-out examples; leaves training mode on."""
        nll = evaluate(model, *self.validation).nll
        model.train()
        return nll

    def _batches(self, epoch: int) -> Tensor:
        """The permutation of this process's training rows for ``epoch``, from ``(seed, epoch)`` alone."""
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        perm = torch.randperm(self.num_train, generator=gen)
        if self.ctx.enabled:
            per_rank = self.num_train // self.ctx.world_size
            perm = perm[self.ctx.rank :: self.ctx.world_size][:per_rank]
        return perm.to(self.device)

    def _pass(
        self,
        epoch: int,
        label: str,
        console: Console,
        step: Callable[[Tensor, Tensor], Any],
        batches: int | None = None,
    ) -> list[Any]:
        """``step(x, y)`` on the (first ``batches``) batches of epoch ``epoch``'s permutation, with a progress bar."""
        perm = self._batches(epoch)
        size = self.cfg.train.batch_size
        starts = range(0, len(perm), size)[:batches]
        out = []
        with console.progress(len(starts), label) as advance:
            for i in starts:
                idx = perm[i : i + size]
                out.append(step(self.xtr[idx], self.ytr[idx]))
                advance()
        return out

    def objective(self, net: nn.Module, ard: ARD) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The batch objective ``(x, y) -> (cross-entropy + β · prior_loss / N, prior_loss)`` (``ARD.objective``)."""
        return lambda x, y: ard.objective(F.cross_entropy(net(x), y))

    def train_epoch(
        self,
        net: nn.Module,
        objective: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        epoch: int,
        console: Console,
    ) -> dict[str, float]:
        """One pass over this process's shard; returns mean ``train_loss`` and ``prior_loss`` per batch."""
        net.train()

        def step(x: Tensor, y: Tensor) -> tuple[float, float]:
            return optimizer_step(*objective(x, y), optimizer)

        steps = self._pass(epoch, f"epoch {epoch + 1}", console, step)
        batches = max(len(steps), 1)
        return {"train_loss": sum(s[0] for s in steps) / batches, "prior_loss": sum(s[1] for s in steps) / batches}

    def sampler_epoch(
        self, phase: SamplerPhase, epoch: int, console: Console, batches: int | None = None
    ) -> dict[str, float]:
        """One pass of the sampler over the training set (the first ``batches`` of epoch ``train.epochs + epoch``)."""
        label = f"{phase.method} epoch {epoch + 1}"
        steps = self._pass(self.cfg.train.epochs + epoch, label, console, phase.step, batches)
        return {"potential": sum(steps) / max(len(steps), 1)}

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Test accuracy of the current model (posterior mean; an ensemble's particles averaged)."""
        samples = None if isinstance(model, Ensemble) else 1
        return {"test_accuracy": evaluate(model, self.xte, self.yte, num_samples=samples).accuracy}

    def final_metrics(self, model: nn.Module, num_samples: int | None) -> dict[str, Any]:
        """Test accuracy, NLL and ECE with ``num_samples`` posterior samples; OOD AUROC where there is an OOD set.

        For an ensemble also the averaged prediction's confidence and its members' own scores (:func:`member_scores`,
        and the mean of their own OOD AUROCs): what the averaging adds beside what the members are.
        """
        members = None
        if isinstance(model, Ensemble):  # one pass: the members, then their float32 average as predict() takes it
            members = member_probs(model, self.xte, num_samples)  # (P, N, C)
            probs = members.float().mean(0).double()
        else:
            probs = predictive_probs(model, self.xte, num_samples)
        ev = scores(probs, self.yte)
        out: dict[str, Any] = {"test_accuracy": ev.accuracy, "nll": ev.nll, "ece": ev.ece}
        if members is not None:
            out["confidence"] = float(probs.max(1).values.mean())
            out["members"] = member_scores(members, self.yte)
        if self.xood is not None and members is not None:
            ood = member_probs(model, self.xood, num_samples)  # (P, M, C)
            out["ood_auroc"] = ood_auroc(probs, ood.float().mean(0).double())
            out["members"]["ood_auroc"] = fmean(ood_auroc(p, q) for p, q in zip(members, ood, strict=True))
        elif self.xood is not None:
            out["ood_auroc"] = ood_auroc(probs, predictive_probs(model, self.xood, num_samples))
        return out

    def report_extras(self, model: nn.Module, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Nothing beyond the common report fields."""
        return {}
