r"""``ARD``: the supported way to train a tensorized model with automatic rank determination.

One object owns everything around the optimizer step that ARD needs, so a training loop only
adds one call per batch and one per epoch::

    ard = bt.ARD(model, optimizer, num_data=len(train_set), epochs=epochs)
    for epoch in range(epochs):
        for x, y in loader:
            loss = ard.loss(F.cross_entropy(model(x), y))   # task loss + β(t) · prior / N
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()                                # λ M-step right after the step (a hook)
        ard.end_epoch()                                     # pruning schedule, collapse check

What it does:

* **Scaling.** The objective of one batch is

  .. math::

      \mathcal{L} = \frac{1}{B}\sum_{i\in\text{batch}} \ell_i + \frac{β(t)}{N}\,\mathcal{R}(W, λ),

  with :math:`\mathcal{R}` = :func:`~bayestensor.prior_loss` and ``N = num_data``, the
  number of training examples (``β = 1`` is the posterior; smaller values temper the prior).
* **KL warm-up.** :math:`β(t)` is 0 for the first ``no_kl_epochs``, then rises linearly to
  ``kl_weight`` over ``warmup_epochs`` (:func:`~bayestensor.kl_weight`); with
  ``steps_per_epoch`` the ramp moves every step. The defaults are fractions of the run
  (:data:`DEFAULT_NO_KL_FRACTION`, :data:`DEFAULT_WARMUP_FRACTION`), so a short run and a long
  one get the same shape of schedule: the data shape the factors before the prior starts to
  switch components off.
* **λ update.** The closed-form M-step runs in an optimizer step post-hook, exactly once per
  optimizer step, whatever the loop evaluates in between; :meth:`loss` changes no state.
* **Pruning schedule.** :meth:`end_epoch` prunes physically (:func:`~bayestensor.prune`, with
  the optimizer, so its state follows) every ``prune_every`` epochs once the prior is on, and
  at the end of the last epoch; under DDP pass ``process_group``. Under SVI the passes of the
  warm-up prune by the threshold alone, and from its end also components whose mean is within
  their posterior spread (:meth:`~bayestensor.FactorizedTensor.active_masks`): while ``β`` is
  still rising the entropy that sets the spread is tempered, so the spread is not yet the
  posterior's. The last pass also tries :data:`~bayestensor.inference.pruning.MERGE_RESTARTS`
  random starts when merging small CP layers.
* **Learning rate.** ARD prunes a component once the prior has shrunk it under the threshold, which
  needs a step that can take it there: under a held Adam step a switched-off component jitters at
  about ``lr`` around zero (the prior's pull ``β w / (N λ_r)`` on it is stiff and Adam's step is
  normalised), which holds its ``λ_r`` near ``lr²`` and adds the jitter to ``W``. Decay the learning
  rate over the run (for example :class:`torch.optim.lr_scheduler.CosineAnnealingLR`; the trainer's
  ``train.lr_schedule = "cosine"``). ARD does not touch the optimizer's learning rate itself.
* **Loss tolerance** (``tolerance=τ``, off by default). The joint MAP objective over ``(W, λ)``
  is unbounded below at ``W = 0``: with ``λ`` at its M-step the prior's pull on a rank slice of
  ``D`` entries and size ``s`` is ``β D / (N s)``, which grows as the slice shrinks, so at
  ``β = 1`` a component whose least-squares size ``s*`` has ``s*² N c / D < 4`` (``c`` its
  curvature in the mean loss) is drawn to zero whatever its share of the fit. With a tolerance
  the prior becomes a constraint instead: ARD minimises the prior subject to

  .. math::

      \bar\ell_t \le (1 + τ)\,\bar\ell^{\,*}_t,

  where :math:`\bar\ell_t` is the smoothed training task loss (an exponential average with
  decay :data:`LOSS_DECAY`, bias-corrected) and :math:`\bar\ell^{\,*}_t` the lowest value it
  has reached. The KL weight is the constraint's multiplier, ``β(t) = β_sched(t) · m_t`` with
  ``m ∈ [MIN_BETA_SCALE, 1]`` and

  .. math::

      m_{t+1} = m_t \exp\!\big(-\tfrac{η}{10}\, \mathrm{clip}(g_t, -1, 10)\big), \qquad
      g_t = \frac{\bar\ell_t - (1 + τ)\,\bar\ell^{\,*}_t}{τ\,\bar\ell^{\,*}_t},

  ``η`` = :data:`BETA_RATE` over the steps of one epoch, so ``m`` can fall by ``e^{-η}`` per
  epoch and rise by ``e^{η/10}``: a multiplicative dual ascent, as in GECO (Rezende & Viola
  2018), that backs off faster than it recovers. A component survives when removing it would
  cost more than ``τ`` of the loss, and a layer cannot quietly collapse: its loss rises first.
  The task loss is read by a gradient hook on the tensor passed to :meth:`loss`, so only losses
  that are back-propagated count and evaluating :meth:`loss` still changes no state.
  With ``end_epoch(evaluate=...)`` the same tolerance also decides pruning: a pass removes the
  weakest components for as long as the evaluated (held-out) loss stays within ``τ`` of its value.
  Such passes start once the warm-up has ended (and the last pass always is one); the passes
  before prune by the threshold alone. During the warm-up the data shape the factors almost alone,
  and a fit on its way can rest on a plateau (a CP "swamp") where fewer components reproduce the
  current loss but cannot reach the final fit.
* **Target compression** (``target_compression=R``, off by default): the trade-off stated up
  front, met from both sides. From below, the pruning passes remove the weakest components
  across layers until the size follows a geometric schedule that reaches ``R`` by
  :data:`TARGET_REACHED_AT` of the run (:func:`~bayestensor.prune`'s ``max_params``). From above,
  ``β(t)`` is multiplied by ``m_c ∈ [MIN_BETA_SCALE, 1]``, updated every
  ``1/``:data:`TARGET_CHECKS_PER_EPOCH` of an epoch from ``P``, the compression that would be left
  if every component under :data:`TARGET_WATCH` of its bond's largest (:meth:`projected_compression`)
  were pruned now: such a component is on its way out, as the prior's pull grows while it shrinks,

  .. math::

      m_c \leftarrow m_c \exp\!\big(-η\,Δ\,\mathrm{clip}(e, -1, 4)\big) \ (e > 0), \qquad
      m_c \leftarrow m_c \exp\!\big(-\tfrac{η}{10}\,Δ\,\mathrm{clip}(e, -1, 4)\big) \ (e \le 0), \qquad
      e = \frac{\log(P / R)}{\log(1 + \mathrm{TARGET\_BAND})},

  ``η`` = :data:`TARGET_RATE` and ``Δ`` the fraction of an epoch between checks. At ``β = 1`` the
  prior's own optimum can lie far past ``R`` (LeNet-5 on Fashion-MNIST: over 300×); the cap keeps it
  from switching off the components the target keeps, rather than pruning less after the fact
  (a switched-off component does not come back).
* **Fine-tune** (``finetune_epochs=k``). In the last ``k`` epochs the prior is off
  (``β = 0``) and nothing is pruned: the ranks are those of the last pruning pass, at the end of
  epoch ``epochs − k``, and the weights are fitted at those ranks. The prior's pull
  ``β D / (N s)`` shrinks every kept component too (ARD's posterior mode is a shrunk fit, as
  under weight decay), which costs accuracy the data could support at the ranks found; the
  fine-tune gives it back without changing what was pruned. Off by default, except with a
  ``target_compression``: then the last ``⌊(1 − TARGET_REACHED_AT) · epochs⌋`` epochs.
* **Collapse protection.** A layer whose weight RMS fell under :data:`COLLAPSE_RATIO` of its
  value when ``ARD`` was built is named in a :class:`CollapseWarning` and is never pruned, so
  nothing irreversible happens to it; :attr:`collapsed` lists those layers. With a
  ``target_compression`` such a layer also leaves the target's accounting (budget and cap), so the
  other layers are held to ``R`` on their own instead of being pruned harder to pay for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..tensors import DEFAULT_PRUNE_THRESHOLD, FactorizedTensor
from ..tensors.optimizer_state import check_optimizer_state
from .checks import held_by, number, positive_int
from .objective import bayesian_tensors, prior_loss
from .pruning import MERGE_RESTARTS, PruneReport, prune, tensorized_layers
from .schedules import kl_weight

#: A tensorized layer counts as collapsed when its weight RMS falls below this fraction of its initial RMS.
COLLAPSE_RATIO = 1e-2
#: With a ``target_compression``, the fraction of the run by which the pruning schedule reaches it.
TARGET_REACHED_AT = 0.7
#: With a ``target_compression`` ``R``, the run ends with a compression in ``[R, (1 + TARGET_BAND) R]``.
TARGET_BAND = 0.25
#: Checks per epoch of the compression ARD is heading for (``target_compression``'s cap).
TARGET_CHECKS_PER_EPOCH = 50
#: The cap counts a component as lost once ``c_r / max c`` of its bond falls under this: the prior's pull
#: ``β D / (N s)`` grows as a slice shrinks, so such a component is on its way to the pruning threshold.
TARGET_WATCH = 0.1
#: Largest fall of ``log m_c`` per epoch under ``target_compression`` (at ``e = 1``; four times that at most);
#: it rises 10x slower. Faster than :data:`BETA_RATE`: a component that is switched off does not come back.
TARGET_RATE = 20.0
#: Default length of the no-KL phase, as a fraction of ``epochs``.
DEFAULT_NO_KL_FRACTION = 0.1
#: Default length of the linear KL ramp after it, as a fraction of ``epochs``.
DEFAULT_WARMUP_FRACTION = 0.2
#: Decay per optimizer step of the smoothed task loss that ``tolerance`` constrains (about 50 steps).
LOSS_DECAY = 0.98
#: Largest fall of ``log m`` per epoch under ``tolerance`` (``m`` scales the KL weight); it rises 10x slower.
BETA_RATE = 5.0
#: Steps per epoch assumed for that rate before the first epoch has been counted (no ``steps_per_epoch``).
ASSUMED_STEPS_PER_EPOCH = 500
#: Smallest multiplier ``m`` of the KL weight under ``tolerance``.
MIN_BETA_SCALE = 1e-6


@dataclass
class _LossConstraint:
    """State of the ``tolerance`` controller: ``m``, the smoothed loss and its best value (module docstring)."""

    beta_scale: float = 1.0  # m, the multiplier of the scheduled KL weight
    loss_average: float = 0.0  # biased exponential average of the back-propagated task losses
    loss_steps: int = 0  # optimizer steps that saw a back-propagated task loss
    best_loss: float = math.inf  # lowest bias-corrected average reached

    def update(self, value: float, *, tolerance: float, scheduled_beta: float, steps_per_epoch: int) -> None:
        """One optimizer step with mean back-propagated task loss ``value``."""
        self.loss_steps += 1
        self.loss_average = LOSS_DECAY * self.loss_average + (1 - LOSS_DECAY) * value
        smoothed = self.loss_average / (1 - LOSS_DECAY**self.loss_steps)
        self.best_loss = min(self.best_loss, smoothed)
        if scheduled_beta == 0 or not self.best_loss > 0:
            return
        excess = (smoothed - (1 + tolerance) * self.best_loss) / (tolerance * self.best_loss)
        rate = BETA_RATE / (10 * steps_per_epoch)
        scale = self.beta_scale * math.exp(-rate * min(max(excess, -1.0), 10.0))
        self.beta_scale = min(1.0, max(MIN_BETA_SCALE, scale))


@dataclass
class _CompressionCap:
    """State of ``target_compression``'s cap: ``m``, the multiplier of the KL weight that holds ARD at the target."""

    beta_scale: float = 1.0

    def update(self, projected: float, *, target: float, epoch_fraction: float) -> None:
        """One check, ``epoch_fraction`` of an epoch after the last, with ``projected`` = ``P`` (module docstring)."""
        excess = math.log(projected / target) / math.log1p(TARGET_BAND)
        step = TARGET_RATE * epoch_fraction * min(max(excess, -1.0), 4.0)
        scale = self.beta_scale * math.exp(-step if excess > 0 else -step / 10)
        self.beta_scale = min(1.0, max(MIN_BETA_SCALE, scale))


