"""Registry of built-in experiments (one module each), read by ``bayestensor experiments`` and ``train``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .config import RunConfig

Splits = tuple[Tensor, Tensor, Tensor, Tensor]
TASKS = ("classification", "clicks")


@dataclass(frozen=True)
class Experiment:
    """A built-in experiment.

    Attributes
    ----------
    name, description, data
        Shown by ``bayestensor experiments``.
    defaults
        Sets the experiment's default hyper-parameters on a fresh :class:`RunConfig`.
    load_data
        For ``task="classification"``: returns ``(x_train, y_train, x_test, y_test)`` tensors.
        For ``task="clicks"``: returns ``(train, test, validation)``, re-iterable streams of
        :class:`~bayestensor.data.ClickBatch` (the training stream already sharded for this
        process, see :mod:`bayestensor.experiments.distributed`; ``validation`` is ``None``
        unless ``data.validation`` holds examples out).
    build_model
        Builds the (tensorized or, with ``model.dense``, dense) model.
    smoke
        Shrinks the config for smoke tests (``--smoke``).
    ood
        For classification: builds an out-of-distribution image set shaped like the given test
        images (for Fashion-MNIST, :func:`~bayestensor.data.load_digits_ood`); the report then
        gives the AUROC of predictive entropy between the test set and it. ``None``: no OOD score.
    task
        ``"classification"`` (cross-entropy on in-memory tensors) or ``"clicks"`` (streaming binary
        classification with BCE and AUC, for DLRM); picks the task loop of :func:`~.trainer.train`.
    """

    name: str
    description: str
    data: str
    defaults: Callable[[RunConfig], None]
    load_data: Callable[[RunConfig], Any]
    build_model: Callable[[RunConfig], nn.Module]
    smoke: Callable[[RunConfig], None]
    task: str = "classification"
    ood: Callable[[Tensor], Tensor] | None = None


_EXPERIMENTS: dict[str, Experiment] = {}


def limit_splits(splits: Splits, limit: int) -> Splits:
    """The first ``limit`` training and test examples (``data.limit``; 0 keeps all)."""
    xtr, ytr, xte, yte = splits
    if limit:
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    return xtr, ytr, xte, yte


def register_experiment(exp: Experiment) -> Experiment:
    """Add an experiment to the registry (names are unique)."""
    if exp.task not in TASKS:
        raise ValueError(f"experiment {exp.name!r}: task must be one of {TASKS}, got {exp.task!r}")
    if exp.name in _EXPERIMENTS:
        raise ValueError(f"experiment {exp.name!r} is already registered")
    _EXPERIMENTS[exp.name] = exp
    return exp


def get_experiment(name: str) -> Experiment:
    """Look an experiment up by name."""
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {available_experiments()}")
    return _EXPERIMENTS[name]


def available_experiments() -> list[str]:
    """Names of the registered experiments."""
    return sorted(_EXPERIMENTS)


def default_config(name: str) -> RunConfig:
    """A :class:`RunConfig` with the experiment's defaults applied."""
    cfg = RunConfig(experiment=name)
    get_experiment(name).defaults(cfg)
    return cfg
