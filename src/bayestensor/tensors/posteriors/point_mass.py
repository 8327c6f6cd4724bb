"""The point-mass posterior of MAP (and of fixed-rank tensors): ``q(w) = δ(w − μ)``."""

from __future__ import annotations

from ._base import Posterior


class PointMass(Posterior):
    """``q(w) = δ(w − μ)``: the factors are the estimate; ``E[w²] = μ²`` and the entropy term is dropped."""
