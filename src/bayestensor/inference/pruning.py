"""Reading ranks off a model and physically removing inactive rank components."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..tensors import DEFAULT_PRUNE_THRESHOLD, TensorizedModule


def tensorized_layers(model: nn.Module) -> list[tuple[str, TensorizedModule]]:
    """Named tensorized layers of ``model`` (the model itself is named ``""``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TensorizedModule)]


def ranks(model: nn.Module) -> dict[str, list[int]]:
    """``{layer_name: [current rank per bond]}`` for every tensorized layer."""
    return {n: list(m.weight.ranks) for n, m in tensorized_layers(model)}


@dataclass
class PruneReport:
    """What :func:`prune` removed.

    Attributes
    ----------
    threshold
        The relative threshold used: index ``r`` is inactive when ``λ_r < threshold · max λ``.
    before, after
        Ranks per layer before and after.
    params_before, params_after
        Stored parameters of the tensorized layers' factors before and after.
    """

    threshold: float
    before: dict[str, list[int]] = field(default_factory=dict)
    after: dict[str, list[int]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    @property
    def removed(self) -> dict[str, list[int]]:
        """Rank indices removed per layer and bond."""
        return {k: [b - a for b, a in zip(self.before[k], self.after[k], strict=True)] for k in self.before}

    @property
    def changed(self) -> bool:
        """Whether any rank shrank."""
        return self.before != self.after


@torch.no_grad()
def prune(
    model: nn.Module, threshold: float = DEFAULT_PRUNE_THRESHOLD, optimizer: torch.optim.Optimizer | None = None
) -> PruneReport:
    """Physically truncate every Bayesian tensorized layer to its active ranks.

    A rank index ``r`` of a bond is inactive when ``λ_r < threshold · max_r λ_r`` (a scale-free,
    relative threshold); a bond keeps at least rank 1. Factor tensors are replaced by smaller
    ones, so :func:`count_params` falls and memory is freed.

    The optimizer stays usable: pass it as ``optimizer`` and its parameter references and state
    (momentum, Adam moments) are truncated in place. Without it, rebuild the optimizer from
    ``model.parameters()`` after pruning. Layers with ``method=None`` are left alone.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    report = PruneReport(threshold=float(threshold))
    for name, layer in tensorized_layers(model):
        t = layer.weight
        if t.method is None:
            continue
        report.params_before += t.n_params()
        report.before[name], report.after[name] = t.prune_(threshold, optimizer)
        report.params_after += t.n_params()
    return report
