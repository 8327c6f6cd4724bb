r"""Stein variational gradient descent (Liu & Wang 2016) over an :class:`~.ensemble.Ensemble`.

The particles ``θ_1 … θ_P`` move along

.. math::

    φ(θ_i) = \frac{1}{P} \sum_j \Big[ k(θ_j, θ_i)\, ∇_{θ_j} \log p(θ_j \mid D)
             + ∇_{θ_j} k(θ_j, θ_i) \Big],

the steepest descent direction of ``KL(q ‖ p)`` in the kernel's RKHS. With ``U(θ)`` the mean
task loss plus ``β · prior_loss / N`` (so ``log p(θ | D) = −N U(θ)`` at ``β = 1``), this
module hands the optimizer the descent gradient ``g_i = −φ(θ_i) / N``:

.. math::

    g_i = \frac{1}{P} \sum_j k_{ij}\, ∇U(θ_j) \;+\; \frac{1}{N P}\, ∇_{θ_i} \sum_j k(f_i, \bar f_j),

where ``f_i`` are the **kernel features** of particle ``i`` and the bar stops the gradient. At a
temperature ``T`` (default 1) the target is ``p(θ | D)^{1/T}``, whose ``∇ log`` is ``∇ log p / T``;
multiplying ``φ`` by ``T`` (a step-size change) leaves the driving term as it is and scales the
repulsion by ``T``: ``T < 1`` (a "cold" posterior) concentrates the particles, ``T → 0`` removes the
repulsion.

Which features, and why. The cores of a tensor format carry a gauge freedom: ``A B = (A T)(T^{-1} B)``
for any invertible ``T``, and a CP component can move scale between its factors. Two particles
can thus be far apart in raw cores and equal as functions (the kernel would push apart what is
already distinct) or the reverse. The kernel therefore compares **what the network computes**:
``f_i`` is particle ``i``'s output on the current batch, which no gauge change can alter. It is
a *pullback* kernel ``k(θ, θ') = κ(f(θ), f(θ'))`` with the RBF

.. math::

    κ(f, f') = \exp\big(-\|f - f'\|^2 / (2h^2)\big), \qquad
    h^2 = \tfrac12\, \mathrm{median}_{i<j} \|f_i - f_j\|^2 / \log(P + 1)

(the median heuristic of the paper's code, or a fixed ``bandwidth = h``). The repulsion is taken
through each particle's own Jacobian (``∇_{θ_i}`` of the kernel with the other particle fixed),
one extra backward pass; for features that are the parameters themselves (``f(θ) = θ``) this is
exactly the textbook term, ``Σ_j ∇_{θ_j} k(θ_j, θ_i) = −∇_{θ_i} Σ_j k(θ_i, θ_j)``. One particle
has ``k = 1`` and no repulsion: SVGD is then gradient descent on ``U``, i.e. MAP.

With ``drive="function"`` (:class:`SVGD`) the driving term mixes the loss's gradient on the features
instead of the parameter gradients and shares the repulsion's backward pass: one pass instead of two.

The rank variances ``λ`` stay per particle and get their closed-form M-step after each step;
:meth:`~.ensemble.Ensemble.prune_` prunes what is inactive in all particles.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import held_by
from .ensemble import Ensemble, check_potential_args, check_temperature


def check_bandwidth(bandwidth: float | None) -> float | None:
    """``None`` (median heuristic) or a finite ``h > 0``; a ``ValueError`` that names it otherwise."""
    if bandwidth is None:
        return None
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or not 0 < bandwidth < math.inf:
        raise ValueError(f"bandwidth must be a finite number > 0 or None (median heuristic), got {bandwidth!r}")
    return float(bandwidth)


def rbf_kernel(features: Tensor, bandwidth: float | None = None) -> tuple[Tensor, float]:
    """``(K, 2h²)``: the RBF Gram matrix ``K_ij = exp(−‖f_i − f_j‖² / 2h²)`` of ``features`` ``(P, D)``.

    ``bandwidth=None`` takes ``2h² = median_{i<j} ‖f_i − f_j‖² / log(P + 1)``; when that median is
    0 (one particle, or all equal) any ``h`` gives the same, zero, repulsion and ``2h² = 1`` is used.
    """
    f = features.detach().reshape(features.shape[0], -1).to(torch.float64)
    d2 = torch.cdist(f, f).square()  # (P, P)
    if bandwidth is None:
        p = f.shape[0]
        off = d2[torch.triu_indices(p, p, offset=1, device=f.device).unbind()]
        median = float(off.median()) if off.numel() else 0.0
        two_h2 = median / math.log(p + 1) if median > 0 else 1.0
    else:
        two_h2 = 2.0 * check_bandwidth(bandwidth) ** 2
    return torch.exp(-d2 / two_h2), two_h2


def kernel_gradient(features: Tensor, kernel: Tensor, two_h2: float) -> Tensor:
    r"""``∂/∂f_i Σ_j κ(f_i, \bar f_j) = −(2 / 2h²) Σ_j K_ij (f_i − f_j)``, shape of ``features``.

    Its negative is the repulsive force on particle ``i`` in feature space.
    """
    f = features.detach().reshape(features.shape[0], -1).to(kernel.dtype)
    grad = -(2.0 / two_h2) * (kernel.sum(1, keepdim=True) * f - kernel @ f)  # (P, D)
    return grad.reshape(features.shape).to(features.dtype)


#: What the kernel mixes across particles (:class:`SVGD`'s ``drive``).
DRIVES = ("parameters", "function")


def check_drive(drive: str) -> str:
    """One of :data:`DRIVES`, or a ``ValueError`` that names both."""
    if drive not in DRIVES:
        raise ValueError(f"drive must be one of {', '.join(repr(d) for d in DRIVES)}, got {drive!r}")
    return drive


def _reaches_a_leaf_around(losses: Tensor, features: Tensor) -> bool:
    """Whether ``losses`` depend on a leaf (a parameter) along a path that does not pass through ``features``.

    A walk of the autograd graph from ``losses`` that stops at ``features``' node: only the few
    operations between the features and the losses (a cross-entropy) are visited when the losses
    are a function of the features alone.
    """
    stop = features.grad_fn
    seen: set[int] = set()
    todo = [losses.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node is stop or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf that requires grad (the features, if a leaf)
            if node.variable is features:
                continue
            return True
        todo.extend(n for n, _ in node.next_functions)
    return False


class SVGD:
    r"""SVGD steps for an :class:`~.ensemble.Ensemble` with any torch optimizer over its particles.

    Parameters
    ----------
    ensemble
        The particles.
    optimizer
        Built on ``ensemble.parameters()``; it receives the descent gradient ``g_i`` (module
        docstring). The paper uses an AdaGrad-style step; Adam or SGD work the same way. Build it
        anew after :meth:`~.ensemble.Ensemble.prune_`.
    num_data
        ``N``, the training examples the task loss averages over.
    kl_weight
        ``β`` of the prior term (``1`` = the posterior).
    bandwidth
        Fixed RBF bandwidth ``h > 0``; ``None`` (default): the median heuristic at every step.
    temperature
        ``T > 0``: the particles target ``p(θ | D)^{1/T}`` (``1`` = the posterior; module docstring).
    drive
        What the kernel mixes in the driving term ``(1/P) Σ_j k_ij ∇U(θ_j)``:

        * ``"parameters"`` (default): the particles' parameter gradients ``∇U(θ_j)``, the textbook
          form. It needs two backward passes through the network: the potential's gradients, and
          the repulsion through each particle's own Jacobian.
        * ``"function"``: the task loss's gradient with respect to the **features**,
          ``a_j = ∂ loss_j / ∂ f_j``, mixed in feature space and pulled back through particle
          ``i``'s own Jacobian ``J_i = ∂f_i / ∂θ_i`` together with the repulsion (function-space
          SVGD, Wang et al. 2019):

          .. math::

              g_i = J_i^⊤ \Big[ \frac1P \sum_j k_{ij}\, a_j + c_i \Big]
                    + \frac{β}{N P} \sum_j k_{ij}\, ∇ \mathrm{prior}(θ_j),

          with ``c_i`` the repulsion's cotangent. One backward pass through the network (the
          prior's gradients touch the factors only). The driving term is then also blind to the
          gauge: particle ``j``'s parameter gradient lives in ``j``'s gauge of the cores and means
          nothing in particle ``i``'s, while ``a_j`` is a gradient in feature space, which every
          particle shares. Where the features are linear in ``θ`` (``f = Xθ``, ``J_i = X`` for all
          ``i``) the two drives are equal. The losses must depend on the particles only through
          ``features`` (a ``ValueError`` says so otherwise): put any prior of your own into the
          features, or into the model's Bayesian tensors, whose prior this object adds.

    Examples
    --------
    >>> ens = bt.inference.Ensemble.clone(map_model, 8, jitter=0.01)       # doctest: +SKIP
    >>> svgd = bt.inference.SVGD(ens, torch.optim.Adam(ens.parameters(), 1e-4), num_data=N)
    >>> logits = ens(x)                                                      # (P, B, C)
    >>> losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(8), reduction="none").view(8, -1).mean(1)
    >>> svgd.step(losses, logits)
    """

    def __init__(
        self,
        ensemble: Ensemble,
        optimizer: torch.optim.Optimizer,
        *,
        num_data: int,
        kl_weight: float = 1.0,
        bandwidth: float | None = None,
        temperature: float = 1.0,
        drive: str = "parameters",
    ) -> None:
        self.num_data, self.kl_weight = check_potential_args(num_data, kl_weight)
        self.ensemble = ensemble
        self.optimizer = optimizer
        self.bandwidth = check_bandwidth(bandwidth)
        self.temperature = check_temperature(temperature)
        self.drive = check_drive(drive)

    def potential(self, losses: Tensor) -> Tensor:
        """``U_i`` of every particle, ``(P,)`` (:meth:`~.ensemble.Ensemble.potentials` at this ``N`` and ``β``)."""
        return self.ensemble.potentials(losses, num_data=self.num_data, kl_weight=self.kl_weight)

    def gradients(self, losses: Tensor, features: Tensor) -> dict[str, float]:
        """Write the SVGD descent gradient ``g_i`` into the particles' ``.grad``; returns the mean ``U`` and ``h``.

        ``features`` ``(P, …)`` must depend on the particles through the graph (usually the
        ensemble's outputs on the batch that gave ``losses``).
        """
        ens = self.ensemble
        p = ens.num_particles
        if features.shape[0] != p:
            raise ValueError(f"features must have the particle axis first, ({p}, ...), got {tuple(features.shape)}")
        if not features.requires_grad:
            raise ValueError(
                "features must depend on the particles through the graph (the ensemble's outputs on the batch), got "
                "a tensor that does not require grad: were they detached or computed under torch.no_grad()?"
            )
        params = [t for t in ens.particles.values() if t.requires_grad]
        kernel, two_h2 = rbf_kernel(features, self.bandwidth)
        cotangent = kernel_gradient(features, kernel, two_h2) * (self.temperature / (self.num_data * p))
        if self.drive == "parameters":
            u = self.potential(losses)
            grads = torch.autograd.grad(u.sum(), params, retain_graph=True, allow_unused=True)
            pullback = torch.autograd.grad(features, params, grad_outputs=cotangent, allow_unused=True)
        else:
            u = self.potential(losses.detach())  # checks the shape; only the prior's part keeps its graph
            if _reaches_a_leaf_around(losses, features):
                raise ValueError(
                    "drive='function' needs losses that depend on the particles only through features (the losses' "
                    "gradient is mixed in feature space); these losses also reach a parameter another way. Put that "
                    "term into the features, or use drive='parameters'"
                )
            (task,) = torch.autograd.grad(losses.sum(), features, retain_graph=True)  # a_j = ∂loss_j/∂f_j
            mixed = torch.tensordot(kernel.to(task.dtype), task, dims=1) / p  # (1/P) Σ_j k_ij a_j
            pullback = torch.autograd.grad(features, params, grad_outputs=mixed + cotangent, allow_unused=True)
            # the prior's gradients (β/N) ∇prior(θ_j); none without Bayesian tensors or at β = 0
            grads = torch.autograd.grad(u.sum(), params, allow_unused=True) if u.requires_grad else [None] * len(params)
        with torch.no_grad():
            for t, g, r in zip(params, grads, pullback, strict=True):
                smoothed = torch.zeros_like(t) if g is None else torch.tensordot(kernel.to(g.dtype), g, dims=1) / p
                t.grad = smoothed if r is None else smoothed + r
        return {"potential": float(u.detach().mean()), "bandwidth": math.sqrt(two_h2 / 2)}

    def step(self, losses: Tensor, features: Tensor) -> dict[str, float]:
        """:meth:`gradients`, one optimizer step, and the particles' ``λ`` M-step."""
        held = held_by(self.optimizer)
        if not any(id(t) in held for t in self.ensemble.particles.values() if t.requires_grad):
            raise RuntimeError(
                "SVGD's optimizer holds none of the ensemble's particles: prune_() or a load_state_dict of other "
                "shapes replaced them; build a new optimizer on ensemble.parameters() and a new SVGD"
            )
        self.optimizer.zero_grad(set_to_none=True)
        out = self.gradients(losses, features)
        self.optimizer.step()
        self.ensemble.update_rank_variances_()
        return out