class CollapseWarning(UserWarning):
    """A tensorized layer's whole weight shrank to (almost) zero."""


class ARD:
    """Automatic rank determination around a user's optimizer (see the module docstring).

    Parameters
    ----------
    model
        The model (a DDP-wrapped model is unwrapped).
    optimizer
        The optimizer of ``model``'s parameters; :meth:`end_epoch` keeps its state across pruning.
    num_data
        ``N``, the number of training examples the task loss averages over per epoch.
    epochs
        Planned length of the run; the warm-up defaults are fractions of it and the last
        :meth:`end_epoch` prunes for good.
    kl_weight
        ``β`` after the warm-up (``1`` = the Bayesian posterior).
    no_kl_epochs, warmup_epochs
        The warm-up (fractional epochs allowed); ``None`` = the default fractions of ``epochs``.
        Their sum may not exceed ``epochs``.
    steps_per_epoch
        Optimizer steps per epoch, for a per-step ramp (``None``: the ramp moves once per epoch).
    prune_every, prune_start
        Prune after epoch ``e`` (0-based) when ``e ≥ prune_start`` and ``(e − prune_start)`` is a
        multiple of ``prune_every``, and after the last epoch. ``prune_start=None``: the first
        epoch in which the prior is on.
    prune_threshold
        Relative pruning threshold (:func:`~bayestensor.prune`).
    process_group
        ``torch.distributed`` group whose processes prune identically (DDP); ``None`` outside DDP.
    target_compression
        The trade-off stated up front: the tensorized layers' dense parameters over their stored
        ones at the end of the run (``> 1``), met from both sides (module docstring). Each pruning
        pass first removes what ARD switched off, then, if the layers are still larger than the
        schedule allows, the weakest remaining components (:func:`~bayestensor.prune`'s
        ``max_params``); the allowed size shrinks geometrically from the start to the target over
        the pruning passes up to :data:`TARGET_REACHED_AT` of the run, so the rest of the run trains
        the final ranks. Between passes the KL weight is scaled down while the components above
        :data:`TARGET_WATCH` of their bond's largest would compress the layers past the target, so
        the prior does not switch off more than the target asks for. Pruning cannot grow ranks:
        ARD chooses among the components the model starts with, so a model that starts near ``R``
        (``bt.tensorize``'s default start is about ``10×``) leaves it little to choose; start larger
        (``start_fraction``) to let it choose.
    tolerance
        The other way to state the trade-off: the relative rise of the smoothed training task loss
        over its best value that the prior may cause (``0.01`` = 1 %); ``β`` is scaled down while
        the rise is larger and back up to the schedule while it is smaller (see the module
        docstring). ``None`` (default): ``β`` follows the schedule alone. Must be ``> 0``.
    finetune_epochs
        The last epochs of the run train with the prior off and the ranks fixed (module docstring);
        ``0``: the prior stays on to the end. Counts towards the run with the warm-up. ``None``
        (default): ``0`` without a ``target_compression``; with one, the last
        ``⌊(1 − TARGET_REACHED_AT) · epochs⌋`` epochs (at most what the warm-up leaves): the target
        fixes the size, so once the ranks are chosen the prior has nothing left to decide and its
        shrinkage would only cost accuracy.
    optimizer_state
        What each pruning pass does with the optimizer state of the factors its regauge changes
        (:func:`~bayestensor.prune`): ``"reset"`` (default) restarts them, ``"transport"`` maps their
        moments as their gradients map.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        num_data: int,
        epochs: int,
        kl_weight: float = 1.0,
        no_kl_epochs: float | None = None,
        warmup_epochs: float | None = None,
        steps_per_epoch: int | None = None,
        prune_every: int = 1,
        prune_start: int | None = None,
        prune_threshold: float = DEFAULT_PRUNE_THRESHOLD,
        process_group: Any = None,
        target_compression: float | None = None,
        tolerance: float | None = None,
        finetune_epochs: float | None = None,
        optimizer_state: str = "reset",
    ) -> None:
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.optimizer = optimizer
        self.optimizer_state = check_optimizer_state(optimizer_state)
        self.num_data = positive_int("num_data", num_data)
        self.epochs = positive_int("epochs", epochs)
        self.prune_every = positive_int("prune_every", prune_every)
        if steps_per_epoch is not None:
            positive_int("steps_per_epoch", steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        number("kl_weight", kl_weight, low=0)
        if not 0 < prune_threshold < 1:
            raise ValueError(
                f"prune_threshold must be in (0, 1) (a fraction of a bond's largest component), got {prune_threshold!r}"
            )
        self.kl_weight = float(kl_weight)
        self.no_kl_epochs = DEFAULT_NO_KL_FRACTION * epochs if no_kl_epochs is None else float(no_kl_epochs)
        self.warmup_epochs = DEFAULT_WARMUP_FRACTION * epochs if warmup_epochs is None else float(warmup_epochs)
        if not (self.no_kl_epochs >= 0 and self.warmup_epochs >= 0):  # NaN too
            raise ValueError(
                f"no_kl_epochs and warmup_epochs must be >= 0, got {self.no_kl_epochs} and {self.warmup_epochs}"
            )
        if finetune_epochs is None:  # a target fixes the size: refit at the chosen ranks for the rest of the run
            room = max(epochs - self.no_kl_epochs - self.warmup_epochs, 0.0)
            finetune_epochs = 0 if target_compression is None else min(int((1 - TARGET_REACHED_AT) * epochs), int(room))
        if isinstance(finetune_epochs, bool) or not (
            isinstance(finetune_epochs, int | float) and 0 <= finetune_epochs < epochs
        ):
            raise ValueError(
                f"finetune_epochs must be >= 0 and shorter than the run ({epochs}), got {finetune_epochs!r}"
            )
        self.finetune_epochs = float(finetune_epochs)
        if self.no_kl_epochs + self.warmup_epochs + self.finetune_epochs > epochs:
            raise ValueError(
                f"the KL warm-up (no_kl_epochs={self.no_kl_epochs:g} + warmup_epochs={self.warmup_epochs:g}) and "
                f"finetune_epochs={self.finetune_epochs:g} are longer than the run (epochs={epochs}); shorten them "
                "or train longer"
            )
        bad_start = isinstance(prune_start, bool) or not isinstance(prune_start, int) or prune_start < 0
        if prune_start is not None and bad_start:
            raise ValueError(f"prune_start must be an int >= 0 or None, got {prune_start!r}")
        self.prune_start = math.ceil(self.no_kl_epochs) if prune_start is None else prune_start
        self.prune_threshold = float(prune_threshold)
        if target_compression is not None and not (
            isinstance(target_compression, int | float) and math.isfinite(target_compression) and target_compression > 1
        ):
            raise ValueError(f"target_compression must be a finite number > 1, got {target_compression!r}")
        self.target_compression = None if target_compression is None else float(target_compression)
        if tolerance is not None and not (
            isinstance(tolerance, int | float) and not isinstance(tolerance, bool) and 0 < tolerance < math.inf
        ):
            raise ValueError(
                f"tolerance must be a finite number > 0 (a relative loss rise, 0.01 = 1 %), got {tolerance!r}"
            )
        self.tolerance = None if tolerance is None else float(tolerance)
        self.constraint = _LossConstraint()
        self.cap = _CompressionCap()
        self._pending: list[float] = []  # task losses back-propagated since the last optimizer step
        self._counted_steps = 0  # optimizer steps of the first epoch, once it has ended
        self.process_group = process_group
        self.epoch = 0
        self.step_in_epoch = 0
        self.collapsed: list[str] = []
        self.history: list[PruneReport] = []
        self.tensors = bayesian_tensors(self.model)
        if not self.tensors:
            warnings.warn(
                "ARD: the model has no tensorized layers with method='map' or 'svi'; the prior term is 0 "
                "and nothing will be pruned",
                stacklevel=2,
            )
        self._checked_factors: tuple[int, ...] = ()
        self._check_optimizer("was it built on another model, or before bt.tensorize replaced the layers?")
        self.initial_rms = {name: layer.weight.weight_rms() for name, layer in tensorized_layers(self.model)}
        self.initial_compression = self.compression()
        if (
            self.target_compression is not None
            and self.initial_compression > (1 + TARGET_BAND) * self.target_compression
        ):
            warnings.warn(
                f"ARD: target_compression={self.target_compression:g} is below the model's compression at the start "
                f"({self.initial_compression:.3g}x); pruning only removes components, so the run will end at "
                f"{self.initial_compression:.3g}x or more. Start from larger ranks (max_rank, start_fraction) to reach "
                "the target",
                stacklevel=2,
            )
        # β(t) as a 0-d tensor, refreshed whenever the schedule moves, so that a compiled loss reads
        # it as a graph input instead of specialising on (and recompiling for) every new value
        param = next(self.model.parameters(), None)
        self.beta_tensor = torch.zeros((), dtype=torch.float64, device=param.device if param is not None else None)
        self._sync_beta()
        self._hook = optimizer.register_step_post_hook(self._after_step)

    # ------------------------------------------------------------------ per step
    @property
    def scheduled_beta(self) -> float:
        """The warm-up schedule's KL weight ``β_sched(t)`` of the current step."""
        if self.finetuning:
            return 0.0
        t = self.epoch + (self.step_in_epoch / self.steps_per_epoch if self.steps_per_epoch else 0.0)
        return kl_weight(t, no_kl_epochs=self.no_kl_epochs, warmup_epochs=self.warmup_epochs, max_weight=self.kl_weight)

    @property
    def ard_epochs(self) -> float:
        """Epochs with the prior and pruning: the run less its ``finetune_epochs``."""
        return self.epochs - self.finetune_epochs

    @property
    def finetuning(self) -> bool:
        """Whether the current epoch is one of the last ``finetune_epochs`` (prior off, ranks fixed)."""
        return self.epoch >= self.ard_epochs

    @property
    def beta_scale(self) -> float:
        """``m``, the scheduled KL weight's multiplier: ``tolerance``'s times ``target_compression``'s (else 1)."""
        return self.constraint.beta_scale * self.cap.beta_scale

    @property
    def beta(self) -> float:
        """The KL weight ``β(t) = β_sched(t) · m`` of the current step (``m = 1`` without tolerance or target)."""
        return self.scheduled_beta * self.beta_scale

    @torch.no_grad()
    def _sync_beta(self) -> None:
        self.beta_tensor.fill_(self.beta)

    def objective(self, task_loss: Tensor) -> tuple[Tensor, Tensor]:
        """``(task_loss + β(t) · R / N, R)`` with ``R = prior_loss(model)``, for logging both; changes no state.

        ``β(t)`` is read from :attr:`beta_tensor`, so the objective compiles once
        (``torch.compile``) and does not recompile as the warm-up moves ``β``.
        """
        if self.tolerance is not None and task_loss.requires_grad:
            value = task_loss.detach()
            task_loss.register_hook(lambda grad, value=value: self._seen(value, grad))
        if not self.tensors:
            return task_loss, task_loss.new_zeros(())
        reg = prior_loss(self.model)
        return task_loss + (self.beta_tensor * reg / self.num_data).to(task_loss.dtype), reg

    def loss(self, task_loss: Tensor) -> Tensor:
        """``task_loss + β(t) · prior_loss(model) / N`` for a batch-mean ``task_loss``; changes no state."""
        return self.objective(task_loss)[0]

    def _seen(self, value: Tensor, grad: Tensor) -> Tensor:
        """Gradient hook on a task loss: remember its value for the next optimizer step."""
        self._pending.append(float(value))
        return grad

    def _constrain(self) -> None:
        """One step of the ``tolerance`` controller from the losses back-propagated since the last step."""
        if not self._pending:
            return
        value = sum(self._pending) / len(self._pending)
        self._pending = []
        self.constraint.update(
            value, tolerance=self.tolerance, scheduled_beta=self.scheduled_beta, steps_per_epoch=self._per_epoch
        )

    @property
    def _per_epoch(self) -> int:
        """Optimizer steps per epoch: as given, else as counted in the first epoch, else assumed."""
        return self.steps_per_epoch or self._counted_steps or ASSUMED_STEPS_PER_EPOCH

    def _sizes(self, *, collapsed: bool = True) -> tuple[int, int, list[FactorizedTensor]]:
        """``(dense, fixed, prunable)`` of the tensorized layers: their dense parameters, what pruning leaves.

        ``fixed`` counts the biases and the fixed-rank and collapsed weights; ``prunable`` lists the
        factorized weights a pruning pass may shrink. ``collapsed=False`` leaves the collapsed layers
        out altogether: the target's budget and cap hold the layers ARD still decides to the target,
        so a collapsed layer, which is never pruned, is not paid for by pruning the others harder.
        """
        dense = fixed = 0
        prunable = []
        for name, layer in tensorized_layers(self.model):
            if not collapsed and name in self.collapsed:
                continue
            dense += layer.dense_params()
            fixed += layer.get_num_params() - layer.weight.n_params()  # biases
            if layer.weight.method is None or name in self.collapsed:
                fixed += layer.weight.n_params()
            else:
                prunable.append(layer.weight)
        return dense, fixed, prunable

    def projected_compression(self, threshold: float = TARGET_WATCH) -> float:
        """The compression left if every component under ``threshold · max c`` of its bond were pruned now.

        Over the layers that have not collapsed (the ones the target holds; :meth:`_sizes`).
        """
        dense, stored, prunable = self._sizes(collapsed=False)
        cut = max(threshold, self.prune_threshold)
        stored += sum(t.fmt.n_params(t.out_shape, t.in_shape, t.active_ranks(cut)) for t in prunable)
        return dense / stored if stored else 1.0

    def _cap(self) -> None:
        """One check of ``target_compression``'s cap, every ``1 / TARGET_CHECKS_PER_EPOCH`` of an epoch."""
        per_epoch = self._per_epoch
        every = max(1, per_epoch // TARGET_CHECKS_PER_EPOCH)
        if self.scheduled_beta == 0 or self.step_in_epoch % every:
            return
        projected = self.projected_compression()
        self.cap.update(projected, target=self.target_compression, epoch_fraction=every / per_epoch)

    @torch.no_grad()
    def _check_optimizer(self, why: str) -> None:
        """Raise when the optimizer holds none of the model's factors (checked again whenever they are replaced)."""
        current = tuple(id(f) for _, t in self.tensors for f in t.factors)
        if current == self._checked_factors:
            return
        if current and not held_by(self.optimizer).intersection(current):
            raise ValueError(
                f"ARD: the optimizer holds none of the model's tensorized factors ({why}); build the optimizer on "
                "model.parameters() after the model has its final shapes, then ARD on it"
            )
        self._checked_factors = current

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._check_optimizer(
            "the factors were replaced after the optimizer was built: a load_state_dict of a pruned checkpoint, "
            "or bt.prune without optimizer=, so this step trained none of them"
        )
        if self.tolerance is not None:
            self._constrain()
        if self.target_compression is not None:
            self._cap()
        self.step_in_epoch += 1
        self._sync_beta()
        for _, t in self.tensors:
            if t.training:
                t.update_rank_variances_()

    # ------------------------------------------------------------------ per epoch
    def compression(self) -> float:
        """Dense parameters of the tensorized layers over the parameters they store (weights and biases)."""
        dense, stored, prunable = self._sizes()
        stored += sum(t.n_params() for t in prunable)
        return dense / stored if stored else 1.0

    def _budget(self, epoch: int) -> int | None:
        """Factor parameters the Bayesian layers may hold after pruning at ``epoch`` (``None``: no target)."""
        if self.target_compression is None:
            return None
        end = max(self.prune_start, math.ceil(TARGET_REACHED_AT * self.ard_epochs) - 1)
        if epoch >= end or epoch + 1 >= self.ard_epochs:
            frac = 1.0
        else:
            frac = (epoch - self.prune_start + 1) / (end - self.prune_start + 1)
        start = max(self.initial_compression, 1.0)
        target = start * (max(self.target_compression, start) / start) ** min(max(frac, 0.0), 1.0)
        dense, fixed, _ = self._sizes(collapsed=False)
        return max(int(dense / target) - fixed, 0)

    def _check_collapse(self) -> list[str]:
        new = []
        for name, layer in tensorized_layers(self.model):
            start = self.initial_rms.get(name)
            if start and name not in self.collapsed and layer.weight.weight_rms() < COLLAPSE_RATIO * start:
                self.collapsed.append(name)
                new.append(name)
        if new:
            warnings.warn(
                f"ARD: tensorized layer(s) {', '.join(repr(n) for n in new)} collapsed: the weight RMS fell under "
                f"{COLLAPSE_RATIO:.0%} of its initial value, so the layer computes almost nothing; it is no longer "
                "pruned. Lower kl_weight, lengthen the warm-up, or start from larger ranks.",
                CollapseWarning,
                stacklevel=3,
            )
        return new

    def end_epoch(self, evaluate: Callable[[], float] | None = None) -> PruneReport | None:
        """Close an epoch: collapse check, then prune on schedule; returns the prune report or ``None``.

        Parameters
        ----------
        evaluate
            Optional loss of the model as it stands (no arguments, a float; for example the mean task
            loss on a held-out batch in eval mode). With it a pruning pass also removes the weakest
            components for as long as that loss stays within ``tolerance`` of its value
            (:func:`~bayestensor.prune`'s ``evaluate``); needs ``ARD(tolerance=...)``. It is called only
            when a pass is due and the warm-up has ended, or at the last pass (module docstring).
        """
        if evaluate is not None and self.tolerance is None:
            raise ValueError("ARD.end_epoch(evaluate=...) prunes within ARD's tolerance; build ARD(tolerance=...)")
        if not self._counted_steps:
            self._counted_steps = self.step_in_epoch
        epoch, self.epoch, self.step_in_epoch = self.epoch, self.epoch + 1, 0
        self._sync_beta()
        if not self.tensors:
            return None
        self._check_collapse()
        if epoch >= self.ard_epochs:
            return None  # the ranks were fixed when the fine-tune began
        last = epoch + 1 >= self.ard_epochs
        due = epoch >= self.prune_start and (epoch - self.prune_start) % self.prune_every == 0
        if not (due or last):
            return None
        # loss- and noise-based pruning wait for the end of the warm-up (module docstring)
        warmed = last or epoch + 1 >= self.no_kl_epochs + self.warmup_epochs
        by_loss = evaluate is not None and warmed
        report = prune(
            self.model,
            self.prune_threshold,
            self.optimizer,
            process_group=self.process_group,
            skip=self.collapsed,
            max_params=self._budget(epoch),
            evaluate=evaluate if by_loss else None,
            tolerance=self.tolerance if by_loss else None,
            merge_restarts=MERGE_RESTARTS if last else 0,
            by_noise=warmed,
            optimizer_state=self.optimizer_state,
        )
        self.tensors = bayesian_tensors(self.model)
        self.history.append(report)
        return report

    # ------------------------------------------------------------------ lifecycle
    def state_dict(self) -> dict[str, Any]:
        """Progress counters, collapse record and the ``tolerance`` and target controllers, for checkpoints.

        The model and optimizer save their own state.
        """
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "collapsed": list(self.collapsed),
            "initial_rms": dict(self.initial_rms),
            "counted_steps": self._counted_steps,
            "initial_compression": self.initial_compression,
            "cap_beta_scale": self.cap.beta_scale,
            **asdict(self.constraint),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        missing = {"epoch", "step_in_epoch", "collapsed", "initial_rms"} - set(state)
        if missing:
            raise ValueError(f"ARD state is missing {sorted(missing)}; expected the dict of ARD.state_dict()")
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.collapsed, self.initial_rms = list(state["collapsed"]), dict(state["initial_rms"])
        # absent from checkpoints written before ``tolerance`` existed: a controller at rest
        self.constraint = _LossConstraint(**{f.name: state[f.name] for f in fields(_LossConstraint) if f.name in state})
        self._counted_steps = int(state.get("counted_steps", 0))
        self.cap = _CompressionCap(float(state.get("cap_beta_scale", 1.0)))
        self.initial_compression = float(state.get("initial_compression", self.initial_compression))
        self._sync_beta()

    def close(self) -> None:
        """Remove the optimizer hook."""
        self._hook.remove()
