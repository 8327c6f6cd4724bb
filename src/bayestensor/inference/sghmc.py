r"""Stochastic-gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin 2014) over parallel chains.

Each particle of an :class:`~.ensemble.Ensemble` is one chain. With ``U(θ)`` the mean task loss
plus ``β · prior_loss / N`` (``−log p(θ | D) = N U(θ)`` at ``β = 1``), step size ``ε = lr / N``
on ``N U`` and friction ``α``, the update of the paper's momentum form (its noise estimate
``\hat β = 0``) is

.. math::

    v \leftarrow (1 - α)\, v - \mathrm{lr}\, ∇U(θ) + \mathcal N\!\big(0,\; 2 α\, \mathrm{lr}\, T / N\big),
    \qquad θ \leftarrow θ + v,

which leaves ``p(θ | D)^{1/T}`` invariant as ``lr → 0``. ``lr`` plays the role of an SGD
learning rate on the mean loss and ``1 − α`` of its momentum. ``α = 1`` is SGLD. After
``burn_in`` steps every ``thin``-th state of every chain is kept, the most recent
``max_samples`` in all; :meth:`SGHMC.samples` returns them as one ensemble for
:func:`~bayestensor.predict`. The chains' ``λ`` get their M-step after every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .checks import number
from .ensemble import Ensemble, check_potential_args, check_temperature


class SGHMC:
    """SGHMC chains over the particles of ``ensemble`` (module docstring).

    Parameters
    ----------
    ensemble
        One chain per particle, updated in place.
    num_data
        ``N``.
    lr
        Step size on the mean loss (``> 0``).
    friction
        ``α ∈ (0, 1]``.
    temperature
        ``T > 0`` (``1`` = the posterior).
    burn_in, thin, max_samples
        Steps before the first kept state, steps between kept states (``>= 1``), and the largest
        number of kept samples over all chains (``>=`` the number of chains).
    kl_weight
        ``β`` of the prior term.
    """

    def __init__(
        self,
        ensemble: Ensemble,
        *,
        num_data: int,
        lr: float,
        friction: float = 0.1,
        temperature: float = 1.0,
        burn_in: int = 0,
        thin: int = 1,
        max_samples: int = 100,
        kl_weight: float = 1.0,
    ) -> None:
        self.num_data, self.kl_weight = check_potential_args(num_data, kl_weight)
        number("lr", lr, low=0, open_low=True)
        number("friction", friction, low=0, high=1, open_low=True)  # 1 = SGLD, no momentum
        for name, value, low in (("burn_in", burn_in, 0), ("thin", thin, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        chains = ensemble.num_particles
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < chains:
            raise ValueError(f"max_samples must be an int >= the number of chains ({chains}), got {max_samples!r}")
        self.ensemble = ensemble
        self.lr, self.friction, self.temperature = float(lr), float(friction), check_temperature(temperature)
        self.burn_in, self.thin, self.max_samples = burn_in, thin, max_samples
        self.steps = 0
        self.momentum = {n: torch.zeros_like(p) for n, p in ensemble.particles.items() if p.requires_grad}
        self.kept: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def step(self, losses: Tensor) -> dict[str, float]:
        """One SGHMC step of every chain from its mean task losses ``(P,)``; returns the mean ``U``."""
        ens = self.ensemble
        changed = [n for n, v in self.momentum.items() if n not in ens.particles or ens.particles[n].shape != v.shape]
        if changed:
            raise RuntimeError(
                f"the ensemble's particles {changed[:3]} changed shape since this SGHMC was built (prune_() or a "
                "load_state_dict of other shapes); build a new SGHMC (the kept samples have the old shapes)"
            )
        u = ens.potentials(losses, num_data=self.num_data, kl_weight=self.kl_weight)
        names = list(self.momentum)
        params = [ens.particles[n] for n in names]
        grads = torch.autograd.grad(u.sum(), params, allow_unused=True)
        noise = math.sqrt(2 * self.friction * self.lr * self.temperature / self.num_data)
        with torch.no_grad():
            for name, t, g in zip(names, params, grads, strict=True):
                v = self.momentum[name]
                v.mul_(1 - self.friction).add_(torch.randn_like(v), alpha=noise)
                if g is not None:
                    v.add_(g, alpha=-self.lr)
                t.add_(v)
        ens.update_rank_variances_()
        self.steps += 1
        if self.steps > self.burn_in and (self.steps - self.burn_in) % self.thin == 0:
            self._keep()
        return {"potential": float(u.detach().mean())}

    @torch.no_grad()
    def _keep(self) -> None:
        params, buffers = self.ensemble.stacked()
        self.kept.append(
            ({n: t.detach().clone() for n, t in params.items()}, {n: b.clone() for n, b in buffers.items()})
        )
        while len(self.kept) * self.ensemble.num_particles > self.max_samples:
            self.kept.pop(0)

    @property
    def num_samples(self) -> int:
        """Samples kept so far, over all chains."""
        return len(self.kept) * self.ensemble.num_particles

    def samples(self) -> Ensemble:
        """The kept samples of all chains as one ensemble (a copy), ``num_samples`` particles."""
        if not self.kept:
            raise ValueError(
                f"no samples kept yet: {self.steps} steps run, the first is kept after burn_in={self.burn_in} + "
                f"thin={self.thin} steps"
            )
        names = self.ensemble.stacked()
        params = {n: torch.cat([k[0][n] for k in self.kept]) for n in names[0]}
        buffers = {n: torch.cat([k[1][n] for k in self.kept]) for n in names[1]}
        out = Ensemble.from_stacked(self.ensemble.base, params, buffers)
        out.vectorize = self.ensemble.vectorize
        return out

    def state_dict(self) -> dict[str, Any]:
        """Step count, momenta and kept samples (for checkpoints)."""
        return {
            "steps": self.steps,
            "momentum": {n: v.clone() for n, v in self.momentum.items()},
            "kept": list(self.kept),  # the kept states are never changed in place, only dropped from the list
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the chains' count and shapes must match."""
        for name, v in state["momentum"].items():
            if name not in self.momentum or v.shape != self.momentum[name].shape:
                raise ValueError(
                    f"SGHMC state: momentum {name!r} of shape {tuple(v.shape)} does not match this ensemble's "
                    f"{tuple(self.momentum[name].shape) if name in self.momentum else 'parameters'}"
                )
        self.steps = int(state["steps"])
        self.momentum = {n: v.clone() for n, v in state["momentum"].items()}
        self.kept = list(state["kept"])
