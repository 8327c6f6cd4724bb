"""The 6-layer CNN of Hawkins & Zhang (Neurocomputing 2021) and its two experiments, Fashion-MNIST and CIFAR-10.

Layers: a dense 3×3 convolution to 128 channels; TT 3×3 convolutions 128→256→256→256, each
followed by 2×2 max pooling; a TT fully connected layer 1024→512 (256 channels × 2 × 2, after an
adaptive average pool to 2×2 so both image sizes give 1024 features); a dense FC layer to 10
classes. Batch norm and ReLU follow every hidden layer. ``model.width`` scales every channel
count (``--smoke`` uses a small width).
"""

from __future__ import annotations

from torch import nn

from ..data import load_cifar10, load_fashion_mnist
from .classification import digits_ood
from .config import ConfigError, RunConfig
from .models import conv3x3, linear, scaled, tensor_kwargs
from .registry import Experiment, Splits, limit_splits, register_experiment

CHANNELS = (128, 256, 256, 256)
FC_HIDDEN = 512


def cnn6(in_channels: int, cfg: RunConfig, num_classes: int = 10) -> nn.Sequential:
    """The paper's CNN for ``in_channels``-channel images (see the module docstring)."""
    tensor = tensor_kwargs(cfg.model)
    c = [scaled(ch, cfg.model.width) for ch in CHANNELS]
    hidden = scaled(FC_HIDDEN, cfg.model.width)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(c[0]),
        nn.ReLU(),
    ]
    for a, b in zip(c[:-1], c[1:], strict=True):
        layers += [conv3x3(a, b, tensor), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        linear(4 * c[-1], hidden, tensor),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


def _defaults(cfg: RunConfig) -> None:
    cfg.model.format, cfg.model.max_rank = "tt", 20
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = 30, 128, 1e-3
    cfg.train.kl_weight, cfg.train.prune_start, cfg.train.prune_every = 0.1, 5, 5


def _smoke(cfg: RunConfig) -> None:
    cfg.model.width, cfg.model.max_rank = 1 / 16, 3
    cfg.train.epochs, cfg.train.prune_start, cfg.train.prune_every, cfg.train.batch_size = 2, 0, 1, 8
    cfg.train.no_kl_epochs, cfg.train.warmup_epochs, cfg.train.predict_samples = 0, 1, 2
    cfg.data.limit = 32


def fashion_images(cfg: RunConfig) -> Splits:
    """Fashion-MNIST as ``(N, 1, 28, 28)`` images (``data.limit`` applied), for the convolutional nets."""
    data = load_fashion_mnist(cfg.data.data_dir or None)
    return limit_splits(
        (data.train.images[:, None], data.train.labels, data.test.images[:, None], data.test.labels), cfg.data.limit
    )


def _cifar(cfg: RunConfig) -> Splits:
    if not cfg.data.data_dir:
        raise ConfigError(f"{cfg.experiment} needs --data-dir: the folder with CIFAR-10's python batches")
    data = load_cifar10(cfg.data.data_dir)
    return limit_splits((data.train.images, data.train.labels, data.test.images, data.test.labels), cfg.data.limit)


FASHION_MNIST_CNN = register_experiment(
    Experiment(
        name="fashion-mnist-cnn",
        description="6-layer CNN: dense conv, TT convs 128→256→256→256, TT-FC 1024→512, FC 10 (BN+ReLU)",
        data="Fashion-MNIST IDX files in --data-dir (default /usr/share/datasets/fashion-mnist)",
        defaults=_defaults,
        load_data=fashion_images,
        build_model=lambda cfg: cnn6(1, cfg),
        smoke=_smoke,
        ood=digits_ood,
    )
)

CIFAR10_CNN = register_experiment(
    Experiment(
        name="cifar10-cnn",
        description="6-layer CNN: dense conv, TT convs 128→256→256→256, TT-FC 1024→512, FC 10 (BN+ReLU)",
        data="CIFAR-10 python batches (data_batch_1..5, test_batch) in --data-dir",
        defaults=_defaults,
        load_data=_cifar,
        build_model=lambda cfg: cnn6(3, cfg),
        smoke=_smoke,
    )
)
