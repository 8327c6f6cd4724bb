"""``mnist-fc`` and ``fashion-mnist-fc``: a 784-512-10 FC classifier with dropout, both layers tensorized.

As in Hawkins, Liu & Zhang's MNIST runs. Data are the four standard IDX files (raw or ``.gz``) in
``--data-dir``; ``fashion-mnist-fc`` falls back to ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

from ..data import load_fashion_mnist, load_mnist
from .classification import digits_ood
from .config import ConfigError, RunConfig
from .models import fc_classifier
from .registry import Experiment, Splits, register_experiment

SIZES = (784, 512, 10)


def _defaults(cfg: RunConfig) -> None:
    cfg.model.format, cfg.model.max_rank, cfg.model.hidden, cfg.model.dropout = "ttm", 14, SIZES[1], 0.2
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 12, 128, 2e-3, 1
    cfg.train.kl_weight, cfg.train.no_kl_epochs, cfg.train.warmup_epochs = 0.3, 1, 4
    cfg.train.prune_start, cfg.train.prune_every = 4, 2


def _smoke(cfg: RunConfig) -> None:
    cfg.model.hidden, cfg.model.max_rank = 32, 4
    cfg.train.epochs, cfg.train.prune_start, cfg.train.prune_every, cfg.train.batch_size = 2, 0, 1, 16
    cfg.train.no_kl_epochs, cfg.train.warmup_epochs, cfg.train.predict_samples = 0, 1, 2
    cfg.data.limit = 64


def _splits(data, limit: int) -> Splits:
    xtr, ytr, xte, yte = data.train.images, data.train.labels, data.test.images, data.test.labels
    if limit:
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    return xtr, ytr, xte, yte


def _mnist(cfg: RunConfig) -> Splits:
    if not cfg.data.data_dir:
        raise ConfigError("mnist-fc needs --data-dir: the folder with MNIST's four IDX files (nothing is downloaded)")
    return _splits(load_mnist(cfg.data.data_dir), cfg.data.limit)


def _fashion(cfg: RunConfig) -> Splits:
    return _splits(load_fashion_mnist(cfg.data.data_dir or None), cfg.data.limit)


def _model(cfg: RunConfig):
    return fc_classifier([SIZES[0], cfg.model.hidden, SIZES[-1]], cfg.model)


MNIST_FC = register_experiment(
    Experiment(
        name="mnist-fc",
        description="784-512-10 FC with dropout, both layers tensorized (Hawkins et al.)",
        data="MNIST IDX files (raw or .gz) in --data-dir",
        defaults=_defaults,
        load_data=_mnist,
        build_model=_model,
        smoke=_smoke,
    )
)

FASHION_MNIST_FC = register_experiment(
    Experiment(
        name="fashion-mnist-fc",
        description="784-512-10 FC with dropout, both layers tensorized (Hawkins et al.)",
        data="Fashion-MNIST IDX files in --data-dir (default /usr/share/datasets/fashion-mnist)",
        defaults=_defaults,
        load_data=_fashion,
        build_model=_model,
        smoke=_smoke,
        ood=digits_ood,
    )
)
