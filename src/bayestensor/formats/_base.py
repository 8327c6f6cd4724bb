"""The tensor-format contract, its index-network description and the format registry.

A format describes a matrix ``W`` of shape ``(prod(out_shape), prod(in_shape))`` as a small
tensor network: a list of factors, each carrying named indices. Three kinds of index exist:

* *mode* indices (``o0, o1, ...`` for the output modes, ``i0, i1, ...`` for the input modes),
  whose sizes are ``out_shape`` and ``in_shape``;
* *bond* indices (``r0, r1, ...``), one per rank, whose sizes are the ranks;
* *boundary* indices of size 1 (the TT end ranks ``r_0 = r_d = 1``).

Everything else (factor shapes, parameter counts, reconstruction, the factorized matrix
product, which factor slices a rank variance governs, truncation of a rank) is derived from
that description once, here, instead of being hand-written per format.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .shapes import as_int

Shape = tuple[int, ...]
RankSpec = int | Sequence[int]

_REGISTRY: dict[str, type[TensorFormat]] = {}


def _iterate(value: object) -> list | None:
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return None


@dataclass(frozen=True)
class Network:
    """Index structure of one factorized matrix.

    Attributes
    ----------
    factor_indices
        For each factor, the names of its axes, in the factor's layout.
    out_indices, in_indices
        Names of the output (row) and input (column) mode indices, in ``out_shape`` and
        ``in_shape`` order.
    bond_indices
        One name per bond (rank), in bond order.
    sizes
        Size of every index.
    """

    factor_indices: tuple[tuple[str, ...], ...]
    out_indices: tuple[str, ...]
    in_indices: tuple[str, ...]
    bond_indices: tuple[str, ...]
    sizes: dict[str, int]

    def factor_shapes(self) -> list[Shape]:
        """Shape of every factor."""
        return [tuple(self.sizes[i] for i in idx) for idx in self.factor_indices]

    def rank_groups(self) -> list[list[tuple[int, int]]]:
        """For every bond, the ``(factor, axis)`` pairs whose slices that bond's variance governs."""
        groups = []
        for bond in self.bond_indices:
            groups.append(
                [
                    (f, axis)
                    for f, idx in enumerate(self.factor_indices)
                    for axis, name in enumerate(idx)
                    if name == bond
                ]
            )
        return groups

    def isometry_frames(self) -> tuple[int, tuple[tuple[int, int], ...]] | None:
        """``(root, ((factor, axis), ...))`` of a tree network, or ``None`` when a bond joins more than two factors.

        The root is the factor with the most bonds (ties: the most entries, then the last). Every
        other factor is listed once, with the axis of its bond towards the root, in the order of
        a breadth-first walk from the root. A weight whose non-root factors are isometries along
        those axes has, at the unfolding of any bond, the singular values of the root's side
        alone: what a QR sweep of TT-SVD or the orthonormal factors of a HOSVD give. CP's rank
        index joins all factors (a hyper-edge), so CP has no such frames.
        """
        groups = self.rank_groups()  # per bond, the (factor, axis) pairs it joins
        if any(len(g) != 2 for g in groups):
            return None
        neighbours: list[list[tuple[int, int]]] = [[] for _ in self.factor_indices]  # (factor, its axis to us)
        for (a, axis_a), (b, axis_b) in groups:
            neighbours[a].append((b, axis_b))
            neighbours[b].append((a, axis_a))
        shapes = self.factor_shapes()
        root = max(range(len(shapes)), key=lambda f: (len(neighbours[f]), math.prod(shapes[f]), f))
        frames, seen, queue = [], {root}, [root]
        while queue:
            for child, axis in neighbours[queue.pop(0)]:
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
                    frames.append((child, axis))
        return root, tuple(frames)


@dataclass(frozen=True)
class RankGroup:
    """Which factor slices one bond's rank variances govern: ``λ_r`` governs slice ``r`` of each member."""

    bond: int
    members: tuple[tuple[int, int], ...]


