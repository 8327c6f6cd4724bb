"""CIFAR-10 in its "python version" format: pickled batches ``data_batch_1`` … ``data_batch_5`` and ``test_batch``.

Each batch is a pickled dict with ``data`` (``uint8`` array of shape ``(N, 3072)``, rows holding the
red, green then blue 32×32 planes) and ``labels`` (``N`` ints in ``[0, 10)``). The files are read with
a restricted unpickler that only rebuilds NumPy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._files import find_files
from .errors import DataFormatError
from .splits import DatasetSplits, LabeledImages

TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
#: The folder name inside the official archive ``cifar-10-python.tar.gz``.
CIFAR10_SUBDIR = "cifar-10-batches-py"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild plain NumPy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only NumPy arrays are allowed")
        if module == "numpy.core.multiarray":  # pickles from NumPy 1.x; NumPy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _get(batch: dict[Any, Any], key: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def load_cifar_batch(path: str | Path) -> LabeledImages:
    """Read one CIFAR-10 python batch file.

    Returns
    -------
    LabeledImages
        Images ``float32`` ``(N, 3, 32, 32)`` in ``[0, 1]``, labels ``int64`` ``(N,)``.

    Raises
    ------
    DataFormatError
        The file is not a pickled dict with ``data`` of shape ``(N, 3072)`` (``uint8``) and ``N``
        ``labels`` in ``[0, 10)``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataFormatError(path, f"expected a pickled CIFAR-10 batch, could not unpickle it ({e})") from e
    if not isinstance(batch, dict):
        raise DataFormatError(path, f"expected a pickled dict with 'data' and 'labels', got {type(batch).__name__}")
    try:
        data = np.asarray(_get(batch, "data"))
        labels = np.asarray(_get(batch, "labels"))
    except KeyError as e:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
        raise DataFormatError(path, f"expected the keys 'data' and 'labels', got {keys} (missing {e})") from None
    flat = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != flat:
        raise DataFormatError(path, f"expected 'data' as uint8 of shape (N, {flat}), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            path, f"expected {data.shape[0]} integer 'labels', got {labels.dtype} of shape {labels.shape}"
        )
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise DataFormatError(
            path, f"expected labels in [0, {NUM_CLASSES}), got values in [{labels.min()}, {labels.max()}]"
        )
    images = data.reshape(-1, *IMAGE_SHAPE).astype(np.float32) / np.float32(255.0)
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def _concat(parts: list[LabeledImages]) -> LabeledImages:
    return LabeledImages(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def load_cifar10(data_dir: str | Path) -> DatasetSplits:
    """Load CIFAR-10 from its python batches in ``data_dir`` or ``data_dir/cifar-10-batches-py``.

    Returns
    -------
    DatasetSplits
        ``train`` (the five data batches, 50000 images in order) and ``test`` (``test_batch``,
        10000), images ``float32`` ``(N, 3, 32, 32)`` in ``[0, 1]``, labels ``int64`` ``(N,)``.

    Raises
    ------
    DataNotFoundError
        A batch file is missing (nothing is downloaded; the archive must be extracted beforehand).
    DataFormatError
        A batch is malformed.
    """
    names = [*TRAIN_BATCHES, TEST_BATCH]
    files = find_files(
        "CIFAR-10",
        data_dir,
        names,
        subdirs=(CIFAR10_SUBDIR,),
        allow_gzip=False,
        hint="Extract cifar-10-python.tar.gz (the CIFAR-10 python version) there.",
    )
    train = _concat([load_cifar_batch(files[n]) for n in TRAIN_BATCHES])
    return DatasetSplits(train=train, test=load_cifar_batch(files[TEST_BATCH]))
