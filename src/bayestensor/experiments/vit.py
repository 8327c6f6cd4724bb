"""``fashion-mnist-vit``: a small vision transformer whose attention and MLP projections are all tensorized.

The model is built from stock PyTorch blocks and converted with :func:`bayestensor.tensorize`,
as a user would convert their own transformer::

    x (N, C, H, W) -> patch conv p×p, stride p -> (N, T, D) + position   T = (H/p)·(W/p)
                   -> depth × pre-norm nn.TransformerEncoderLayer(D, heads, mlp·D, GELU)
                   -> LayerNorm -> mean over tokens -> Linear(D, classes)

Every block's ``self_attn`` (Q, K, V and output projections, each its own
:class:`~bayestensor.layers.TensorizedLinear`) and both MLP layers are tensorized with ARD; the
patch embedding, position embedding, norms and head stay dense (together a small part of the
weights at the default size: about 2 %). ``--set model.embedding_dim=…`` (D), ``model.depth=…`` (blocks),
``model.heads=…``, ``model.hidden=…`` (MLP width).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..conversion import tensorize
from .classification import digits_ood
from .cnn import fashion_images
from .config import ConfigError, RunConfig
from .models import tensor_kwargs
from .registry import Experiment, register_experiment


class VisionTransformer(nn.Module):
    """A pre-norm ViT with mean pooling over patch tokens (see the module docstring).

    Parameters
    ----------
    image_size, patch_size, in_channels, num_classes
        ``image_size`` must be a multiple of ``patch_size``.
    dim, depth, heads, mlp_dim
        Token width ``D`` (divisible by ``heads``), number of blocks, attention heads, MLP width.
    dropout
        Dropout of the encoder layers.
    tensor
        Keyword arguments of the tensorized layers (:func:`.models.tensor_kwargs`: ``format``,
        ``max_rank``, ``method``, ``prior``, ``prior_kwargs``), given to :func:`bayestensor.tensorize`
        of the encoder blocks; ``None`` for the dense twin.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 256,
        dropout: float = 0.0,
        tensor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.export_kwargs = {
            "image_size": image_size, "patch_size": patch_size, "in_channels": in_channels,
            "num_classes": num_classes, "dim": dim, "depth": depth, "heads": heads, "mlp_dim": mlp_dim,
            "dropout": dropout, "tensor": tensor,
        }  # fmt: skip
        tokens = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        if tensor is not None:
            tensorize(self.blocks, min_params=0, **tensor)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        z = self.patch(x).flatten(2).transpose(1, 2) + self.position  # (N, T, D)
        z = self.norm(self.blocks(z))  # (N, T, D)
        return self.head(z.mean(1))  # (N, classes)


def _model(cfg: RunConfig) -> VisionTransformer:
    m = cfg.model
    if m.heads < 1 or m.embedding_dim % m.heads:
        raise ConfigError(
            f"fashion-mnist-vit: model.embedding_dim (the token width) must be a multiple of model.heads; "
            f"got {m.embedding_dim} and {m.heads}"
        )
    return VisionTransformer(
        dim=m.embedding_dim,
        depth=m.depth,
        heads=m.heads,
        mlp_dim=m.hidden,
        dropout=m.dropout,
        tensor=tensor_kwargs(m),
    )


def _defaults(cfg: RunConfig) -> None:
    cfg.model.format, cfg.model.max_rank = "ttm", 8
    cfg.model.embedding_dim, cfg.model.depth, cfg.model.heads, cfg.model.hidden = 128, 4, 4, 256
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = 10, 128, 1e-3
    cfg.train.kl_weight, cfg.train.no_kl_epochs, cfg.train.warmup_epochs = 0.2, 1, 3
    cfg.train.prune_start, cfg.train.prune_every = 3, 2


def _smoke(cfg: RunConfig) -> None:
    cfg.model.embedding_dim, cfg.model.depth, cfg.model.heads, cfg.model.hidden, cfg.model.max_rank = 16, 1, 2, 32, 3
    cfg.train.epochs, cfg.train.prune_start, cfg.train.prune_every, cfg.train.batch_size = 2, 0, 1, 8
    cfg.train.no_kl_epochs, cfg.train.warmup_epochs, cfg.train.predict_samples = 0, 1, 2
    cfg.data.limit = 32


FASHION_MNIST_VIT = register_experiment(
    Experiment(
        name="fashion-mnist-vit",
        description="ViT, patches 7x7, width 128, 4 pre-norm blocks: every attention and MLP projection tensorized",
        data="Fashion-MNIST IDX files in --data-dir (default /usr/share/datasets/fashion-mnist)",
        defaults=_defaults,
        load_data=fashion_images,
        build_model=_model,
        smoke=_smoke,
        ood=digits_ood,
    )
)
