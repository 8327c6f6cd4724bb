"""MNIST and Fashion-MNIST in the IDX file format (gzip-compressed or raw).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
``uint32`` dimension sizes, then the array in C order with big-endian items. MNIST and
Fashion-MNIST ship four such files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each possibly with ``.gz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._files import find_files, is_gzip, open_binary, reading
from .errors import DataFormatError
from .splits import DatasetSplits, LabeledImages

#: IDX dtype code -> (name, big-endian numpy dtype).
IDX_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0x08: ("unsigned byte", np.dtype(">u1")),
    0x09: ("signed byte", np.dtype(">i1")),
    0x0B: ("short", np.dtype(">i2")),
    0x0C: ("int", np.dtype(">i4")),
    0x0D: ("float", np.dtype(">f4")),
    0x0E: ("double", np.dtype(">f8")),
}

#: The four standard file names, without the optional ``.gz``.
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the data.
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

NUM_CLASSES = 10
IMAGE_SIZE = 28


def _read_bytes(path: Path) -> bytes:
    """Whole (decompressed) contents of ``path``; gzip is recognised by its magic bytes, not its name."""
    if not is_gzip(path):
        return path.read_bytes()
    with reading(path), open_binary(path) as f:
        return f.read()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into a native-endian NumPy array.

    Parameters
    ----------
    path
        The file, gzip-compressed or raw (detected from its first bytes).

    Returns
    -------
    numpy.ndarray
        Array with the file's dimensions and dtype (in native byte order).

    Raises
    ------
    DataFormatError
        Bad magic number, unknown dtype code, or a payload whose length does not match the
        dimensions in the header (e.g. a truncated file). The message names the file, what was
        expected and what was got.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(path, f"expected at least a 4-byte IDX magic number, got a file of {len(data)} bytes")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataFormatError(
            path,
            f"bad IDX magic number: expected 0x0000 then a dtype code and ndim, got 0x{data[:4].hex()}",
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataFormatError(path, f"unknown IDX dtype code: expected one of {known}, got 0x{code:02X}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFormatError(
            path, f"truncated IDX header: expected {header_len} bytes for {ndim} dimensions, got {len(data)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    _, dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got != expected:
        kind = "truncated" if got < expected else "oversized"
        raise DataFormatError(
            path,
            f"{kind} IDX payload: expected {expected} bytes for shape {dims} of {IDX_DTYPES[code][0]}, got {got} bytes",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _check(path: Path, array: np.ndarray, *, ndim: int, trailing: tuple[int, ...], what: str) -> None:
    if array.dtype != np.uint8:
        raise DataFormatError(path, f"expected {what} of unsigned bytes (IDX code 0x08), got dtype {array.dtype}")
    if array.ndim != ndim or array.shape[1:] != trailing:
        want = "(N" + "".join(f", {t}" for t in trailing) + ")"
        raise DataFormatError(path, f"expected {what} of shape {want}, got shape {array.shape}")


def load_idx_images(path: str | Path) -> torch.Tensor:
    """Read an IDX image file of ``uint8`` pixels as ``float32`` in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        ``float32`` of shape ``(N, 28, 28)``.
    """
    path = Path(path)
    array = read_idx(path)
    _check(path, array, ndim=3, trailing=(IMAGE_SIZE, IMAGE_SIZE), what="images")
    return torch.from_numpy(array.astype(np.float32) / np.float32(255.0))


def load_idx_labels(path: str | Path, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Read an IDX label file of ``uint8`` class indices.

    Returns
    -------
    torch.Tensor
        ``int64`` of shape ``(N,)`` with values in ``[0, num_classes)``.
    """
    path = Path(path)
    array = read_idx(path)
    _check(path, array, ndim=1, trailing=(), what="labels")
    if array.size and int(array.max()) >= num_classes:
        raise DataFormatError(path, f"expected labels in [0, {num_classes}), got a label {int(array.max())}")
    return torch.from_numpy(array.astype(np.int64))


def _load_pair(images_path: Path, labels_path: Path) -> LabeledImages:
    images = load_idx_images(images_path)
    labels = load_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            labels_path, f"expected {images.shape[0]} labels to match '{images_path}', got {labels.shape[0]}"
        )
    return LabeledImages(images, labels)


def _load_idx_dataset(dataset: str, data_dir: str | Path, subdirs: tuple[str, ...], hint: str | None) -> DatasetSplits:
    files = find_files(dataset, data_dir, list(MNIST_FILES.values()), subdirs=subdirs, hint=hint)
    p = {key: files[name] for key, name in MNIST_FILES.items()}
    return DatasetSplits(
        train=_load_pair(p["train_images"], p["train_labels"]),
        test=_load_pair(p["test_images"], p["test_labels"]),
    )


def load_mnist(data_dir: str | Path) -> DatasetSplits:
    """Load MNIST from the four standard IDX files in ``data_dir``.

    Files may be raw or ``.gz``; ``data_dir/MNIST/raw`` (torchvision's layout) is also searched.

    Returns
    -------
    DatasetSplits
        ``train`` (60000 images) and ``test`` (10000), images ``float32`` ``(N, 28, 28)`` in
        ``[0, 1]``, labels ``int64`` ``(N,)``.

    Raises
    ------
    DataNotFoundError
        A file is missing (nothing is downloaded).
    DataFormatError
        A file is malformed.
    """
    return _load_idx_dataset("MNIST", data_dir, ("MNIST/raw",), None)


def load_fashion_mnist(data_dir: str | Path | None = None) -> DatasetSplits:
    """Load Fashion-MNIST from the four standard IDX files.

    Parameters
    ----------
    data_dir
        Directory with the files (raw or ``.gz``; ``data_dir/FashionMNIST/raw`` is also searched).
        ``None`` means :data:`DEFAULT_FASHION_MNIST_DIR`, where ``apt-get install dataset-fashion-mnist``
        puts them.

    Returns
    -------
    DatasetSplits
        As :func:`load_mnist`.
    """
    hint = None
    if data_dir is None:
        data_dir = DEFAULT_FASHION_MNIST_DIR
        hint = "On Debian/Ubuntu, 'apt-get install dataset-fashion-mnist' installs them in that directory."
    return _load_idx_dataset("Fashion-MNIST", data_dir, ("FashionMNIST/raw",), hint)
