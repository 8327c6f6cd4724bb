"""Start a :class:`~bayestensor.tensors.FactorizedTensor` from a dense matrix: decompose it, or keep random factors.

``init="decompose"`` (for a trained weight) runs the format's decomposition
(:func:`~bayestensor.tensors.decompose.decompose`), copies the factors, and re-initialises the
Bayesian state from them: the rank variances ``λ`` take their closed-form MAP value for the new
factors and the posterior restarts its spread (:meth:`~bayestensor.tensors.posteriors.Posterior.reset_`;
SVI scales start at :data:`~bayestensor.tensors.posteriors.SVI_INIT_SCALE` of each factor's scale).
``init="random"`` (for training from scratch) keeps the tensor's random factors, which were drawn
so that the reconstructed weight has the dense weight's standard deviation
(:func:`dense_init_std`); ``init="frames"`` makes them isometric frames in tree formats first
(:func:`draw_frames_`; CP keeps its random factors). Either way the relative error
``‖W − Ŵ‖_F / ‖W‖_F`` is returned (about ``√2`` for independent random draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .decompose import decompose, relative_error

if TYPE_CHECKING:
    from ..formats import Network
    from .factorized import FactorizedTensor

#: How a tensor built from a dense matrix starts: ``"decompose"`` it, or keep ``"random"`` factors (or ``"frames"``).
INITS = ("decompose", "random", "frames")
#: The inits that keep random factors drawn at the dense weight's std (:func:`dense_init_std`).
RANDOM_INITS = ("random", "frames")


def dense_init_std(weight: Tensor) -> float:
    """The entry std of a dense weight, the target std of ``init="random"`` factors.

    For a freshly built ``nn.Linear`` / ``nn.Conv2d`` this is the std of PyTorch's default
    initialisation, ``1/√(3·fan_in)``, and for ``nn.Embedding`` it is 1; for a user's own
    initialisation it is whatever that initialisation drew.
    """
    w = weight.detach().to(torch.float64)
    return float(w.std()) if w.numel() > 1 else float(w.abs().mean())


@torch.no_grad()
def draw_frames_(factors: Sequence[Tensor], network: Network) -> int | None:
    r"""Make every non-root factor of a tree network a random isometry along its bond towards the root.

    A product of independent Gaussian cores is an ill-conditioned weight: at the 10 % budget a TT
    convolution's unfolding between its output and other modes has an effective rank
    :math:`(\sum σ)^2 / \sum σ^2` of 4.5 of its 6 directions (32 channels) and 10.5 of 13 (64), and
    heavy-tailed entries (kurtosis 24 and 9, against a Gaussian's 3; means of five seeds). With the
    non-root factors isometries (:meth:`~bayestensor.formats.Network.isometry_frames`: ``Q`` of the QR
    of a Gaussian matrix, the factor reshaped to ``(its other indices, the bond)``, so that
    :math:`Q^\top Q = I`) and a Gaussian root, the weight has the well-spread spectrum of one Gaussian
    factor (5.8 of 6 and 12.6 of 13, kurtosis 5.4 and 3.8): the canonical form of a TT-SVD or HOSVD,
    whose orthonormal frames carry no scale and whose root (the centre core, Tucker's core) carries the
    weight's norm. The draw uses the CPU generator in double precision. Returns the root's index, or
    ``None`` (factors unchanged) for a network that is not a tree (CP) and for factors on the ``meta``
    device.
    """
    frames = network.isometry_frames()
    if frames is None or any(f.is_meta for f in factors):
        return None
    for f, axis in frames[1]:
        moved = factors[f].movedim(axis, -1)  # (..., bond towards the root)
        rows, cols = moved[..., 0].numel(), moved.shape[-1]
        q = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), dtype=torch.float64)).Q
        frame = q if rows >= cols else q.T  # (rows, cols): orthonormal columns, or rows where the bond is wider
        factors[f].copy_(frame.reshape(moved.shape).movedim(-1, axis))
    return frames[0]


@torch.no_grad()
def start_frames_(tensor: FactorizedTensor, target_std: float) -> bool:
    """Draw isometric frames into ``tensor`` (:func:`draw_frames_`) and give its root the weight RMS ``target_std``.

    Returns ``False`` (nothing changed) where the format has no frames (CP) or the factors are on ``meta``.
    The Bayesian state is not touched: a caller whose state was set from the old factors restarts it.
    """
    network = tensor.fmt.network(tensor.out_shape, tensor.in_shape, list(tensor.ranks))
    root = draw_frames_(list(tensor.factors), network)
    if root is None:
        return False
    tensor._rescale_to_std_(target_std, only=root)  # the root carries the weight's norm
    return True


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INITS`, else a ``ValueError`` naming them."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    return init


@torch.no_grad()
def init_from_matrix_(tensor: FactorizedTensor, matrix: Tensor, *, init: str = "decompose", n_iter: int = 200) -> float:
    """Start ``tensor`` from ``matrix`` (shape ``(prod(out_shape), prod(in_shape))``, zero-padded).

    Returns the relative reconstruction error of the tensor against ``matrix`` (module docstring).
    """
    check_init(init)
    out_shape, in_shape, ranks = tensor.out_shape, tensor.in_shape, list(tensor.ranks)
    work = matrix.detach().to(torch.float64)  # decompose in double, store in the tensor's dtype
    if init == "frames":
        rms = tensor.weight_rms()  # the random draw's, rescaled to the dense weight's std when it was built
        if start_frames_(tensor, rms):
            _restart_bayesian_state_(tensor)
    if init in RANDOM_INITS:
        w = tensor.to_matrix().to(torch.float64)
        return float((w - work).norm() / work.norm().clamp_min(1e-300))
    full = work.reshape(*out_shape, *in_shape)
    factors = decompose(tensor.fmt.name, full, out_shape, in_shape, ranks, n_iter=n_iter)
    error = relative_error(tensor.fmt.name, factors, full, out_shape, in_shape, ranks)
    for p, f in zip(tensor.factors, factors, strict=True):
        p.copy_(f.to(p))
    _restart_bayesian_state_(tensor)
    return error


def _restart_bayesian_state_(tensor: FactorizedTensor) -> None:
    """After new factors: the posterior's spread restarts, ``λ`` takes its MAP value, the prior its scale reference."""
    tensor.posterior.reset_(list(tensor.factors))
    if tensor.method is not None:
        energy, count = tensor.flat_rank_statistics()
        tensor.reset_prior_reference_(energy, count)  # the new weight's scale is the start the prior measures
        for b, (e, c) in enumerate(zip(energy.split(tensor.ranks), count.split(tensor.ranks), strict=True)):
            lam_ref = tensor.rank_variances()[b]
            lam = tensor.prior.map_update(e.to(lam_ref.dtype), c.to(lam_ref.dtype))
            lam = lam.clamp_min(torch.finfo(lam.dtype).tiny ** 0.5)
            if tensor.rank_update == "em":
                getattr(tensor, f"rank_variance_{b}").copy_(lam)
            else:
                getattr(tensor, f"log_rank_variance_{b}").copy_(lam.log())
        tensor._lambda_versions = tensor._versions()
