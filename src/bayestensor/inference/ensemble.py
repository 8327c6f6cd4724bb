r"""A posterior held as particles: ``P`` copies of one model whose parameters are stacked.

The posterior object of the samplers (:class:`~.svgd.SVGD`, :class:`~.sghmc.SGHMC`), kept apart
from the model as Pyro keeps guides apart from models. Every parameter and buffer of the model
is stored once with a leading particle axis, ``(P, *shape)``, and all particles run in one
vectorised call,

.. math::

    y_p = f(x; θ_p), \quad p = 1 … P, \qquad \text{as} \quad
    \texttt{vmap(functional\_call)}(f, θ_{1:P}, x),

so a particle costs what one model costs, without a Python loop over models. Each particle
keeps its own rank variances ``λ`` (stacked buffers), updated by the same closed-form M-step
as a single model (:meth:`Ensemble.update_rank_variances_`), and :meth:`Ensemble.prune_`
removes what is inactive in *every* particle, so the particles keep one shape.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..tensors import DEFAULT_PRUNE_THRESHOLD, FactorizedTensor, get_posterior
from .checks import held_by, number, positive_int
from .objective import bayesian_tensors
from .pruning import PruneReport, ranks, tensorized_layers

_SEP = "/"  # replaces "." in the stacked names (module attribute names cannot hold dots)


def _mangle(name: str) -> str:
    return name.replace(".", _SEP)


def _unmangle(name: str) -> str:
    return name.replace(_SEP, ".")


def _stack_outputs(outs: list[Any]) -> Any:
    """Stack per-particle outputs (tensors, or tuples/dicts of them) along a new leading axis."""
    first = outs[0]
    if isinstance(first, dict):
        return {k: _stack_outputs([o[k] for o in outs]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_stack_outputs(list(xs)) for xs in zip(*outs, strict=True))
    return torch.stack(outs)


def check_num_particles(value: Any, what: str = "num_particles") -> int:
    """``value`` as a particle count ``>= 1`` or a ``ValueError`` that names it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return value


def check_potential_args(num_data: Any, kl_weight: Any) -> tuple[int, float]:
    """``(N, β)`` of :meth:`Ensemble.potentials`, checked: ``N`` a positive int and ``β >= 0``."""
    return positive_int("num_data", num_data), number("kl_weight", kl_weight, low=0)


def check_temperature(temperature: Any) -> float:
    """A sampler's posterior temperature ``T``, checked: a finite number ``> 0`` (``1`` = the posterior)."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0 (1 = the posterior), got {temperature!r}")
    return float(temperature)


class _Call(nn.Module):
    """``fn(model, *args)`` as a module's forward, so :func:`torch.func.functional_call` can run any method."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any) -> Any:  # noqa: D102
        return self.fn(self.model, *args)


def _prior_of(model: nn.Module) -> Tensor:
    """``Σ`` of the Bayesian tensors' prior terms at their stored ``λ`` (pure: no M-step; at least one tensor)."""
    found = bayesian_tensors(model)
    return sum((t.prior_loss() for _, t in found), torch.zeros((), device=found[0][1].factors[0].device))


def _rank_variance_targets(model: nn.Module) -> dict[str, Tensor]:
    """``{buffer name: new λ}`` of the M-step of every ``rank_update="em"`` tensor (pure)."""
    out = {}
    for name, t in bayesian_tensors(model):
        if t.rank_update != "em":
            continue
        prefix = f"{name}." if name else ""
        for b, lam in enumerate(t.rank_variance_update()):
            out[f"{prefix}rank_variance_{b}"] = lam
    return out


