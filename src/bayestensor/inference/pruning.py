"""Reading ranks off a model and physically removing inactive rank components."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..tensors import DEFAULT_PRUNE_THRESHOLD, FactorizedTensor, TensorizedModule
from ..tensors.optimizer_state import check_optimizer_state

#: Random ALS starts of the CP merge at ARD's last pruning pass (:func:`prune`'s ``merge_restarts``).
MERGE_RESTARTS = 8


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
        The relative threshold used: index ``r`` is inactive when ``c_r < threshold · max c``.
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


def _relative_contributions(found: list[tuple[str, FactorizedTensor]]) -> dict[str, list[list[float]]]:
    """Per layer and bond, ``c_r / max_r c_r``: the scale-free weakness order of the budget and loss passes."""
    return {n: [(c / c.max()).tolist() for c in t.contributions()] for n, t in found}


def _keep_within_budget(
    found: list[tuple[str, FactorizedTensor]], keep: dict[str, list[list[int]]], max_params: int
) -> dict[str, list[list[int]]]:
    """Greedily drop the weakest kept component until the factors fit ``max_params``.

    A component's weakness is its relative contribution ``c_r / max_r c_r`` within its bond, a
    scale-free number comparable across layers and formats; the one removed next is the weakest
    of all bonds that still hold more than one index. Parameter counts follow from the formats'
    ``n_params`` at the reduced ranks.
    """
    if not max_params >= 0:
        raise ValueError(f"max_params must be >= 0, got {max_params!r}")
    rel = _relative_contributions(found)
    keep = {n: [list(k) for k in ks] for n, ks in keep.items()}

    def size(n: str, t: FactorizedTensor) -> int:
        return t.fmt.n_params(t.out_shape, t.in_shape, [len(k) for k in keep[n]])

    total = sum(size(n, t) for n, t in found)
    while total > max_params:
        candidates = [
            (rel[n][b][r], n, b, r) for n, _ in found for b, ks in enumerate(keep[n]) if len(ks) > 1 for r in ks
        ]
        if not candidates:
            break
        _, n, b, r = min(candidates)
        t = dict(found)[n]
        before = size(n, t)
        keep[n][b].remove(r)
        total += size(n, t) - before
    return keep


def _keep_within_loss(
    found: list[tuple[str, FactorizedTensor]],
    keep: dict[str, list[list[int]]],
    evaluate: Callable[[], float],
    tolerance: float,
) -> dict[str, list[list[int]]]:
    r"""Remove the ``k`` weakest kept components for the largest ``k`` whose loss stays within tolerance.

    Components are ordered by their relative contribution ``c_r / max_r c_r`` across all bonds of
    all layers (each bond's strongest is never a candidate). With ``L_0`` = ``evaluate()`` at
    ``keep``, removing the ``k`` weakest is accepted when

    .. math::

        L_k \le L_0 + τ\,|L_0|,

    and ``k`` is found by bisection (``⌈log₂(m+1)⌉ + 1`` calls of ``evaluate`` for ``m``
    candidates), on the assumption that the loss grows as more is removed. A removal is tried by
    zeroing the component's slices in one factor of its bond (exact in the SVD gauge of
    :meth:`~bayestensor.tensors.FactorizedTensor.regauge_`, which :func:`prune` applies first);
    the factors are restored after every call.
    """
    rel = _relative_contributions(found)
    order = []
    for n, ks in keep.items():
        for b, ks_b in enumerate(ks):
            strongest = max(ks_b, key=lambda r, n=n, b=b: rel[n][b][r])
            order += [(rel[n][b][r], n, b, r) for r in ks_b if r != strongest]
    order.sort()

    def without(k: int) -> dict[str, list[list[int]]]:
        gone = {(n, b, r) for _, n, b, r in order[:k]}
        return {n: [[r for r in ks_b if (n, b, r) not in gone] for b, ks_b in enumerate(ks)] for n, ks in keep.items()}

    saved = {n: [f.detach().clone() for f in t.factors] for n, t in found}

    def loss_at(candidate: dict[str, list[list[int]]]) -> float:
        try:
            for n, t in found:
                for group in t.fmt.rank_groups(t.out_shape, t.in_shape, t.ranks):
                    dropped = sorted(set(range(t.ranks[group.bond])) - set(candidate[n][group.bond]))
                    if dropped:
                        f, axis = group.members[0]
                        idx = torch.tensor(dropped, dtype=torch.long, device=t.factors[f].device)
                        t.factors[f].index_fill_(axis, idx, 0.0)
            value = float(evaluate())
        finally:
            for n, t in found:
                for f, old in zip(t.factors, saved[n], strict=True):
                    f.copy_(old)
        if not math.isfinite(value):
            raise ValueError(f"prune(evaluate=...): evaluate() returned {value!r}; expected a finite loss")
        return value

    reference = loss_at(keep)
    bound = reference + tolerance * abs(reference)
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if loss_at(without(mid)) <= bound:
            lo = mid
        else:
            hi = mid - 1
    return without(lo)


def _group_rank(process_group) -> int:
    return torch.distributed.get_rank(process_group)


def _broadcast(obj: Any, process_group) -> Any:
    box = [obj if _group_rank(process_group) == 0 else None]
    src = torch.distributed.get_global_rank(process_group, 0) if process_group is not None else 0
    torch.distributed.broadcast_object_list(box, src=src, group=process_group)
    return box[0]


def _check_same_ranks(found: dict[str, list[int]], process_group) -> None:
    """Raise when the processes of ``process_group`` hold tensors of different ranks (they would prune apart)."""
    world = torch.distributed.get_world_size(process_group)
    everyone: list[Any] = [None] * world
    torch.distributed.all_gather_object(everyone, found, group=process_group)
    for r, other in enumerate(everyone):
        if other != everyone[0]:
            bad = sorted(k for k in set(other) | set(everyone[0]) if other.get(k) != everyone[0].get(k))
            name = bad[0] if bad else "?"
            raise RuntimeError(
                f"prune(process_group=...): process {r} holds different ranks than process 0 for layer "
                f"{name!r}: {other.get(name)} against {everyone[0].get(name)}; every process must hold the same "
                "model (load the same checkpoint everywhere and prune only through this call)"
            )


@torch.no_grad()
def prune(
    model: nn.Module,
    threshold: float = DEFAULT_PRUNE_THRESHOLD,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    process_group: Any = None,
    skip: Sequence[str] = (),
    max_params: int | None = None,
    evaluate: Callable[[], float] | None = None,
    tolerance: float | None = None,
    merge_restarts: int = 0,
    by_noise: bool = True,
    optimizer_state: str = "reset",
) -> PruneReport:
    """Physically truncate every Bayesian tensorized layer to its active ranks.

    Every two-factor bond is first rotated into its SVD gauge (:meth:`FactorizedTensor.regauge_`,
    which leaves ``W`` unchanged), and a CP layer is re-expressed with the fewest components whose
    ALS refit changes ``W`` by at most ``threshold`` relative, or under SVI (``by_noise``) by at most
    the posterior's own spread of ``W`` if that is larger
    (:meth:`FactorizedTensor.merge_components_`; CP has no SVD gauge, and a degenerate fit's
    cancelling components are otherwise each needed; not under a ``process_group``, where
    processes must agree on the ranks); then rank index ``r`` of a bond is inactive when its
    contribution ``c_r < threshold · max_r c_r`` (a scale-free, relative threshold) or, under SVI,
    when its mean is within its posterior spread on some member slice
    (:meth:`FactorizedTensor.active_masks`); a bond keeps at least rank 1. Factor tensors are
    replaced by smaller ones, so :func:`count_params` falls and memory is freed.

    Parameters
    ----------
    model
        The model (or a DDP-wrapped model's ``.module``).
    threshold
        Relative pruning threshold, in ``(0, 1)``.
    optimizer
        Its parameter references and state (momentum, Adam moments) are truncated in place, so
        training goes on with it. Without it, rebuild the optimizer after pruning.
    process_group
        Under ``torch.distributed`` (DDP), the group whose processes must prune identically
        (``torch.distributed.group.WORLD`` for all). Every process regauges (a deterministic
        function of parameters DDP keeps identical); process 0 of the group decides which
        indices to keep and broadcasts them. Raises ``RuntimeError`` when the processes' ranks
        already differ. ``None``: prune this process's model on its own.
    skip
        Names of layers to leave alone (for example collapsed ones, see :class:`ARD`).
    max_params
        A budget for the factors of the pruned layers: after the threshold, keep removing the
        weakest component (lowest ``c_r / max c`` of its bond, over all layers; each bond keeps
        rank 1) until they hold at most this many parameters, or nothing is left to remove
        (see :func:`_keep_within_budget`).
    evaluate, tolerance
        Pruning decided by its effect on the loss: ``evaluate()`` returns the loss of the model as it
        stands (a float, lower is better; for example the mean task loss on a held-out batch, in
        eval mode). After the threshold, the weakest components (same order as ``max_params``) are
        removed for as long as the loss stays within ``L_0 + tolerance · |L_0|`` of its value
        ``L_0`` at the threshold's ranks (see :func:`_keep_within_loss`; about
        ``log₂(components) + 2`` calls). ``tolerance ≥ 0`` is required with ``evaluate``. Under DDP
        ``evaluate`` must return the same value on every process (for example all-reduced).
    merge_restarts
        Seeded random ALS starts a CP merge tries besides the largest components and the HOSVD start
        (small layers only, see :meth:`FactorizedTensor.merge_components_`); each costs one refit per
        layer that does not merge. :class:`ARD` asks for :data:`MERGE_RESTARTS` at its last pass.
    by_noise
        Whether, under SVI, a component whose mean is within its posterior spread is inactive too
        (:meth:`FactorizedTensor.active_masks`), and a CP merge may move ``W`` by up to the
        posterior's spread of ``W`` (:meth:`FactorizedTensor.merge_components_`). :class:`ARD` turns
        it off during its KL warm-up.
    optimizer_state
        The optimizer state of the factors the regauge rotates or rescales: ``"reset"`` (default) drops it,
        so the optimizer restarts them; ``"transport"`` maps it as their gradients map
        (:mod:`~bayestensor.tensors.optimizer_state`).

    Layers with ``method=None`` are left alone.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1) (a fraction of a bond's largest component), got {threshold!r}")
    if isinstance(merge_restarts, bool) or not isinstance(merge_restarts, int) or merge_restarts < 0:
        raise ValueError(f"merge_restarts must be an int >= 0, got {merge_restarts!r}")
    if evaluate is not None and not (isinstance(tolerance, int | float) and 0 <= tolerance < math.inf):
        raise ValueError(f"prune(evaluate=...) needs a tolerance >= 0 (a relative loss rise), got {tolerance!r}")
    if evaluate is None and tolerance is not None:
        raise ValueError("prune(tolerance=...) is the tolerance of evaluate=...; pass the loss function too")
    check_optimizer_state(optimizer_state)
    report = PruneReport(threshold=float(threshold))
    found = [(n, m.weight) for n, m in tensorized_layers(model) if m.weight.method is not None and n not in skip]
    distributed = process_group is not None
    if distributed:
        _check_same_ranks({n: list(t.ranks) for n, t in found}, process_group)
    for name, t in found:
        report.params_before += t.n_params()
        report.before[name] = list(t.ranks)
        t.regauge_(optimizer, optimizer_state)
        if not distributed:  # a refit's accept/reject could differ across processes in its last bits
            t.merge_components_(threshold, optimizer, restarts=merge_restarts, by_noise=by_noise)
    keep = {n: [m.nonzero().flatten().tolist() for m in t.active_masks(threshold, by_noise=by_noise)] for n, t in found}
    if evaluate is not None:
        keep = _keep_within_loss(found, keep, evaluate, float(tolerance))
    if max_params is not None:
        keep = _keep_within_budget(found, keep, max_params)
    if distributed:
        keep = _broadcast(keep, process_group)
    for name, t in found:
        device = t.factors[0].device
        t.truncate_([torch.tensor(k, dtype=torch.long, device=device) for k in keep[name]], optimizer)
        report.after[name] = list(t.ranks)
        report.params_after += t.n_params()
    return report
