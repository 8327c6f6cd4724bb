"""Built-in experiments of the papers, their configuration, training loop and reports."""

from . import cnn, digits, dlrm, mnist, resnet, vit  # noqa: F401  (each registers its experiments)
from .checkpoint import CheckpointError, load_checkpoint, save_atomic
from .config import ConfigError, RunConfig, apply_override, load_toml, merge
from .registry import Experiment, available_experiments, default_config, get_experiment, register_experiment
from .report import ReportError, compare_runs, write_report
from .trainer import evaluate, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Experiment",
    "ReportError",
    "RunConfig",
    "apply_override",
    "available_experiments",
    "compare_runs",
    "default_config",
    "evaluate",
    "get_experiment",
    "load_checkpoint",
    "load_toml",
    "merge",
    "register_experiment",
    "save_atomic",
    "train",
    "write_report",
]
