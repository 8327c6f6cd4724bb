"""Small data sets written in the real on-disk formats (IDX, CIFAR-10 pickles, Criteo TSV), for smoke runs."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dir(directory: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """The four MNIST/Fashion-MNIST IDX files (gzip), with a learnable signal: class k brightens row band k."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 96, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 7] = 255
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    return directory


def write_cifar_dir(directory: Path, n: int = 16, seed: int = 0) -> Path:
    """CIFAR-10's six python batches (pickled dicts with bytes keys, as the official archive)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            b"batch_label": b"x",
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"a.png"] * n,
        }
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return directory


def write_criteo_dir(directory: Path, n: int = 700, seed: int = 0) -> Path:
    """A Criteo Kaggle ``train.txt``: label, 13 integer and 26 hexadecimal fields per line (some empty)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for _ in range(n):
        dense = ["" if rng.random() < 0.2 else str(int(rng.integers(-3, 5000))) for _ in range(13)]
        cats = ["" if rng.random() < 0.2 else f"{int(rng.integers(0, 2**32)):08x}" for _ in range(26)]
        lines.append("\t".join([str(int(rng.integers(0, 2))), *dense, *cats]))
    (directory / "train.txt").write_text("\n".join(lines) + "\n")
    return directory
