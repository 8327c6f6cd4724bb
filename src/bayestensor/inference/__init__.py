"""Training objective terms, KL schedules, rank read-off and pruning, and posterior prediction."""

from .ard import ARD, COLLAPSE_RATIO, CollapseWarning
from .metrics import expected_calibration_error, negative_log_likelihood
from .objective import bayesian_tensors, prior_loss, update_rank_variances
from .predict import predict, sampling
from .pruning import PruneReport, prune, ranks, tensorized_layers
from .schedules import kl_weight

__all__ = [
    "ARD",
    "COLLAPSE_RATIO",
    "CollapseWarning",
    "PruneReport",
    "bayesian_tensors",
    "expected_calibration_error",
    "kl_weight",
    "negative_log_likelihood",
    "predict",
    "prior_loss",
    "prune",
    "ranks",
    "sampling",
    "tensorized_layers",
    "update_rank_variances",
]
