"""Containers for labelled image data sets split into train and test parts."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LabeledImages(NamedTuple):
    """Images with their class labels.

    Attributes
    ----------
    images
        ``float32`` tensor of shape ``(N, H, W)`` or ``(N, C, H, W)`` with values in ``[0, 1]``.
    labels
        ``int64`` tensor of shape ``(N,)``.

    Notes
    -----
    Being a tuple, it unpacks as ``images, labels = split`` and feeds
    ``torch.utils.data.TensorDataset(*split)`` directly.
    """

    images: Tensor
    labels: Tensor


class DatasetSplits(NamedTuple):
    """The train and test parts of a labelled image data set.

    Attributes
    ----------
    train, test
        :class:`LabeledImages` for each part.
    """

    train: LabeledImages
    test: LabeledImages
