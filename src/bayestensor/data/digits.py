"""scikit-learn's bundled 8×8 digits: the embedded default dataset (no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stratified train/test split of ``sklearn.datasets.load_digits`` (1,797 images, 64 features, 10 classes).

    Features are scaled to ``[0, 1]`` (pixel values are 0..16).

    Returns
    -------
    tuple
        ``(x_train, y_train, x_test, y_test)``: float32 ``(N, 64)`` features, int64 labels.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)
