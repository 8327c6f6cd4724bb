"""Datasets: the embedded digits default, planted low-rank teachers, and readers for standard files.

Readers: MNIST/Fashion-MNIST (IDX), CIFAR-10 (python pickles), Criteo Kaggle (TSV) and synthetic
clicks. Nothing is ever downloaded: missing files raise :class:`DataNotFoundError`, which names
the expected files and where they were looked for. Malformed files raise :class:`DataFormatError`.
"""

from .cifar import load_cifar10, load_cifar_batch
from .click_batch import NUM_DENSE, NUM_SPARSE, ClickBatch
from .criteo import KAGGLE_CARDINALITIES, KAGGLE_ROWS, CriteoKaggle, parse_lines, split_bounds
from .digits import load_digits_ood, load_digits_split
from .errors import DataFormatError, DataNotFoundError
from .idx import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist, load_idx_images, load_idx_labels, load_mnist, read_idx
from .splits import DatasetSplits, LabeledImages
from .synthetic import PlantedCase, draw_planted_case, planted_regression, planted_teacher
from .synthetic_clicks import SyntheticClicks

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "KAGGLE_CARDINALITIES",
    "KAGGLE_ROWS",
    "NUM_DENSE",
    "NUM_SPARSE",
    "ClickBatch",
    "CriteoKaggle",
    "DataFormatError",
    "DataNotFoundError",
    "DatasetSplits",
    "LabeledImages",
    "SyntheticClicks",
    "load_cifar10",
    "load_cifar_batch",
    "load_digits_ood",
    "load_digits_split",
    "load_fashion_mnist",
    "load_idx_images",
    "load_idx_labels",
    "load_mnist",
    "parse_lines",
    "PlantedCase",
    "draw_planted_case",
    "planted_regression",
    "planted_teacher",
    "read_idx",
    "split_bounds",
]
