r"""A factorized weight with optional Bayesian rank determination (MAP or SVI) and physical pruning.

Model (Hawkins, Liu & Zhang 2022). Every bond ``b`` of the format has one variance ``λ_{b,r}``
per rank index ``r``; every factor slice that carries that index (the format's rank groups) gets
a Gaussian factor ``N(0, λ_{b,r})`` per entry. An entry carried by two bonds (a middle TT core,
the Tucker core) gets one such factor from each bond, a product of experts that keeps the
``λ``-update separable. With

.. math::

    M_{b,r} = \sum_{w \in \text{slices}(b,r)} \mathbb{E}_q[w^2], \qquad
    D_{b,r} = \#\text{slices}(b,r),

the negative log prior (MAP) or KL term (SVI) is

.. math::

    \mathcal{R} = \sum_{b,r} \Big[\frac{M_{b,r}}{2λ_{b,r}} + \frac{D_{b,r}}{2}\log(2πλ_{b,r})\Big]
    - \sum_{b,r} \log p(λ_{b,r}) - \mathbb{H}[q],

where ``H[q]`` is the entropy of the posterior ``q`` (zero for MAP, whose ``q`` is a point mass
and whose ``E[w²] = w²``). For entries with one governing bond this is exactly
``KL(q ‖ N(0, λ))``. The posterior is its own object (:mod:`bayestensor.tensors.posteriors`),
chosen by ``method``; this module asks it for draws, ``E_q[w²]`` and ``H[q]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..formats import RankSpec, Shape, get_format
from ..functional import reconstruct_matrix, squared_norm
from ..priors import get_prior
from .canonical import side_triangles
from .decompose import cp_merge, cp_spread
from .init import RANDOM_INITS, start_frames_
from .optimizer_state import check_optimizer_state, remap_parameter, transport_gradient_state_
from .posteriors import POSTERIORS, Posterior, get_posterior
from .statistics import StatisticsLayout, rank_energies, slice_sums, statistics_layout

#: Training methods of one tensor: fixed ranks, or a rank prior with one of the registered posteriors.
METHODS = (None, *POSTERIORS)
RANK_UPDATES = ("em", "gradient")

#: Default relative pruning threshold: rank component r of a bond is inactive when its
#: contribution to the weight ``c_r < threshold · max_r c_r`` (see ``FactorizedTensor.contributions``).
DEFAULT_PRUNE_THRESHOLD = 1e-3
#: Under a posterior with spread, a rank component is also inactive when on some member slice its mean's
#: energy is below this multiple of the posterior variance there (``FactorizedTensor.active_masks``).
MIN_SIGNAL_TO_NOISE = 1.0
MERGE_MAX_ENTRIES = 1 << 24
"""A CP tensor is merged (:meth:`FactorizedTensor.merge_components_`) when ``R · Π I_n`` is at most this."""
MERGE_RESTART_MAX_ENTRIES = 1 << 16
"""A merge tries the random ALS starts it is given only when ``R · Π I_n`` is at most this (each costs a refit)."""
#: Starting size of a tensor built without ``max_rank``: its factors hold about this fraction of the
#: dense matrix's entries (uniform ranks, see :meth:`~bayestensor.formats.TensorFormat.ranks_for_budget`).
DEFAULT_START_FRACTION = 0.1


class FactorizedTensor(nn.Module):
    """The factors of one weight in a tensor format, with their variational posterior and rank variances.

    Parameters
    ----------
    format
        Registered format name.
    out_shape, in_shape
        Mode shapes of the matrix view ``W.reshape(*out_shape, *in_shape)``.
    max_rank
        Int or per-bond sequence; clipped to the format's full ranks. ``None``: the largest uniform
        rank whose factors hold at most ``start_fraction`` of the dense matrix's entries, so ARD
        starts with room above what the data need and the start costs a known share of dense.
    start_fraction
        Parameter budget of ``max_rank=None`` relative to the dense matrix (default
        :data:`DEFAULT_START_FRACTION`); ignored when ``max_rank`` is given.
    method
        ``None`` (fixed ranks), or a key of :data:`~bayestensor.tensors.posteriors.POSTERIORS`:
        ``"map"`` (point mass) or ``"svi"`` (mean-field Gaussian).
    prior, prior_kwargs
        Registered rank prior and its hyper-parameters (``method`` not ``None``).
    rank_update
        ``"em"`` (default): closed-form M-step on ``λ`` run by :func:`bayestensor.prior_loss`
        before each training loss, with damping ``em_step``; exact coordinate ascent that needs
        no learning rate. ``"gradient"``: ``log λ`` is a parameter trained by the optimizer.
    em_step
        Damping ``ρ ∈ (0, 1]`` of the M-step, ``λ ← (1-ρ) λ + ρ λ*``.
    init_std
        Target std of the reconstructed weight's entries.
    init
        ``"random"`` (default): independent Gaussian factors. ``"frames"``: in tree formats (TT, TTM,
        Tucker) every factor but one is a random isometry along its bond towards that one, which
        carries the weight's norm (:func:`~bayestensor.tensors.init.draw_frames_`); CP keeps its
        Gaussian factors. Either way the weight's RMS is ``init_std``.
    """

    def __init__(
        self,
        format: str,
        out_shape: Shape,
        in_shape: Shape,
        max_rank: RankSpec | None = None,
        *,
        start_fraction: float | None = None,
        method: str | None = None,
        prior: str = "half_cauchy",
        prior_kwargs: dict[str, float] | None = None,
        rank_update: str = "em",
        em_step: float = 1.0,
        init_std: float = 1.0,
        init: str = "random",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if init not in RANDOM_INITS:
            raise ValueError(
                f"unknown init {init!r} for a new tensor; expected one of {RANDOM_INITS} "
                "(init='decompose' starts a layer from a dense one: from_dense)"
            )
        self.fmt = get_format(format)
        if method in ("svgd", "sghmc"):
            raise ValueError(
                f"method={method!r} samples the whole model, not one layer: build the layers with method='map' and "
                f"run bt.Ensemble with bt.{method.upper()} (or `bayestensor train --method {method}`)"
            )
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if rank_update not in RANK_UPDATES:
            raise ValueError(f"unknown rank_update {rank_update!r}; expected one of {RANK_UPDATES}")
        if not 0.0 < float(em_step) <= 1.0:
            raise ValueError(f"em_step must be in (0, 1], got {em_step!r}")
        self.out_shape = tuple(int(s) for s in out_shape)
        self.in_shape = tuple(int(s) for s in in_shape)
        if max_rank is None:
            fraction = DEFAULT_START_FRACTION if start_fraction is None else float(start_fraction)
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"start_fraction must be in (0, 1], got {start_fraction!r}")
            dense = math.prod(self.out_shape) * math.prod(self.in_shape)
            self.ranks = self.fmt.ranks_for_budget(fraction * dense, self.out_shape, self.in_shape)
        else:
            self.ranks = self.fmt.resolve_ranks(max_rank, self.out_shape, self.in_shape)
        self.initial_ranks = list(self.ranks)  # the max ranks training started from
        self.method = method
        self.rank_update = rank_update
        self.em_step = float(em_step)
        self.sample_in_eval = False
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        shapes = self.fmt.factor_shapes(self.out_shape, self.in_shape, self.ranks)
        stds = self.fmt.factor_stds(init_std, self.out_shape, self.in_shape, self.ranks)
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.randn(s, **factory) * sd) for s, sd in zip(shapes, stds, strict=True)]
        )
        self._rescale_to_std_(init_std)
        frames = init == "frames" and start_frames_(self, init_std)
        self.posterior: Posterior = get_posterior(method)
        self.posterior.create_(list(self.factors), stds)
        if frames:  # the frames' factors no longer have the i.i.d. stds: spreads from the factors, as from_dense
            self.posterior.reset_(list(self.factors))
        if method is not None:
            self.prior = get_prior(prior, **(prior_kwargs or {}))
            lam_dtype = torch.float32 if factory["dtype"] in (torch.float16, torch.bfloat16) else factory["dtype"]
            with torch.no_grad():
                energy, count = (s.to(lam_dtype) for s in self.flat_rank_statistics())
                self.reset_prior_reference_(energy, count)
                init = self.prior.map_update(energy, count).split(self.ranks)
            for b, lam in enumerate(init):
                if rank_update == "em":
                    self.register_buffer(f"rank_variance_{b}", lam.clone())
                else:
                    self.register_parameter(f"log_rank_variance_{b}", nn.Parameter(lam.log()))
            self._lambda_versions = self._versions()  # λ is the M-step value of these factors

    @torch.no_grad()
    def _rescale_to_std_(self, target_std: float, *, only: int | None = None) -> None:
        """Scale the factors so the drawn weight's RMS is exactly ``target_std``.

        The i.i.d. factor stds give the right variance only in expectation: a product of several
        random cores has a heavy-tailed norm, and one draw of a 6-core TT can land at half the
        target. Rescaling each of the ``F`` factors by ``(target / rms)^{1/F}`` fixes the draw;
        ``only=k`` puts the whole ``target / rms`` on factor ``k`` instead (the root of isometric frames).
        """
        if self.factors[0].is_meta:
            return
        rms = self.weight_rms()
        if rms > 0 and target_std > 0:
            if only is not None:
                self.factors[only].mul_(target_std / rms)
                return
            c = (target_std / rms) ** (1.0 / len(self.factors))
            for f in self.factors:
                f.mul_(c)

    # ------------------------------------------------------------------ shapes and counts
    @property
    def num_bonds(self) -> int:
        """Number of bonds."""
        return len(self.ranks)

    def n_params(self) -> int:
        """Stored parameters of the factors (means only; variational scales are not needed to run)."""
        return sum(p.numel() for p in self.factors)

    def init_from_matrix_(self, matrix: Tensor, *, init: str = "decompose", n_iter: int = 200) -> float:
        """Start from the dense ``matrix``: ``"decompose"``, ``"random"`` or ``"frames"`` (see :mod:`.init`).

        Returns the relative error ``‖W − Ŵ‖_F / ‖W‖_F`` of this tensor against ``matrix``.
        """
        from .init import init_from_matrix_

        return init_from_matrix_(self, matrix, init=init, n_iter=n_iter)

    # ------------------------------------------------------------------ factors
    def tensors(self) -> list[Tensor]:
        """The factors to compute with: a draw of the posterior when sampling, else the means."""
        means = list(self.factors)
        if self.posterior.stochastic and (self.training or self.sample_in_eval):
            return self.posterior.sample(means)
        return means

    def to_matrix(self) -> Tensor:
        """The dense (padded) matrix ``(prod(out_shape), prod(in_shape))`` of the posterior-mean factors."""
        return reconstruct_matrix(self.fmt.name, list(self.factors), self.out_shape, self.in_shape, tuple(self.ranks))

    @torch.no_grad()
    def weight_rms(self) -> float:
        """Root mean square of the (padded) matrix's entries, ``‖W‖_F / √(M N)``, computed without forming ``W``."""
        factors = [f.to(torch.float64) for f in self.factors]  # small tensors; no overflow in bf16 or fp16
        sq = squared_norm(self.fmt.name, factors, self.out_shape, self.in_shape, tuple(self.ranks))
        return math.sqrt(max(float(sq), 0.0) / (math.prod(self.out_shape) * math.prod(self.in_shape)))

    def rank_variances(self) -> list[Tensor]:
        """``λ`` per bond (empty for ``method=None``)."""
        if self.method is None:
            return []
        if self.rank_update == "em":
            return [getattr(self, f"rank_variance_{b}") for b in range(self.num_bonds)]
        return [getattr(self, f"log_rank_variance_{b}").exp() for b in range(self.num_bonds)]

    # ------------------------------------------------------------------ Bayesian terms
    def statistics_layout(self) -> StatisticsLayout:
        """The cached layout of the rank statistics at the current ranks (:mod:`.statistics`)."""
        return statistics_layout(self.fmt.name, self.out_shape, self.in_shape, tuple(self.ranks))

    def flat_rank_statistics(self) -> tuple[Tensor, Tensor]:
        """``M`` and ``D`` of all bonds in one vector each, bond after bond (:mod:`.statistics`)."""
        return rank_energies(self.statistics_layout(), self.posterior.second_moments(list(self.factors)))

    def rank_statistics(self) -> tuple[list[Tensor], list[Tensor]]:
        """Per bond, ``M_r = Σ E_q[w²]`` and ``D_r`` over the slices that bond's ``λ_r`` governs."""
        energy, count = self.flat_rank_statistics()
        return list(energy.split(self.ranks)), list(count.split(self.ranks))

    @property
    def scale_free(self) -> bool:
        """Whether the prior ignores the factors' overall scale (the prior's ``scale_free=1``; :meth:`prior_loss`)."""
        return self.method is not None and "scale_free" in self.prior._buffers  # only registered when 1

    @property
    def scale_floor(self) -> float:
        """``φ`` of the prior's ``scale_floor`` (``0`` when it has none; :meth:`prior_loss`)."""
        return float(getattr(self.prior, "scale_floor", 0.0)) if self.method is not None else 0.0

    @property
    def scale_relative(self) -> bool:
        """Whether the prior measures the overall scale against a reference (``scale_free`` or a scale floor > 0).

        Decided by the presence of the buffer ``prior_reference``, not by reading a value, so
        the prior's hot path has no data-dependent branch (``torch.compile``).
        """
        return "prior_reference" in self._buffers

    @staticmethod
    def _mean_energy(energy: Tensor, count: Tensor) -> Tensor:
        """``ε = Σ_r M_r / Σ_r D_r``: the mean second moment of the governed entries, over all bonds."""
        return energy.sum() / count.sum()

    def _mean_square_weight(self, dtype: torch.dtype) -> Tensor:
        """``‖W‖_F² / (M N)`` of the posterior-mean factors in ``dtype``, differentiable, without forming ``W``."""
        factors = [f.to(dtype) for f in self.factors]
        sq = squared_norm(self.fmt.name, factors, self.out_shape, self.in_shape, tuple(self.ranks))
        return sq / (math.prod(self.out_shape) * math.prod(self.in_shape))

    @torch.no_grad()
    def reset_prior_reference_(self, energy: Tensor, count: Tensor) -> None:
        """Take the current factors as the start the prior measures the overall scale against (``prior_reference``).

        ``ε_0`` (:meth:`_mean_energy` of ``energy`` and ``count``) for ``scale_free``, the mean
        square weight for ``scale_floor``; nothing for a fixed-scale prior. Called when the
        factors are drawn and again when they are decomposed from a dense weight.
        """
        if self.scale_free:
            value = self._mean_energy(energy, count)
        elif self.scale_floor > 0:
            value = self._mean_square_weight(energy.dtype)
        else:
            return
        if self.scale_relative:
            self.prior_reference.copy_(value)
        else:
            self.register_buffer("prior_reference", value)

    def _floor_key(self, versions: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """What the floor's ratio depends on: the factors' :meth:`_versions` (unless given) and the floor's buffers."""
        versions = self._versions() if versions is None else versions
        return versions + (self.prior_reference._version, self.prior.scale_floor._version)

    def _known_above_floor(self) -> bool:
        """Whether the last M-step found ``w̄² > φ² w̄_0²`` at exactly these parameters (eager, CPU only).

        Then ``ρ = 1`` and ``∂ρ/∂W = 0`` (the clamp is inactive), so :meth:`_prior_statistics`
        returns the same value and gradient without contracting ``‖W‖`` again. The memo is
        written only by :meth:`update_rank_variances_`, never by evaluating the loss.
        """
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return False  # checked first: a traced read of the memo would guard on it and recompile as it moves
        memo = getattr(self, "_above_floor", None)
        return memo is not None and memo == self._floor_key()

    def _prior_statistics(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``M``, ``D`` (:meth:`flat_rank_statistics` in ``dtype``, ``λ``'s), scale-free ``log(ε/ε_0)``, floor ratio.

        With a scale-free prior ``M`` is rescaled to ``M / ρ``, ``ρ = ε / ε_0``, and the log ratio
        is returned for the entropy's correction; with a scale floor ``φ`` to ``M / ρ``,
        ``ρ = min(1, w̄² / (φ² w̄_0²))^{1/F}`` (``w̄²`` the mean square weight of the posterior mean,
        ``F`` factors), and the log ratio is ``None``, as it is without either. The last item is
        ``w̄² / (φ² w̄_0²)`` where it was computed (``None`` without a floor, or when
        :meth:`_known_above_floor` made computing it unnecessary).
        """
        energy, count = (s.to(dtype) for s in self.flat_rank_statistics())
        if not self.scale_relative:
            return energy, count, None, None
        if self.scale_free:
            ratio = self._mean_energy(energy, count) / self.prior_reference.to(dtype)
            return energy / ratio, count, ratio.log(), None
        if self._known_above_floor():
            return energy, count, None, None
        # fixed-scale above the floor, scale-free below it; the gradient goes through W's norm itself (through the
        # factors' mean energy instead, the prior can still shrink W along directions that keep that energy)
        tiny = torch.finfo(dtype).tiny  # a layer that started (or is) all zero: no NaN, the floor has no effect
        floor = (self.prior.scale_floor.to(dtype) ** 2 * self.prior_reference.to(dtype)).clamp_min(tiny)
        below = self._mean_square_weight(dtype) / floor
        return energy / below.clamp(min=tiny, max=1.0) ** (1.0 / len(self.factors)), count, None, below

    def prior_loss(self) -> Tensor:
        r"""``−log p(W, λ)`` (MAP) or ``KL(q ‖ p(W | λ)) − log p(λ)`` (SVI), in nats; all bonds in one expression.

        .. math::

            \mathcal{R} = \sum_r \Big[\frac{M_r}{2λ_r} + \frac{D_r}{2}\log(2πλ_r) - \log p(λ_r)\Big] - H[q],

        with ``M_r = Σ E_q[w²]`` over the ``D_r`` entries that ``λ_r`` governs. **Scale-free prior**
        (``prior_kwargs={"scale_free": 1}``): the data fix the factors' overall scale and the prior
        only their relative sizes. With ``ε = Σ_r M_r / Σ_r D_r`` and ``ε_0`` its value when the
        factors were drawn or decomposed (the buffer ``prior_reference``), ``M_r`` becomes ``M_r ε_0 / ε`` and
        ``(n_q / 2) log(ε / ε_0)`` is added, ``n_q`` the number of entries with a posterior spread
        (0 for MAP), so that :math:`\mathcal{R}` is unchanged when every factor mean and posterior
        std is multiplied by the same ``α``. Where the task loss does not fix the scale either
        (a layer followed by batch norm), the fixed-scale prior drags the whole layer towards zero
        (its pull ``β D / (N s)`` grows as the layer shrinks); the scale-free one does not, and
        equals the fixed-scale one wherever ``ε = ε_0``. **Scale floor** (``prior_kwargs=
        {"scale_floor": φ}``): the same with ``ε / ε_0`` replaced by
        ``ρ = min(1, w̄² / (φ² w̄_0²))^{1/F}``, where ``w̄²`` is the mean square entry of ``W`` (posterior
        mean, computed without forming ``W``), ``w̄_0²`` its value at the start (``prior_reference``)
        and ``F`` the number of factors (``W → α W`` when each factor is scaled by ``α^{1/F}``, which
        scales ``ε`` by ``α^{2/F}``). So the prior is the fixed-scale one while the weight's RMS is at
        least ``φ`` of its start's and scale-free below: it can still prune components (their
        relative sizes) but no longer rewards shrinking the whole layer, which bounds joint MAP in
        that direction. The floor is measured on ``W`` because ``ε`` also moves with the gauge
        (cores rescaled against each other at a fixed ``W``), and ``ρ``'s gradient is taken through
        ``W``'s norm too: through ``ε`` the prior could still shrink ``W`` along directions that keep
        ``ε`` (one core shrinking while others grow). SVI gets no entropy correction for the floor:
        ``ρ`` sees only the means, so a ``log ρ`` term would reward means shrinking under fixed
        stds; without it, ``M / ρ`` (whose ``M`` holds the
        variances) grows as the means shrink below the floor, which pushes them back.
        """
        if self.method is None:
            return self.factors[0].new_zeros(())
        lam = torch.cat(self.rank_variances())
        energy, count, log_ratio, _ = self._prior_statistics(lam.dtype)
        if lam.requires_grad:  # rank_update="gradient": λ is learned through this term
            total = (energy / (2 * lam) + 0.5 * count * torch.log(2 * math.pi * lam)).sum()
            total = total - self.prior.log_prob(lam).sum()
        else:  # λ is a buffer (the M-step's): its terms are constants of the loss and need no graph
            with torch.no_grad():
                weight = 0.5 / lam
                const = (0.5 * count * torch.log(2 * math.pi * lam)).sum() - self.prior.log_prob(lam).sum()
            total = torch.dot(energy, weight) + const  # Σ_r M_r / (2 λ_r) + Σ_r [D_r/2 log 2πλ_r − log p(λ_r)]
        if log_ratio is not None:
            spread = sum(p.numel() for plist in self.posterior.factor_parameters() for p in plist)
            total = total + 0.5 * spread * log_ratio
        return total - self.posterior.entropy(list(self.factors)).to(total.dtype)

    def _versions(self) -> tuple[int, ...]:
        """Version counters of the factors and posterior parameters: they change with every in-place update."""
        # read from the lists' parameter dicts: a ParameterList's own iteration costs ~20x as much, and this runs
        # several times per training step
        lists = (self.factors, *self.posterior.factor_parameters())
        params = [p for plist in lists for p in plist._parameters.values()]
        return tuple(id(p) for p in params) + tuple(p._version for p in params)

    def rank_variances_are_current(self) -> bool:
        """Whether ``λ`` has had its M-step since the factors last changed (always true without an M-step)."""
        if self.method is None or self.rank_update != "em":
            return True
        return getattr(self, "_lambda_versions", None) == self._versions()

    @torch.no_grad()
    def refresh_rank_variances_(self) -> bool:
        """Run :meth:`update_rank_variances_` unless it already ran for the current factors.

        This is what makes the M-step happen once per optimizer step however often the loss is
        evaluated: the factors' version counters change only when they are updated in place
        (an optimizer step, pruning, loading). Returns whether it ran.
        """
        if self.rank_variances_are_current():
            return False
        self.update_rank_variances_()
        return True

    def rank_variance_update(self) -> list[Tensor]:
        """The M-step's new ``λ`` per bond, ``(1−ρ) λ + ρ argmax_λ``, from the current ``E_q[w²]``; changes nothing.

        A pure function of the factors and ``λ`` (``rank_update="em"`` only), so it also runs
        under ``torch.func.vmap`` over the particles of an ensemble.
        """
        return self._rank_variance_update()[0]

    def _rank_variance_update(self) -> tuple[list[Tensor], Tensor | None]:
        """:meth:`rank_variance_update` and the scale floor's ratio it computed on the way (or ``None``)."""
        lam = torch.cat(self.rank_variances())
        energy, count, _, below = self._prior_statistics(lam.dtype)
        target = self.prior.map_update(energy, count)
        new = ((1.0 - self.em_step) * lam + self.em_step * target).clamp_min(torch.finfo(lam.dtype).tiny ** 0.5)
        return list(new.split(self.ranks)), below

    @torch.no_grad()
    def update_rank_variances_(self) -> None:
        """Closed-form M-step ``λ ← (1−ρ) λ + ρ argmax_λ``, from the current ``E_q[w²]``.

        It also notes whether the layer is above its scale floor at these parameters
        (:meth:`_known_above_floor`; on CPU, where reading the ratio costs no device sync).
        """
        if self.method is None or self.rank_update != "em":
            return
        self._lambda_versions = versions = self._versions()
        self._above_floor = None  # the previous step's: computing the ratio afresh is what this step is for
        new, below = self._rank_variance_update()
        for lam, value in zip(self.rank_variances(), new, strict=True):
            lam.copy_(value)
        if below is not None:  # a margin over 1: the loss's own ratio may differ from this one by rounding
            clear = below.device.type == "cpu" and below.numel() == 1 and float(below) > 1.0 + 1e-6
            self._above_floor = self._floor_key(versions) if clear else None

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def contributions(self) -> list[Tensor]:
        r"""Per bond, the size of the term of the weight that each rank index carries.

        On a tree network (TT, TTM, Tucker) ``c_r = ‖L_{:,r}‖ ‖R_{:,r}‖``, the Frobenius norm of the
        rank-one term ``L_{:,r} R_{:,r}ᵀ`` that index ``r`` adds to the weight's unfolding at the
        bond, ``L`` and ``R`` the contractions of the bond's two sides
        (:mod:`~bayestensor.tensors.canonical`): removing index ``r`` alone changes ``W`` by exactly
        ``c_r``, in any gauge. For CP's hyperedge it is the component's Frobenius norm
        ``Π_n ‖u_{n,r}‖``. (The product of the slice norms next to a tree bond equals ``c_r`` only
        when everything beyond them is orthonormal; on a planted TT case it put components that
        carry under ``5e-5`` of the largest at 0.1–0.8 % of it, above the pruning threshold.)
        """
        groups = self.fmt.rank_groups(self.out_shape, self.in_shape, self.ranks)
        factors = [g.detach().to(torch.float64) for g in self.factors]
        sides = side_triangles(factors, groups)
        if sides is not None:
            return [ta.norm(dim=0) * tb.norm(dim=0) for ta, tb in sides]
        out = []
        for group in groups:
            c = torch.ones(self.ranks[group.bond], dtype=torch.float64, device=self.factors[0].device)
            for f, axis in group.members:
                c = c * slice_sums(factors[f].square(), axis).sqrt()
            out.append(c)
        return out

    def active_masks(self, threshold: float = DEFAULT_PRUNE_THRESHOLD, *, by_noise: bool = True) -> list[Tensor]:
        r"""Per bond, the active rank indices: ``c_r ≥ threshold · max_r c_r`` (:meth:`contributions`).

        The threshold is relative, hence scale-free; at least one index per bond (its largest) is kept.
        Under a posterior with spread, index ``r`` must also stand out of its noise on every member
        slice: ``min_k ‖μ_{k,r}‖² / Σ σ_{k,r}² ≥`` :data:`MIN_SIGNAL_TO_NOISE` ``= 1``
        (:meth:`~bayestensor.tensors.posteriors.Posterior.signal_to_noise`), the group form of the
        pruning rule of variational dropout (``log α = log σ²/μ² ≤ 0``). A component the data do not
        support keeps its posterior at about the prior's ``N(0, λ_r)``, and the noise of its draws
        keeps its mean from settling at zero, so under SVI such components can sit above
        ``threshold`` (0.2–2 % of the largest on surplus TT bonds of the planted sweep, by the earlier
        neighbour-product ``c_r``) while their means are within their spread (ratio 0.01–0.97 there,
        against ≥ 4.9 for the planted ones).
        ``by_noise=False`` leaves that second rule out (:class:`~bayestensor.ARD` does during its KL
        warm-up, when the spread is not yet the posterior's).
        """
        groups = self.fmt.rank_groups(self.out_shape, self.in_shape, self.ranks)
        masks = []
        for group, c in zip(groups, self.contributions(), strict=True):
            mask = c >= threshold * c.max()
            if by_noise and self.posterior.stochastic:
                ratios = [self.posterior.signal_to_noise(list(self.factors), f, axis) for f, axis in group.members]
                mask &= torch.stack(ratios).min(0).values.to(mask.device) >= MIN_SIGNAL_TO_NOISE
            mask[c.argmax()] = True
            masks.append(mask)
        return masks

    def active_ranks(self, threshold: float = DEFAULT_PRUNE_THRESHOLD) -> list[int]:
        """Number of active rank indices per bond."""
        return [int(m.sum()) for m in self.active_masks(threshold)]

    @torch.no_grad()
    def truncate_(self, keep: Sequence[Tensor], optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Physically keep only rank indices ``keep[b]`` of every bond ``b``.

        Factors, the posterior's factor-shaped parameters and rank variances are replaced by smaller tensors. When
        ``optimizer`` is given its parameter references and per-parameter state (e.g. Adam's
        moments) are truncated the same way, so training continues with the same optimizer.
        Returns whether anything changed.
        """
        keep = [k.to(self.factors[0].device) for k in keep]
        if all(len(k) == r for k, r in zip(keep, self.ranks, strict=True)):
            return False
        per_factor: dict[int, list[tuple[int, Tensor]]] = {}
        for group in self.fmt.rank_groups(self.out_shape, self.in_shape, self.ranks):
            for f, axis in group.members:
                per_factor.setdefault(f, []).append((axis, keep[group.bond]))

        def cut(t: Tensor, f: int) -> Tensor:
            for axis, idx in per_factor.get(f, []):
                t = t.index_select(axis, idx)
            return t.contiguous()

        lists = [self.factors, *self.posterior.factor_parameters()]
        for plist in lists:
            for f in range(len(plist)):
                old = plist[f]
                new = nn.Parameter(cut(old.detach(), f), requires_grad=old.requires_grad)
                if optimizer is not None:
                    remap_parameter(optimizer, old, new, lambda t, f=f: cut(t, f))
                plist[f] = new
        for b, idx in enumerate(keep):
            if self.method is None:
                continue
            if self.rank_update == "em":
                setattr(self, f"rank_variance_{b}", getattr(self, f"rank_variance_{b}").index_select(0, idx))
            else:
                old = getattr(self, f"log_rank_variance_{b}")
                new = nn.Parameter(old.detach().index_select(0, idx))
                if optimizer is not None:
                    remap_parameter(optimizer, old, new, lambda t, idx=idx: t.index_select(0, idx))
                setattr(self, f"log_rank_variance_{b}", new)
        self.ranks = [len(k) for k in keep]
        return True

    @torch.no_grad()
    def regauge_(self, optimizer: torch.optim.Optimizer | None = None, optimizer_state: str = "reset") -> None:
        r"""Rotate every two-member bond into its SVD basis without changing the represented weight.

        A bond shared by exactly two factors (TT/TTM neighbours, a Tucker factor and the core)
        has a gauge freedom ``A B = (A T)(T^{-1} B)``. With ``A = Q_a R_a`` and ``Bᵀ = Q_b R_b``
        and ``R_a R_bᵀ = U S Vᵀ``, the choice ``T = R_a^{-1} U S^{1/2} κ_a`` makes both sides carry
        ``S^{1/2}`` on orthogonal slices (times ``κ_a`` and ``κ_b = 1/κ_a``), so each rank index holds one
        singular direction and the per-index ARD variances can switch off the weak ones; a per-index
        prior cannot break the rotation symmetry between indices on its own. ``κ`` is the posterior's
        :meth:`~bayestensor.tensors.posteriors.Posterior.gauge_split` for the slices' entry counts
        (``1`` for a point mass; ``(m/n)^{±1/4}`` for a spread posterior, whose objective balances the
        second moment per entry: split by the point mass's rule, a Tucker SVI run's factor scales
        grew pass after pass until the weight collapsed). A bond of rank ``r`` wider than one side's
        unfolding (``m < r`` or ``n < r``, as after a neighbouring bond was pruned) holds at most
        ``p = min(m, n, r)`` singular directions; its indices ``p..r-1`` become exactly zero, and
        pruning removes them. So do singular directions below the factors' rounding,
        ``s_i ≤ ε · max(m, n, r) · s_1`` (``ε`` of the factors' dtype), as in a decomposed weight of
        lower rank than the bond: ``R_a`` and ``R_b`` are inverted only on the directions above it (their
        inverse on rounding noise scaled the posterior's spread by up to ``1/ε``). The posterior
        follows the same linear map (:meth:`~bayestensor.tensors.posteriors.Posterior.rotate_`).
        The optimizer state of the rotated factors is dropped (``optimizer_state="reset"``), or carried
        over, mapped as their gradients map (``"transport"``,
        :func:`~bayestensor.tensors.optimizer_state.transport_gradient_state_`: ``M_a = T_bᵀ``, ``M_b = T_a``).
        """
        dtype = torch.float64
        check_optimizer_state(optimizer_state)
        transport = optimizer is not None and optimizer_state == "transport"
        groups = self.fmt.rank_groups(self.out_shape, self.in_shape, self.ranks)
        # a bond's two sides, contracted: a gauge change elsewhere leaves them unchanged (optimizer state below)
        sides = side_triangles([g.detach().to(dtype) for g in self.factors], groups) if transport else None
        for group in groups:
            if len(group.members) > 2:
                self._balance_(group.members, optimizer, transport)
                continue
            (fa, aa), (fb, ab) = group.members
            ga, gb = self.factors[fa], self.factors[fb]
            r = ga.shape[aa]
            a = ga.movedim(aa, -1).reshape(-1, r).to(dtype)  # (m, r)
            b = gb.movedim(ab, 0).reshape(r, -1).to(dtype)  # (r, n)
            _, ra = torch.linalg.qr(a)  # (k, r), k = min(m, r)
            _, rb = torch.linalg.qr(b.T)  # (l, r), l = min(n, r)
            u, s, vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)  # min(k, l) singular values
            # directions below the factors' own rounding are zero (docstring)
            tol = torch.finfo(ga.dtype).eps * max(a.shape[0], b.shape[1], r)
            p = max(1, int((s > s[0] * tol).sum()))
            u, s, vh = u[:, :p], s[:p], vh[:p]
            root = s.sqrt()
            split_a, split_b = self.posterior.gauge_split([a.shape[0], b.shape[1]])
            ta = a.new_zeros(r, r)  # indices p.. of a bond wider than a side's unfolding carry nothing
            tb = a.new_zeros(r, r)
            ta[:, :p] = torch.linalg.pinv(ra, rtol=tol) @ (u * (root * split_a))  # (r, p)
            tb[:p] = ((root * split_b)[:, None] * vh) @ torch.linalg.pinv(rb.T, rtol=tol)  # (p, r)
            new_a = (a @ ta).reshape(*ga.movedim(aa, -1).shape).movedim(-1, aa)
            new_b = (tb @ b).reshape(*gb.movedim(ab, 0).shape).movedim(0, ab)
            self.posterior.rotate_(fa, aa, ta, leading=False)
            self.posterior.rotate_(fb, ab, tb, leading=True)
            ga.copy_(new_a.to(ga.dtype))
            gb.copy_(new_b.to(gb.dtype))
            if transport:  # ∂L/∂(A T_a) = ∂L/∂A T_bᵀ, ∂L/∂(T_b B) = T_aᵀ ∂L/∂B
                side_a, side_b = sides[group.bond]  # a side's gradient is correlated as the other side's columns
                self._carry_optimizer_state_(optimizer, fa, aa, tb.T, gram=side_b.T @ side_b)
                self._carry_optimizer_state_(optimizer, fb, ab, ta, gram=side_a.T @ side_a)
            elif optimizer is not None:
                self._reset_optimizer_state_(optimizer, (fa, fb))
        self.update_rank_variances_()

    def _balance_(
        self, members: Sequence[tuple[int, int]], optimizer: torch.optim.Optimizer | None, transport: bool = False
    ) -> None:
        """Rescale the slices of a hyper-edge bond (CP) so member ``k`` carries ``c_r^{1/n} κ_k``; ``W`` is unchanged.

        ``κ_k`` from :meth:`~bayestensor.tensors.posteriors.Posterior.gauge_split` (``1`` for a point mass).
        """
        norms = []
        for f, axis in members:
            g = self.factors[f]
            norms.append(slice_sums(g.square(), axis).sqrt())
        total = torch.stack(norms).prod(0)
        alive = total > 0
        target = total.pow(1.0 / len(members))
        entries = [self.factors[f].numel() // self.factors[f].shape[axis] for f, axis in members]
        splits = self.posterior.gauge_split(entries)
        for (f, axis), norm, split in zip(members, norms, splits, strict=True):
            scale = torch.where(
                alive, target * split / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.ones_like(norm)
            )
            shape = [1] * self.factors[f].dim()
            shape[axis] = -1
            self.factors[f].mul_(scale.view(shape))
            self.posterior.rescale_(f, axis, scale)
            if transport:  # the slice's gradient scales by 1 / scale
                self._carry_optimizer_state_(optimizer, f, axis, torch.diag(1.0 / scale))
            elif optimizer is not None:
                self._reset_optimizer_state_(optimizer, (f,))

    def _carry_optimizer_state_(
        self, optimizer: torch.optim.Optimizer, f: int, axis: int, mix: Tensor, gram: Tensor | None = None
    ) -> None:
        """Map factor ``f``'s optimizer state as its gradient maps along ``axis`` (``g' = g ×_axis mix``).

        See :mod:`~bayestensor.tensors.optimizer_state`. The state of the posterior's parameters shaped like
        the factor (an SVI spread) is dropped: the posterior's own gauge map is not linear in them.
        """
        transport_gradient_state_(optimizer, self.factors[f], axis, mix, gram)
        for plist in self.posterior.factor_parameters():
            optimizer.state.pop(plist[f], None)

    def _reset_optimizer_state_(self, optimizer: torch.optim.Optimizer, factors: Sequence[int]) -> None:
        """Drop the optimizer state of factors ``factors`` and of the posterior's parameters shaped like them."""
        for plist in (self.factors, *self.posterior.factor_parameters()):
            for f in factors:
                optimizer.state.pop(plist[f], None)

    @torch.no_grad()
    def merge_components_(
        self,
        max_change: float = DEFAULT_PRUNE_THRESHOLD,
        optimizer: torch.optim.Optimizer | None = None,
        restarts: int = 0,
        *,
        by_noise: bool = False,
    ) -> bool:
        """CP only: re-express ``W`` with fewer components when an ALS refit changes it by at most ``max_change``.

        The CP counterpart of :meth:`regauge_` (see :func:`~bayestensor.tensors.decompose.cp_merge`):
        a degenerate CP fit, whose surplus components cancel each other, is replaced by the fewest
        components that reproduce ``W`` within ``max_change`` relative (Frobenius; ALS from the largest
        components, the HOSVD start and ``restarts`` seeded random ones, the latter only when
        ``R · Π I_n ≤`` :data:`MERGE_RESTART_MAX_ENTRIES`). With ``by_noise``, under a posterior with
        spread, the allowed change is the larger of ``max_change`` and the posterior's own spread of
        ``W``, ``sqrt(E_q‖W − W̄‖²) / ‖W̄‖`` (:func:`~bayestensor.tensors.decompose.cp_spread`): a refit
        that moves the mean by less than a typical draw moves it is as plausible under ``q`` as the mean.
        This is the merge's counterpart of :meth:`active_masks`' signal-to-noise rule. A mean-field
        posterior over CP factors can hold a rank-4 weight in 8 large components, every one far out of
        its own noise (planted sweep, seed 29004: relative spread 0.43 %, and the rank-5 refit, 0.30 %
        away, is nearer the planted weight than the mean is). The kept
        indices' posterior parameters and ``λ`` stay; their means are the refit, and the
        optimizer state of the factors is reset. Skipped (returns ``False``) for other formats, for
        ``method=None`` and when ``R · Π I_n`` exceeds :data:`MERGE_MAX_ENTRIES` (``W`` is formed).
        Returns whether the rank fell.
        """
        modes = math.prod(self.out_shape) * math.prod(self.in_shape)
        if self.fmt.name != "cp" or self.method is None or self.ranks[0] * modes > MERGE_MAX_ENTRIES:
            return False
        restarts = restarts if self.ranks[0] * modes <= MERGE_RESTART_MAX_ENTRIES else 0
        if by_noise and self.posterior.stochastic:
            means = list(self.factors)
            max_change = max(max_change, cp_spread(means, self.posterior.second_moments(means)))
        merged = cp_merge(list(self.factors), max_change, restarts=restarts)
        if merged is None:
            return False
        keep, fit = merged
        self.truncate_([torch.tensor(keep, dtype=torch.long, device=self.factors[0].device)], optimizer)
        for p, f in zip(self.factors, fit, strict=True):
            p.copy_(f.to(p))
        if optimizer is not None:
            self._reset_optimizer_state_(optimizer, range(len(self.factors)))
        self.update_rank_variances_()
        return True

    def prune_(
        self,
        threshold: float = DEFAULT_PRUNE_THRESHOLD,
        optimizer: torch.optim.Optimizer | None = None,
        regauge: bool = True,
        optimizer_state: str = "reset",
    ) -> tuple[list[int], list[int]]:
        """Remove inactive rank indices (see :meth:`active_masks`); returns ``(old_ranks, new_ranks)``.

        With ``regauge`` (default), bonds are first rotated into their SVD basis
        (:meth:`regauge_`), which leaves the weight unchanged, and a CP tensor's components are
        merged (:meth:`merge_components_`, changing ``W`` by at most ``threshold`` relative);
        ``optimizer_state`` as in :meth:`regauge_`.
        """
        old = list(self.ranks)
        if self.method is not None and regauge:
            self.regauge_(optimizer, optimizer_state)
            self.merge_components_(threshold, optimizer, by_noise=True)
        keep = [m.nonzero().flatten() for m in self.active_masks(threshold)]
        self.truncate_(keep, optimizer)
        return old, list(self.ranks)

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,  # noqa: D102
        unexpected_keys,
        error_msgs,
    ):
        for key in [k for k in state_dict if k.startswith(f"{prefix}raw_scales.")]:
            # checkpoints from before the posterior objects kept the SVI scales on the tensor itself
            state_dict[f"{prefix}posterior.{key[len(prefix) :]}"] = state_dict.pop(key)
        if self.method is not None:
            self._match_prior_reference(state_dict, prefix)
        shapes = [
            state_dict[k].shape for k in (f"{prefix}factors.{f}" for f in range(len(self.factors))) if k in state_dict
        ]
        if len(shapes) == len(self.factors) and any(
            tuple(s) != tuple(p.shape) for s, p in zip(shapes, self.factors, strict=True)
        ):
            # a pruned checkpoint: shrink this module to its ranks before loading the values
            metas = [torch.empty(s, device="meta") for s in shapes]
            try:
                ranks = self.fmt.validate(metas, self.out_shape, self.in_shape)
            except ValueError as err:
                error_msgs.append(
                    f"{prefix[:-1] or 'tensor'}: the checkpoint's factors {[tuple(s) for s in shapes]} are not a "
                    f"{self.fmt.name!r} tensor of out_shape={self.out_shape}, in_shape={self.in_shape} ({err}); was "
                    "it saved from a model of another format or shape?"
                )
                return
            if any(r > c for r, c in zip(ranks, self.ranks, strict=True)):
                error_msgs.append(
                    f"{prefix[:-1] or 'tensor'}: checkpoint ranks {ranks} exceed this model's ranks {self.ranks}"
                )
                return
            self.truncate_([torch.arange(r) for r in ranks])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _match_prior_reference(self, state_dict: dict, prefix: str) -> None:
        """Give this tensor a ``prior_reference`` exactly when the checkpoint has one.

        A checkpoint saved before the scale floor existed (no ``prior.scale_floor``, no
        ``prior.scale_free``) was trained with the fixed-scale prior, so it loads with the floor
        at 0 and keeps training as it did; a checkpoint whose floor is 0 has no reference.
        """
        floor_key, ref_key = f"{prefix}prior.scale_floor", f"{prefix}prior_reference"
        if floor_key not in state_dict and f"{prefix}prior.scale_free" not in state_dict and not self.scale_free:
            state_dict[floor_key] = torch.zeros((), dtype=torch.float64)
        if ref_key in state_dict and not self.scale_relative:
            self.register_buffer("prior_reference", torch.empty_like(state_dict[ref_key]))
        elif ref_key not in state_dict and self.scale_relative:
            del self._buffers["prior_reference"]

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"format={self.fmt.name!r}, out_shape={self.out_shape}, in_shape={self.in_shape}, "
            f"ranks={self.ranks}, method={self.method!r}"
        )
