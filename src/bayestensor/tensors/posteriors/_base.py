r"""The posterior over one factorized weight's factors: the interface every kind implements.

A :class:`~bayestensor.tensors.FactorizedTensor` stores the factor means ``μ_f``; its posterior
object owns whatever else the kind needs (the mean-field Gaussian's scales) and answers the
questions the objective, the forward pass and pruning ask:

* a draw of the factors to compute with (:meth:`Posterior.sample`);
* the second moments ``E_q[w²]`` that the rank statistics sum (:meth:`Posterior.second_moments`);
* the entropy ``H[q]`` of the KL term (:meth:`Posterior.entropy`);
* how its own parameters follow a gauge change of the factors (:meth:`Posterior.rotate_`,
  :meth:`Posterior.rescale_`), a truncation of rank indices (:meth:`Posterior.factor_parameters`)
  and a fresh start from decomposed factors (:meth:`Posterior.reset_`).

The posterior's parameters live on the posterior module (``<tensor>.posterior.*``), so they are
saved, loaded and optimised with the model. A whole-model particle posterior (SVGD, SGHMC) is not
a per-tensor object: it is :class:`bayestensor.inference.Ensemble`, whose particles hold point
masses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Posterior(nn.Module):
    """A point mass at the factor means; subclasses add spread.

    Every method takes the factor means ``means`` (the tensor's ``factors``, in order) and is a
    pure function of them and the posterior's own parameters, except the ``*_`` methods, which
    update the posterior's parameters in place.
    """

    #: Whether :meth:`sample` draws (two calls differ) rather than returning the means.
    stochastic: bool = False

    def sample(self, means: Sequence[Tensor]) -> list[Tensor]:
        """Factors to compute with: a reparameterised draw ``w ~ q`` (the means for a point mass)."""
        return list(means)

    def second_moments(self, means: Sequence[Tensor]) -> list[Tensor]:
        """``E_q[w²]`` entrywise, per factor (``μ²`` for a point mass)."""
        return [m.square() for m in means]

    def entropy(self, means: Sequence[Tensor]) -> Tensor:
        """``H[q]`` in nats (zero for a point mass, whose entropy is a constant dropped from the objective)."""
        return means[0].new_zeros(())

    def factor_parameters(self) -> list[nn.ParameterList]:
        """The posterior's parameter lists shaped like the factors (one entry per factor).

        The tensor truncates and remaps them exactly like the factors when it prunes.
        """
        return []

    def signal_to_noise(self, means: Sequence[Tensor], factor: int, axis: int) -> Tensor | None:
        r"""Per slice of factor ``factor`` along ``axis``, ``‖μ_slice‖² / Σ_slice σ²``; ``None`` without spread.

        Under ``q`` a slice is a Gaussian vector with ``E‖x‖² = ‖μ‖² + Σ σ²``; a ratio under ``1`` means
        that its mean carries less energy than its posterior spread, so ``q`` cannot tell the slice
        from zero (:meth:`~bayestensor.FactorizedTensor.active_masks`).
        """
        return None

    def gauge_split(self, entries: Sequence[int]) -> list[float]:
        r"""How a bond's rank components split their size over the bond's members, at the objective's optimum.

        A rank index ``r`` of a bond with members ``k = 1..n`` (slices of ``I_k`` entries each)
        has the size ``c_r = Π_k ‖slice_r(G_k)‖`` over its members; rescaling the slices by ``t_k`` with
        ``Π_k t_k = 1`` leaves ``W`` (and every draw of a spread posterior, :meth:`rescale_`)
        unchanged but not the objective. With ``λ_r`` at its M-step ``M_r / D`` (a flat hyper-prior;
        the registered ones add ``O(1)`` to ``D``) the prior's part is ``(D/2) log Σ_k t_k² E_k``
        (``D = Σ_k I_k``); a scale floor divides every ``E_k`` by the same ``ρ`` and moves nothing. A
        point mass minimises it at equal slice norms, ``‖slice_r(G_k)‖ = c_r^{1/n}``. A posterior
        whose spread scales with its slices adds the entropy ``Σ_k I_k log t_k``, and the optimum
        moves to an equal second moment per *entry*,
        ``t_k² E_k / I_k`` the same for every ``k``: ``‖slice_r(G_k)‖ = c_r^{1/n} (I_k / Ī)^{1/2}``,
        ``Ī`` the geometric mean of the ``I_k``. Returns the factors ``(I_k / Ī)^{1/2}`` (all ``1``
        for a point mass); their product is ``1``. A regauge that split by the point mass's rule under
        a spread posterior would be undone by the optimiser between pruning passes through the
        means only, while the scales stay where the regauge put them, so the scales ratchet pass
        after pass (:meth:`~bayestensor.FactorizedTensor.regauge_`).
        """
        if not self.stochastic:
            return [1.0] * len(entries)
        mean_log = sum(math.log(i) for i in entries) / len(entries)
        return [math.exp(0.5 * (math.log(i) - mean_log)) for i in entries]

    @torch.no_grad()
    def create_(self, means: Sequence[Tensor], stds: Sequence[float]) -> None:
        """Create the posterior's parameters for freshly drawn factors of init std ``stds``."""

    @torch.no_grad()
    def reset_(self, means: Sequence[Tensor]) -> None:
        """Restart the posterior's spread for factors that were just replaced (decomposed)."""

    @torch.no_grad()
    def rotate_(self, factor: int, axis: int, matrix: Tensor, leading: bool) -> None:
        """Follow the linear gauge map of factor ``factor``'s rank axis ``axis``.

        With the rank axis moved last (``leading=False``) the factor became ``G T``; moved first
        (``leading=True``) it became ``T G``, for ``T = matrix`` (float64).
        """

    @torch.no_grad()
    def rescale_(self, factor: int, axis: int, scale: Tensor) -> None:
        """Follow the rescaling of factor ``factor``'s slices along ``axis`` by ``scale`` (one per slice)."""
