r"""How an optimizer's per-parameter state follows the factors when pruning replaces or re-gauges them.

Two changes of a factor keep training with the same optimizer:

* **truncation** (:func:`remap_parameter`): the factor is replaced by a smaller tensor holding some of its
  slices, and every state tensor of its shape (Adam's moments, a momentum buffer) keeps the same slices;
* **a gauge change** (:func:`transport_gradient_state_`): a bond's slices are mixed by a linear map that
  leaves the weight unchanged, ``A B = (A T_a)(T_b B)``. The gradient of a loss of the weight then maps
  linearly, without inverting anything: for ``W = A B``,

  .. math::

      \frac{\partial L}{\partial (A T_a)} = G_W (T_b B)^\top = \frac{\partial L}{\partial A}\, T_b^\top,
      \qquad
      \frac{\partial L}{\partial (T_b B)} = T_a^\top \frac{\partial L}{\partial B},

  i.e. along the bond axis a factor's gradient is multiplied by its partner's map (``M_A = T_bᵀ``, and
  ``M_B = T_a`` with the bond axis last). A CP rescaling of the slices by ``s`` is the diagonal case,
  ``M = diag(1/s)``. State that is linear in the gradients (Adam's ``exp_avg``, SGD's ``momentum_buffer``,
  RMSprop's ``grad_avg``) is mapped by ``M`` exactly. State of squared gradients (``exp_avg_sq``,
  ``max_exp_avg_sq``, ``square_avg``, Adagrad's ``sum``) holds only the diagonal of the gradient's second
  moment, and the mapped diagonal depends on the correlations between the coordinates along the bond:

  .. math::

      v'_{\cdot j} = \sum_{k,l} \sqrt{v_{\cdot k}}\, M_{kj}\, ρ_{kl}\, \sqrt{v_{\cdot l}}\, M_{lj}.

  Those correlations come from the other side of the bond. Cut a tree network (TT, TTM, Tucker) at the bond
  and contract each side into a matrix, ``W_(b) = S_a S_bᵀ``; ``A``'s gradient is ``G S_b`` (``G`` the
  gradient of the unfolded weight) contracted with the rest of ``A``'s side, which acts on its rows only. So
  where the entries of ``G`` are uncorrelated with one variance per row, the gradient's coordinates along
  the bond are correlated as ``S_b``'s columns: ``ρ`` is the correlation matrix of ``S_bᵀ S_b``
  (:func:`~bayestensor.tensors.canonical.side_triangles` gives ``S_b = Q T_b``, so ``S_bᵀ S_b = T_bᵀ T_b``;
  and ``T_aᵀ T_a`` for ``B``), and the rule is exact (tested: ``v = diag(JᵀJ)`` for the Jacobian ``J`` of
  ``W`` in a factor, before and after a regauge, every format). A gauge change of another bond leaves both
  sides' contractions unchanged, so the sides are computed once per regauge. With ``ρ = I`` the rule is
  ``v' = v · (M ∘ M)``, exact for a diagonal ``M`` whatever ``ρ``: CP's rescaling. Step counts stay.
  A parameter whose state holds any other tensor of its shape has its state dropped, as ``"reset"`` does
  (the optimizer then restarts that parameter). The prior's part of the gradient is not
  gauge invariant, so the mapped moments are those of the likelihood's gradient exactly and approximately of
  the whole objective's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: What pruning does with the optimizer state of the factors its regauge changes: ``"reset"`` (default) drops
#: it, so the optimizer restarts them (Adam's first step then moves every entry by about ``lr``);
#: ``"transport"`` maps it as their gradients map (:func:`transport_gradient_state_`).
OPTIMIZER_STATES = ("reset", "transport")
#: Optimizer state keys that are sums or moving averages of the gradient itself (map linearly).
LINEAR_STATE = frozenset({"exp_avg", "momentum_buffer", "grad_avg"})
#: Optimizer state keys that are sums, moving averages or maxima of the squared gradient.
SQUARE_STATE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"})


def check_optimizer_state(value: str) -> str:
    """``value`` if it is one of :data:`OPTIMIZER_STATES`, else a ``ValueError`` naming them."""
    if value not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer_state must be one of {', '.join(map(repr, OPTIMIZER_STATES))}, got {value!r}")
    return value


def remap_parameter(
    optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, cut: Callable[[Tensor], Tensor]
) -> None:
    """Put ``new`` in ``old``'s place in ``optimizer`` and give it ``old``'s state passed through ``cut``.

    ``cut`` maps a tensor of ``old``'s shape to one of ``new``'s (e.g. the slices a truncation keeps); state
    of other shapes (step counts) is kept as it is.
    """
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {
            k: cut(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()
        }


@torch.no_grad()
def transport_gradient_state_(
    optimizer: torch.optim.Optimizer, param: Tensor, axis: int, mix: Tensor, gram: Tensor | None = None
) -> bool:
    r"""Map ``param``'s optimizer state as its gradient maps: ``g' = g ×_axis M`` (module docstring).

    Parameters
    ----------
    optimizer
        Holds ``param`` (or not: then nothing happens).
    param
        The factor whose bond axis ``axis`` was re-gauged; its values already changed.
    axis
        The bond's axis in ``param``.
    mix
        ``M``, shape ``(r, r)`` with ``r = param.shape[axis]``: the new gradient along the axis is
        ``g'[..., j] = Σ_k g[..., k] M[k, j]`` (bond axis moved last).
    gram
        ``(r, r)``: the Gram matrix whose correlations ``ρ`` the gradient's coordinates along the axis have
        (``S_bᵀ S_b`` of the bond's other side); ``None`` for uncorrelated coordinates.

    Returns
    -------
    bool
        Whether the state was carried over (``False``: there was none, or it was dropped because it holds a
        tensor of ``param``'s shape that is neither a gradient nor a squared-gradient statistic).
    """
    state = optimizer.state.get(param)
    if not state:
        return False
    shaped = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape]
    if any(k not in LINEAR_STATE | SQUARE_STATE for k in shaped):
        optimizer.state.pop(param)
        return False
    mix = mix.to(torch.float64)
    corr = None if gram is None else _correlation(gram.to(torch.float64))
    for key in shaped:
        value = state[key]
        moved = value.movedim(axis, -1).to(torch.float64)  # (..., r)
        if key in LINEAR_STATE:
            mapped = moved @ mix
        elif corr is None:
            mapped = moved @ mix.square()
        else:
            mapped = _correlated_square_map(moved, mix, corr)
        value.copy_(mapped.movedim(-1, axis).to(value.dtype))
    return True


def _correlation(gram: Tensor) -> Tensor:
    """``ρ_kl = G_kl / √(G_kk G_ll)``, with a zero row or column uncorrelated with the others."""
    d = gram.diagonal().clamp_min(0).sqrt()
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    corr = gram * inv[:, None] * inv[None, :]
    return corr.fill_diagonal_(1.0)


def _correlated_square_map(v: Tensor, mix: Tensor, corr: Tensor) -> Tensor:
    """``v'[..., j] = Σ_kl √v_k M_kj ρ_kl √v_l M_lj``: the mapped second moment for correlations ``ρ``."""
    flat = v.reshape(-1, v.shape[-1]).clamp_min(0).sqrt()  # (rows, r)
    out = []
    for rows in flat.split(max(1, (1 << 22) // mix.numel())):  # (c, r, r) of at most 4M entries at a time
        y = rows[:, :, None] * mix  # (c, r, r_new)
        out.append(torch.einsum("ckj,kl,clj->cj", y, corr, y))
    return torch.cat(out).reshape(v.shape)
