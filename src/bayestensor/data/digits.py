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


def load_digits_ood(shape: tuple[int, ...]) -> Tensor:
    """All 1,797 digits as an out-of-distribution set for ``shape``-shaped images (``(H, W)`` or ``(C, H, W)``).

    The 8×8 images are resized bilinearly to ``H × W`` (repeated over ``C`` channels), with
    pixel values in ``[0, 1]`` like the IDX loaders' images; for example Fashion-MNIST's
    ``(28, 28)``. Returns float32 ``(1797, *shape)``.
    """
    from sklearn.datasets import load_digits

    if len(shape) not in (2, 3) or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (H, W) or (C, H, W) of positive sizes, got {shape}")
    images = torch.from_numpy((load_digits().images / 16.0).astype(np.float32))[:, None]  # (N, 1, 8, 8)
    resized = torch.nn.functional.interpolate(images, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)
    resized = resized.clamp(0.0, 1.0)
    if len(shape) == 2:
        return resized[:, 0]
    return resized.expand(-1, int(shape[0]), -1, -1).contiguous()