def mode_names(out_shape: Shape, in_shape: Shape) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the output and input mode indices."""
    return tuple(f"o{k}" for k in range(len(out_shape))), tuple(f"i{k}" for k in range(len(in_shape)))


class TensorFormat(ABC):
    """A low-rank format for a matrix viewed as the tensor ``W.reshape(*out_shape, *in_shape)``.

    Subclasses register themselves by name (``class TT(TensorFormat, name="tt")``); adding a
    format is one new file. A subclass declares its index network, the number and largest
    useful size of its bonds, and the per-factor standard deviation that gives the
    reconstructed weight a target standard deviation.
    """

    name: ClassVar[str]
    #: Number of modes per side chosen automatically when shapes are not given.
    default_modes: ClassVar[int] = 3
    #: Whether ``out_shape`` and ``in_shape`` must have the same number of modes.
    paired_modes: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"tensor format {key!r} is already registered by {_REGISTRY[key].__qualname__}")
        cls.name = key
        _REGISTRY[key] = cls

    # ------------------------------------------------------------------ declared by formats
    @abstractmethod
    def num_bonds(self, out_shape: Shape, in_shape: Shape) -> int:
        """Number of bonds (independent ranks) of the format at these shapes."""

    @abstractmethod
    def full_ranks(self, out_shape: Shape, in_shape: Shape) -> list[int]:
        """Largest useful rank of every bond; larger requested ranks are clipped to these."""

    @abstractmethod
    def network(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> Network:
        """The index network at these shapes and ranks."""

    @abstractmethod
    def factor_stds(self, target_std: float, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> list[float]:
        """Per-factor std of i.i.d. zero-mean entries so that ``Var(W_ij) = target_std**2``."""

    # ------------------------------------------------------------------ derived
    def check_shapes(self, out_shape: Shape, in_shape: Shape) -> None:
        """Raise ``ValueError`` when the mode shapes cannot be used with this format."""
        for side, shape in (("out_shape", out_shape), ("in_shape", in_shape)):
            if len(shape) == 0 or any(int(s) < 1 for s in shape):
                raise ValueError(f"{side} must be a non-empty sequence of positive ints, got {tuple(shape)}")
        if self.paired_modes and len(out_shape) != len(in_shape):
            raise ValueError(
                f"format {self.name!r} pairs output and input modes core by core, so out_shape and in_shape "
                f"need the same length; got out_shape={tuple(out_shape)} ({len(out_shape)} modes) and "
                f"in_shape={tuple(in_shape)} ({len(in_shape)} modes)"
            )

    def resolve_ranks(self, max_rank: RankSpec, out_shape: Shape, in_shape: Shape) -> list[int]:
        """Turn an int or per-bond sequence into per-bond ranks, clipped to :meth:`full_ranks`."""
        self.check_shapes(out_shape, in_shape)
        n = self.num_bonds(out_shape, in_shape)
        uniform = as_int(max_rank)
        if uniform is not None:
            ranks = [uniform] * n
        else:
            entries = None if isinstance(max_rank, str | bytes) else _iterate(max_rank)
            ranks = None if entries is None else [as_int(r) for r in entries]
            if ranks is None or None in ranks:
                raise ValueError(
                    f"max_rank must be an int or a sequence of ints (one per bond), got {max_rank!r} "
                    f"({type(max_rank).__name__})"
                )
            if len(ranks) != n:
                raise ValueError(
                    f"format {self.name!r} with out_shape={tuple(out_shape)} and in_shape={tuple(in_shape)} has "
                    f"{n} bond(s), so max_rank needs {n} entries; got {len(ranks)}: {tuple(ranks)}"
                )
        bad = [r for r in ranks if r < 1]
        if bad:
            raise ValueError(f"every rank must be >= 1, got max_rank={max_rank!r}")
        return [min(r, f) for r, f in zip(ranks, self.full_ranks(out_shape, in_shape), strict=True)]

    def factor_shapes(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> list[Shape]:
        """Shapes of the factors, in the literature's layouts."""
        return self.network(out_shape, in_shape, ranks).factor_shapes()

    def n_params(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> int:
        """Number of stored parameters: the sum of the factor sizes."""
        return sum(math.prod(s) for s in self.factor_shapes(out_shape, in_shape, ranks))

    def ranks_for_budget(self, budget: float, out_shape: Shape, in_shape: Shape) -> list[int]:
        """The largest uniform rank (clipped per bond to :meth:`full_ranks`) whose factors hold ``≤ budget`` entries.

        ``n_params`` grows with the rank, so a bisection over ``r`` finds it; at least rank 1.
        """
        if not budget > 0:
            raise ValueError(f"a parameter budget must be > 0, got {budget!r}")
        full = self.full_ranks(out_shape, in_shape)
        lo, hi = 1, max(full)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.n_params(out_shape, in_shape, self.resolve_ranks(mid, out_shape, in_shape)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return self.resolve_ranks(lo, out_shape, in_shape)

    def rank_groups(self, out_shape: Shape, in_shape: Shape, ranks: Sequence[int]) -> list[RankGroup]:
        """For every bond, the factor slices governed by that bond's rank variances."""
        groups = self.network(out_shape, in_shape, ranks).rank_groups()
        return [RankGroup(b, tuple(g)) for b, g in enumerate(groups)]

    def validate(self, factors: Sequence[Tensor], out_shape: Shape, in_shape: Shape) -> list[int]:
        """Check factors against the network and return their ranks.

        Errors name the offending factor, the axis and both conflicting sizes.
        """
        self.check_shapes(out_shape, in_shape)
        probe = self.network(out_shape, in_shape, [1] * self.num_bonds(out_shape, in_shape))
        if len(factors) != len(probe.factor_indices):
            raise ValueError(f"format {self.name!r} expects {len(probe.factor_indices)} factors, got {len(factors)}")
        seen: dict[str, tuple[int, int, int]] = {}
        for f, (t, idx) in enumerate(zip(factors, probe.factor_indices, strict=True)):
            if t.dim() != len(idx):
                raise ValueError(
                    f"factor {f} of format {self.name!r} must have {len(idx)} axes ({', '.join(idx)}), "
                    f"got shape {tuple(t.shape)}"
                )
            for axis, name in enumerate(idx):
                size = int(t.shape[axis])
                fixed = name not in probe.bond_indices
                if fixed and size != probe.sizes[name]:
                    raise ValueError(
                        f"factor {f} of format {self.name!r} has size {size} on axis {axis} ({name}), "
                        f"expected {probe.sizes[name]}"
                    )
                if name in seen and seen[name][2] != size:
                    pf, pa, ps = seen[name]
                    bond = probe.bond_indices.index(name)
                    raise ValueError(
                        f"bond {bond} ({name}) of format {self.name!r} has rank {ps} in factor {pf} (axis {pa}) "
                        f"but rank {size} in factor {f} (axis {axis})"
                    )
                seen.setdefault(name, (f, axis, size))
        return [seen[b][2] for b in probe.bond_indices]


def get_format(name: str | TensorFormat) -> TensorFormat:
    """Look a format up by name (``"cp"``, ``"tucker"``, ``"tt"``, ``"ttm"``)."""
    if isinstance(name, TensorFormat):
        return name
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown tensor format {name!r}; expected one of {available_formats()}")
    return _REGISTRY[key]()


def available_formats() -> list[str]:
    """Names of the registered formats."""
    return sorted(_REGISTRY)
