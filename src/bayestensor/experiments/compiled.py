"""``train.compile`` / ``--compile``: the batch objective under ``torch.compile(fullgraph=True)``.

The compiled function is the whole forward objective of one batch, ``task_loss + β · prior_loss / N``
(:meth:`~bayestensor.inference.ARD.objective`); its backward is the compiled backward graph, and
the optimizer step stays eager. It compiles once per set of parameter shapes: ``β`` is read from a
tensor, so the warm-up does not recompile, and a pruning pass that changes ranks recompiles once.
After such a pass the compile caches are reset (``torch.compiler.reset()``), so a long run with
many pruning passes never reaches Dynamo's recompile limit; the number of compiles is bounded by
``1 +`` the number of shape-changing pruning passes and written to the report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..tensors import FactorizedTensor
from .config import ConfigError

#: Values of ``train.compile``: off, on (fail clearly when the compiler does not work), or auto (fall back).
COMPILE_MODES = ("off", "on", "auto")


def check_compile_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`COMPILE_MODES`, else a :class:`ConfigError`."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile: expected one of {COMPILE_MODES}, got {mode!r}")
    return mode


def compiler_problem(device: torch.device) -> str | None:
    """Why ``torch.compile``'s default backend cannot run here (``None`` when it can): a tiny probe."""
    try:
        probe = torch.compile(lambda t: t * 2.0 + 1.0, fullgraph=True)
        out = probe(torch.ones(4, device=device))
        if not torch.equal(out.cpu(), torch.full((4,), 3.0)):
            return f"the compiled probe computed {out.tolist()}, expected [3.0, 3.0, 3.0, 3.0]"
    except Exception as err:  # noqa: BLE001 - any failure of the toolchain means "cannot compile"
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return None


def use_compile(mode: str, device: torch.device) -> bool:
    """Whether to compile: ``"on"`` fails clearly when the compiler does not work, ``"auto"`` falls back to eager."""
    if check_compile_mode(mode) == "off":
        return False
    problem = compiler_problem(device)
    if problem is None:
        return True
    if mode == "on":
        raise ConfigError(
            f"--compile: torch.compile does not work on this machine ({problem}); install a working compiler "
            "toolchain (on CPU, inductor needs a C++ compiler), or pass --compile=auto to train without it"
        )
    warnings.warn(f"--compile=auto: torch.compile does not work here ({problem}); training without it", stacklevel=2)
    return False


def layer_summary(model: nn.Module) -> str:
    """Every factorized weight of ``model`` with its format, tensor shapes and ranks, one per line."""
    lines = [
        f"  {name}: {t.fmt.name} out_shape={t.out_shape} in_shape={t.in_shape} ranks={t.ranks}"
        for name, t in model.named_modules()
        if isinstance(t, FactorizedTensor)
    ]
    return "\n".join(lines) or "  (no tensorized layers)"


class CompiledObjective:
    """``objective(*batch) -> (loss, prior)`` under ``torch.compile(fullgraph=True)``.

    The trainer calls :meth:`ranks_changed` after a pruning pass that changed shapes, so no step
    pays for a walk over the model to find out.

    Attributes
    ----------
    compiles
        Distinct (ranks, batch shapes) the objective met, an upper bound on its compiles: one per set
        of ranks, plus one for a ragged last batch.
    """

    def __init__(self, objective: Callable[..., tuple[Tensor, Tensor]], model: nn.Module) -> None:
        self.objective, self.model = objective, model
        # static shapes: the contraction plans depend on the batch size, so a ragged last batch gets its own graph
        self.compiled = torch.compile(objective, fullgraph=True, dynamic=False)
        self.compiles = 0
        self._seen: set[Any] = set()

    def ranks_changed(self) -> None:
        """Drop the graphs of the old ranks: they are dead, and keeping them would run into the recompile limit."""
        torch.compiler.reset()
        self._seen = set()

    def __call__(self, *batch: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        shapes = tuple(tuple(b.shape) for b in batch)
        fresh = shapes not in self._seen
        if fresh:
            self._seen.add(shapes)
            self.compiles += 1
        try:
            return self.compiled(*batch)
        except Exception as err:
            if fresh:
                err.add_note(
                    "bayestensor: compiling the training objective failed for the batch shapes "
                    f"{shapes} and these tensorized layers:\n{layer_summary(self.model)}\n"
                    "train without --compile to run eagerly"
                )
            raise
