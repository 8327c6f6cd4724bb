"""Posteriors over a factorized weight's factors, one file per kind, registered by training method.

``method="map"`` keeps a :class:`PointMass`; ``method="svi"`` a :class:`MeanFieldGaussian`; a
fixed-rank tensor (``method=None``) a point mass without a prior. A new kind is one file with a
:class:`Posterior` subclass plus one line in :data:`POSTERIORS`. Whole-model particle posteriors
(SVGD, SGHMC) are :class:`bayestensor.inference.Ensemble` objects over point-mass models.
"""

from ._base import Posterior
from .mean_field import SVI_INIT_SCALE, MeanFieldGaussian
from .point_mass import PointMass

#: Training method -> posterior class of every factorized tensor built with it.
POSTERIORS: dict[str, type[Posterior]] = {
    "map": PointMass,
    "svi": MeanFieldGaussian,
}


def get_posterior(method: str | None) -> Posterior:
    """A fresh posterior for ``method`` (``None``: a point mass, the fixed-rank tensor's)."""
    if method is None:
        return PointMass()
    try:
        return POSTERIORS[method]()
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {(None, *POSTERIORS)}") from None


__all__ = ["POSTERIORS", "SVI_INIT_SCALE", "MeanFieldGaussian", "PointMass", "Posterior", "get_posterior"]
