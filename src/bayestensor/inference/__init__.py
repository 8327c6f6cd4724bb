"""Training objective terms, KL schedules, rank read-off and pruning, posterior samplers and prediction."""

from .ard import ARD, COLLAPSE_RATIO, CollapseWarning
from .ensemble import Ensemble
from .metrics import expected_calibration_error, negative_log_likelihood, ood_auroc, predictive_entropy, roc_auc
from .objective import bayesian_tensors, prior_loss, update_rank_variances
from .predict import predict, sampling
from .pruning import PruneReport, prune, ranks, tensorized_layers
from .schedules import kl_weight
from .sghmc import SGHMC
from .svgd import SVGD

__all__ = [
    "ARD",
    "COLLAPSE_RATIO",
    "CollapseWarning",
    "Ensemble",
    "PruneReport",
    "SGHMC",
    "SVGD",
    "bayesian_tensors",
    "expected_calibration_error",
    "kl_weight",
    "negative_log_likelihood",
    "ood_auroc",
    "predictive_entropy",
    "predict",
    "prior_loss",
    "prune",
    "ranks",
    "roc_auc",
    "sampling",
    "tensorized_layers",
    "update_rank_variances",
]