@torch.no_grad()
def as_point_mass(model: nn.Module, *, sample: bool = False) -> nn.Module:
    """A copy of ``model`` whose SVI tensors became MAP ones: their means, or one draw of ``q`` with ``sample``."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, FactorizedTensor) and m.posterior.stochastic:
            if sample:
                for f, draw in zip(m.factors, m.posterior.sample(list(m.factors)), strict=True):
                    f.copy_(draw)
            m.method = "map"
            m.posterior = get_posterior("map")
            m.update_rank_variances_()
    return out


class Ensemble(nn.Module):
    """``P`` particles of one model architecture, run in one vectorised call.

    Parameters
    ----------
    models
        The particles: models of one architecture with parameters of equal shapes (at least one).
        SVI layers are not allowed (a particle is a point); use :meth:`clone`, which converts them.

    Attributes
    ----------
    particles
        The stacked parameters, ``(P, *shape)`` each, named like the model's with ``/`` for ``.``.
    vectorize
        ``True`` (default): all particles in one ``vmap(functional_call)``. ``False``: a loop of
        ``functional_call`` over the same stacked tensors, with the same results up to rounding (the
        prior and the ``λ`` M-step, which touch only the factors, stay one ``vmap`` call). On CPU
        (``benchmarks/svgd_step.py``, SVGD steps of 8 particles) ``vmap`` was 1.4x faster for a small FC
        net, the loop 1.2x faster for a larger one and 3.6x faster for a CNN, where ``vmap`` turns
        each convolution into a grouped one over strided memory.
    """

    vectorize: bool = True

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one particle, got 0 models")
        first = dict(models[0].named_parameters())
        for i, m in enumerate(models[1:], start=1):
            other = dict(m.named_parameters())
            if other.keys() != first.keys():
                raise ValueError(
                    f"particle {i} has parameters {sorted(other.keys() ^ first.keys())} that particle 0 "
                    "does not share; every particle must be the same architecture"
                )
            for name, p in other.items():
                if p.shape != first[name].shape:
                    raise ValueError(
                        f"particle {i}: parameter {name!r} has shape {tuple(p.shape)}, expected "
                        f"{tuple(first[name].shape)} as in particle 0"
                    )
        for m in models:
            if any(isinstance(t, FactorizedTensor) and t.posterior.stochastic for t in m.modules()):
                raise ValueError(
                    "a particle cannot hold SVI layers (method='svi'); build the ensemble with "
                    "Ensemble.clone(model, ...), which draws the particles from q"
                )
        self._restack(models)

    @classmethod
    def clone(cls, model: nn.Module, num_particles: int, *, jitter: float = 0.0, sample: bool = True) -> Ensemble:
        """``num_particles`` copies of ``model``, the start of a sampler from a MAP (or SVI) fit.

        Parameters
        ----------
        jitter
            Particles ``2 … P`` get every parameter entry perturbed by ``jitter · RMS(parameter)``
            times a standard normal draw (particle 1 stays the model itself). Identical particles
            feel no repulsion (the kernel's gradient vanishes between equal points), so SVGD
            from a MAP model needs ``jitter > 0``.
        sample
            For an SVI model: each particle is one draw of ``q`` (particle 1 its mean) instead of
            the mean for all.
        """
        check_num_particles(num_particles)
        number("jitter", jitter, low=0)
        models = [as_point_mass(model, sample=sample and i > 0) for i in range(num_particles)]
        with torch.no_grad():
            for m in models[1:]:
                if jitter > 0:
                    for p in m.parameters():
                        if p.requires_grad:  # a frozen part stays what the model had, in every particle
                            p.add_(jitter * p.square().mean().sqrt() * torch.randn_like(p))
                for _, t in bayesian_tensors(m):
                    t.update_rank_variances_()
        return cls(models)

    @classmethod
    def from_scratch(
        cls, build: Callable[[], nn.Module], num_particles: int, *, ranks: dict[str, list[int]] | None = None
    ) -> Ensemble:
        """``num_particles`` independently initialised models ``build()``, optionally at given ranks.

        Parameters
        ----------
        build
            Returns a fresh model (its own random initialisation) at every call.
        ranks
            ``{layer name: ranks}``, e.g. :func:`~bayestensor.ranks` of a model whose ranks ARD
            determined: every tensorized layer keeps its first ``ranks[name]`` components of each
            bond and is rescaled to the weight RMS of its initialisation, so a particle starts
            as a fresh draw at those ranks rather than a truncated, shrunken one.
        """
        check_num_particles(num_particles)
        models = [build() for _ in range(num_particles)]
        if ranks is not None:
            with torch.no_grad():
                for m in models:
                    layers = dict(tensorized_layers(m))
                    if set(ranks) != set(layers):
                        raise ValueError(f"ranks name the layers {sorted(ranks)}, the built model has {sorted(layers)}")
                    for name, layer in layers.items():
                        t = layer.weight
                        if len(ranks[name]) != t.num_bonds or any(
                            not 1 <= r <= c for r, c in zip(ranks[name], t.ranks, strict=True)
                        ):
                            raise ValueError(
                                f"layer {name!r}: expected ranks between 1 and {t.ranks} per bond, got {ranks[name]}"
                            )
                        rms = t.weight_rms()
                        t.truncate_([torch.arange(r, device=t.factors[0].device) for r in ranks[name]])
                        t._rescale_to_std_(rms)
                        t.update_rank_variances_()
        return cls(models)

    # ------------------------------------------------------------------ state
    def _restack(self, models: Sequence[nn.Module]) -> None:
        """Stack the particles' parameters and buffers into this module's tensors; the first becomes the template."""
        params, buffers = stack_module_state(list(models))
        self._set(copy.deepcopy(models[0]), params, buffers)

    def _set(self, base: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
        grads = {n: p.requires_grad for n, p in base.named_parameters()}
        self.__dict__["base"] = base  # the template run by functional_call; not a submodule
        self.particles = nn.ParameterDict(
            {_mangle(n): nn.Parameter(p.detach().clone(), requires_grad=grads[n]) for n, p in params.items()}
        )
        holder = nn.Module()
        for n, b in buffers.items():
            holder.register_buffer(_mangle(n), b.detach().clone())
        self.particle_buffers = holder

    @classmethod
    def from_stacked(cls, base: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Ensemble:
        """An ensemble from stacked ``(P, *shape)`` ``params`` and ``buffers`` (the model's names) of ``base``."""
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out._set(copy.deepcopy(base), params, buffers)
        return out

    @property
    def num_particles(self) -> int:
        """``P``."""
        return next(iter(self.particles.values())).shape[0]

    def stacked(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(parameters, buffers)`` under the model's own names, each ``(P, *shape)``."""
        params = {_unmangle(n): p for n, p in self.particles.items()}
        buffers = {_unmangle(n): b for n, b in self.particle_buffers.named_buffers()}
        return params, buffers

    def map_particles(self, fn: Callable[..., Any], *args: Any, vectorize: bool | None = None) -> Any:
        """``fn(model, *args)`` for every particle in one ``vmap(functional_call)``; outputs get a leading ``P`` axis.

        ``args`` are shared by all particles. ``fn`` must be a pure function of the model's
        parameters and buffers (it runs under :func:`torch.func.vmap`, randomness ``"different"``).
        ``vectorize`` overrides :attr:`vectorize` for this call (``None``: the attribute).
        """
        params, buffers = self.stacked()
        wrapper = _Call(self.base, fn)

        def one(p: dict[str, Tensor], b: dict[str, Tensor], *a: Any) -> Any:
            state = {f"model.{k}": v for k, v in p.items()} | {f"model.{k}": v for k, v in b.items()}
            return functional_call(wrapper, state, a, strict=False)

        if not (self.vectorize if vectorize is None else vectorize):
            # unbind: one backward op that stacks the particles' gradients, not P scatters into full-size zeros
            p_rows = {k: v.unbind(0) for k, v in params.items()}
            b_rows = {k: v.unbind(0) for k, v in buffers.items()}
            outs = [
                one({k: v[i] for k, v in p_rows.items()}, {k: v[i] for k, v in b_rows.items()}, *args)
                for i in range(self.num_particles)
            ]
            return _stack_outputs(outs)
        dims = (0, 0, *([None] * len(args)))
        return vmap(one, in_dims=dims, randomness="different")(params, buffers, *args)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Every particle's output on the same inputs, stacked: ``(P, *output_shape)``."""
        return self.map_particles(lambda m, *a: m(*a, **kwargs), *args)

    def prior_losses(self) -> Tensor:
        """``(P,)``: each particle's ``−log p(W, λ)`` at its stored ``λ`` (``prior_loss`` without the M-step).

        Always one ``vmap`` call, whatever :attr:`vectorize` says: the prior touches only the factors
        (no convolution), and a loop of ``P`` small-op walks costs several times more (FC model of
        ``benchmarks/svgd_step.py``: 11 against 4 ms).
        """
        if not bayesian_tensors(self.base):
            return next(iter(self.particles.values())).new_zeros(self.num_particles)
        return self.map_particles(_prior_of, vectorize=True)

    def potentials(self, losses: Tensor, *, num_data: int, kl_weight: float) -> Tensor:
        """``U_i = losses_i + β · prior_i / N``, ``(P,)``: ``−log p(θ_i | D) / N`` up to a constant at ``β = 1``.

        ``losses`` holds each particle's mean task loss on the batch; the samplers move along ``−∇U``.
        """
        p = self.num_particles
        if losses.shape != (p,):
            raise ValueError(
                f"losses must hold one mean task loss per particle, shape ({p},), got {tuple(losses.shape)}"
            )
        if kl_weight == 0:
            return losses
        return losses + kl_weight * self.prior_losses().to(losses.dtype) / num_data

    @torch.no_grad()
    def update_rank_variances_(self) -> None:
        """The closed-form ``λ`` M-step of every particle, in one ``vmap`` call (whatever :attr:`vectorize` says)."""
        if not any(t.rank_update == "em" for _, t in bayesian_tensors(self.base)):
            return
        for name, lam in self.map_particles(_rank_variance_targets, vectorize=True).items():
            getattr(self.particle_buffers, _mangle(name)).copy_(lam)

    @torch.no_grad()
    def load_optimizer_state_(
        self, target: torch.optim.Optimizer, source: torch.optim.Optimizer, model: nn.Module
    ) -> int:
        """Give every particle ``source``'s state for ``model``'s parameter of the same name, in ``target``.

        For an ensemble cloned from ``model`` (:meth:`clone`) this continues the optimizer that
        fitted it instead of starting a fresh one: a fresh Adam's first steps move every entry by
        about the learning rate whatever its gradient (``m̂ / √v̂ = ±1`` at step 1), which throws
        particles cloned from a MAP fit off it, while the fit's own moments scale each entry's step
        to its gradient's history. Every state tensor of the parameter's shape (Adam's moments,
        SGD's momentum buffer) is repeated along the particle axis; the ``"step"`` counter and
        other entries are copied. Parameters of ``model`` that ``source`` has no state for, or
        whose shape differs from the particles' (the ensemble was pruned), are left as they are.

        Parameters
        ----------
        target
            An optimizer over this ensemble's parameters (``self.parameters()``).
        source
            The optimizer that trained ``model``.
        model
            The model the particles were cloned from.

        Returns
        -------
        int
            How many of the particles' parameters received a state.
        """
        own = held_by(target)
        params, _ = self.stacked()
        done = 0
        for name, p in model.named_parameters():
            state = source.state.get(p)
            stacked = params.get(name)
            if not state or stacked is None or stacked.shape[1:] != p.shape:
                continue
            if id(stacked) not in own:
                raise ValueError(f"target does not optimise the particles' parameter {name!r}")
            target.state[stacked] = {
                k: v.unsqueeze(0).repeat(self.num_particles, *([1] * v.dim())).to(stacked.device)
                if isinstance(v, Tensor) and k != "step" and v.shape == p.shape
                else (v.clone() if isinstance(v, Tensor) else copy.deepcopy(v))
                for k, v in state.items()
            }
            done += 1
        return done

    def particle_models(self) -> list[nn.Module]:
        """The particles as ``P`` separate models (copies; changing them does not change the ensemble)."""
        params, buffers = self.stacked()
        out = []
        with torch.no_grad():
            for i in range(self.num_particles):
                m = copy.deepcopy(self.base)
                for name, value in (params | buffers).items():
                    owner, _, attr = name.rpartition(".")
                    getattr(m.get_submodule(owner), attr).copy_(value[i])
                out.append(m)
        return out

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def prune_(self, threshold: float = DEFAULT_PRUNE_THRESHOLD) -> PruneReport:
        """Remove the rank components that are inactive in **every** particle; all particles keep one shape.

        Each particle's bonds are first rotated into their SVD basis (``regauge_``, which leaves its
        weights unchanged) and read off with the relative ``threshold``, as
        :func:`~bayestensor.prune` does for one model. In that basis the components of a bond are
        ordered by size, so index ``r`` is the ``r``-th largest in every particle, and a bond
        keeps the union of its particles' active indices. The particles' parameters are replaced
        by smaller tensors: build the sampler's optimizer state anew afterwards.
        """
        models = self.particle_models()
        before = ranks(self.base)
        found = [bayesian_tensors(m) for m in models]
        keep: dict[str, list[Tensor]] = {}
        for per_model in found:
            for name, t in per_model:
                t.regauge_()
                masks = t.active_masks(threshold)
                keep[name] = [a | m for a, m in zip(keep[name], masks, strict=True)] if name in keep else masks
        for per_model in found:
            for name, t in per_model:
                t.truncate_([m.nonzero().flatten() for m in keep[name]])
        report = PruneReport(threshold=threshold, before=before, after=ranks(models[0]))
        report.params_before = sum(
            m.weight.fmt.n_params(m.weight.out_shape, m.weight.in_shape, before[n])
            for n, m in tensorized_layers(self.base)
        )
        report.params_after = sum(m.weight.n_params() for _, m in tensorized_layers(models[0]))
        self._restack(models)
        return report

    # ------------------------------------------------------------------ modes, devices, checkpoints
    def train(self, mode: bool = True) -> Ensemble:  # noqa: D102
        self.base.train(mode)
        return super().train(mode)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Ensemble:
        self.base._apply(fn)
        return super()._apply(fn, recurse)

    @staticmethod
    def particles_in(state_dict: dict[str, Any]) -> int:
        """The number of particles an ensemble's ``state_dict`` stacks (a saved ``posterior.pt``, for example).

        ``bt.Ensemble.clone(model, Ensemble.particles_in(state)).load_state_dict(state)`` rebuilds it.
        """
        counts = {v.shape[0] for k, v in state_dict.items() if k.startswith("particles.") and v.dim() > 0}
        if len(counts) != 1:
            raise ValueError(
                f"not an ensemble state dict: expected stacked 'particles.*' entries, got {list(state_dict)[:5]}"
            )
        (count,) = counts
        return count

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load stacked particles, also of another ensemble's pruned ranks; the particle count must match."""
        count = self.particles_in(state_dict)
        if count != self.num_particles:
            raise ValueError(f"the state dict holds {count} particles, this ensemble has {self.num_particles}")
        own = self.base.state_dict().keys()
        models = []
        for i in range(count):
            m = copy.deepcopy(self.base)
            per = {}
            for key, value in state_dict.items():
                group, _, name = key.partition(".")
                name = _unmangle(name)
                if group in ("particles", "particle_buffers") and name in own:
                    per[name] = value[i]
            m.load_state_dict(per, strict=strict)
            models.append(m)
        params, buffers = stack_module_state(models)
        current = self.stacked()
        if all(v.shape == current[0][n].shape for n, v in params.items()):
            with torch.no_grad():  # same shapes: in place, so an optimizer over the particles stays valid
                for n, v in params.items():
                    current[0][n].copy_(v)
                for n, v in buffers.items():
                    current[1][n].copy_(v)
        else:
            self._restack(models)
        # non-persistent buffers of the model are still stacked buffers here: load them as stored
        for key, value in state_dict.items():
            group, _, name = key.partition(".")
            if group == "particle_buffers" and _unmangle(name) not in own:
                getattr(self.particle_buffers, name).copy_(value)
        return None

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_particles={self.num_particles}, model={type(self.base).__name__}"
