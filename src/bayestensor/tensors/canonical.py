r"""The two sides of a bond of a tree network, and how much of the weight each rank index carries across it.

Cutting bond ``b`` of a tree network (TT, TTM and Tucker: every bond joins exactly two factors, and
there is no cycle) splits the factors in two. Contracting each side over everything but ``b`` writes
the unfolding of the weight at that bond as

.. math::

    W_{(b)} = L R^\top = \sum_r L_{:,r} R_{:,r}^\top, \qquad L = Q_L T_L, \quad R = Q_R T_R,

with thin QRs (``Q`` orthonormal columns, ``T`` of shape ``(min(rows, r_b), r_b)``). So

* rank index ``r`` carries the term ``L_{:,r} R_{:,r}ᵀ``, of Frobenius norm
  ``‖L_{:,r}‖ ‖R_{:,r}‖ = ‖T_L[:, r]‖ ‖T_R[:, r]‖``;
* the singular values of ``W_{(b)}`` are those of ``T_L T_Rᵀ``, a ``r_b × r_b`` matrix.

:func:`side_triangles` computes ``T_L`` and ``T_R`` from the leaves inwards, one small QR per factor
and side (a factor's other bonds are first contracted with the triangles of what lies beyond them),
so no side is ever formed. The product of a rank index's slice norms in the two factors next to the
bond measures the same term only when everything beyond them is orthonormal; otherwise it can be far
larger than what the index carries (components that the rest of the train maps to nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..formats import RankGroup


def is_tree(num_factors: int, groups: Sequence[RankGroup]) -> bool:
    """Whether every bond joins exactly two factors and the bonds connect all factors without a cycle."""
    if any(len(g.members) != 2 for g in groups) or len(groups) != num_factors - 1:
        return False
    parent = list(range(num_factors))

    def root(f: int) -> int:
        while parent[f] != f:
            f = parent[f]
        return f

    for g in groups:
        (fa, _), (fb, _) = g.members
        ra, rb = root(fa), root(fb)
        if ra == rb:
            return False
        parent[ra] = rb
    return True


def side_triangles(factors: Sequence[Tensor], groups: Sequence[RankGroup]) -> list[tuple[Tensor, Tensor]] | None:
    """For each bond, ``(T_a, T_b)``: the QR triangles of its two sides.

    ``T_a`` belongs to the side of the bond's first member, ``T_b`` to the second's; column ``r`` of
    either is rank index ``r`` of the bond. ``None`` when the network is not a tree (:func:`is_tree`;
    CP's hyperedge bond). Factors are used as given (pass detached float64 tensors for exact numbers).
    """
    if not is_tree(len(factors), groups):
        return None
    links: dict[int, list[tuple[int, int, int, int]]] = {f: [] for f in range(len(factors))}
    for b, g in enumerate(groups):
        (fa, aa), (fb, ab) = g.members
        links[fa].append((aa, b, fb, ab))
        links[fb].append((ab, b, fa, aa))
    memo: dict[tuple[int, int], Tensor] = {}

    def side(f: int, axis: int, bond: int) -> Tensor:  # triangle of everything on f's side of `bond`
        if (f, bond) not in memo:
            g = factors[f]
            for ax, b, other, other_axis in links[f]:
                if b != bond:  # replace axis `ax` (size r_b) by the rows of what lies beyond it
                    g = torch.tensordot(g, side(other, other_axis, b), dims=([ax], [1])).movedim(-1, ax)
            memo[(f, bond)] = torch.linalg.qr(g.movedim(axis, -1).reshape(-1, g.shape[axis]), mode="r").R
        return memo[(f, bond)]

    out = []
    for b, g in enumerate(groups):
        (fa, aa), (fb, ab) = g.members
        out.append((side(fa, aa, b), side(fb, ab, b)))
    return out
