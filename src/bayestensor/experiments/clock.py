"""The training clock of a run: wall time with the scoring of test and held-out sets kept apart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TrainingClock:
    """``train_seconds`` counts training; :meth:`score` runs an evaluation off that clock.

    ``train_seconds = wall − scoring_seconds`` since the run started: forward and backward passes,
    optimizer and sampler steps, λ updates, pruning (with the held-out loss that decides it) and
    checkpoints. ``scoring_seconds`` is the time of what only reports: each epoch's test metrics, the
    metrics before the final pruning, the MAP fit a sampler run starts from, and the final metrics.
    A sampler run that keeps many samples (SGHMC's 32) scores each of them on the test set every
    pass, which would otherwise count as training.

    Parameters
    ----------
    train_seconds, scoring_seconds
        Where a resumed run's clocks stopped (``0`` for a new run).
    """

    def __init__(self, train_seconds: float = 0.0, scoring_seconds: float = 0.0) -> None:
        self._start = time.perf_counter() - train_seconds
        self.scoring_seconds = scoring_seconds

    @property
    def train_seconds(self) -> float:
        """Seconds of training so far."""
        return time.perf_counter() - self._start

    def score(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)``, its time added to ``scoring_seconds`` and left out of ``train_seconds``."""
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            spent = time.perf_counter() - t
            self._start += spent
            self.scoring_seconds += spent
