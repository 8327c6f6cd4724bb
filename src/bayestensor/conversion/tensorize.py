"""``tensorize(model)``: swap every large enough dense layer of a model for its tensorized counterpart."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence

from torch import nn

from ..formats import RankSpec
from ..tensors import TensorizedModule
from .from_dense import from_dense

ELIGIBLE = (nn.Linear, nn.Conv2d, nn.Embedding, nn.EmbeddingBag)


def _matches(name: str, patterns: str | Sequence[str] | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + ".") for p in patterns)


def _ineligible_reason(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d) and (
        module.padding_mode != "zeros" or (isinstance(module.padding, str) and module.padding != "valid")
    ):
        return f"padding_mode={module.padding_mode!r}, padding={module.padding!r}"
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.max_norm is not None:
        return "max_norm is set"
    if isinstance(module, nn.EmbeddingBag) and module.mode == "max":
        return "mode='max'"
    return None


def tensorize(
    model: nn.Module,
    *,
    format: str = "ttm",
    max_rank: RankSpec | None = None,
    method: str | None = "map",
    min_params: int = 10_000,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    init: str = "random",
    **layer_kwargs,
) -> tuple[nn.Module, list[dict]]:
    """Replace ``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding`` and ``nn.EmbeddingBag`` layers by tensorized ones.

    A layer is replaced when it has at least ``min_params`` parameters, its qualified name
    matches ``include`` (glob patterns or module-name prefixes; all layers when ``None``) and
    not ``exclude``. The model is modified in place.

    How the new layers start is the explicit choice ``init``:

    * ``"random"`` (default, for training from scratch): random factors drawn so that the
      reconstructed weight has the replaced layer's weight std (for a freshly built layer,
      PyTorch's default initialisation), plus its bias. Decomposing a random weight instead
      would keep only its top singular directions, a weight 2–10× too small.
    * ``"decompose"`` (for a trained model): decompose the trained weight
      (:mod:`~bayestensor.conversion.from_dense`), so at full rank the model computes the same
      function.

    With ``max_rank=None`` (default) each layer starts from the largest uniform rank whose
    factors hold at most ``start_fraction`` (default 0.1) of its dense weight's entries, which
    leaves ARD (``method="map"`` / ``"svi"``) room to find the ranks the data need; embedding
    tables, whose dense size says nothing about a useful rank, default to rank 16.

    Parameters
    ----------
    model
        The model.
    format, max_rank, method
        Format, rank and Bayesian method of every new layer.
    init
        ``"random"`` or ``"decompose"`` (see above).
    min_params
        Smallest layer (weight + bias parameters) worth tensorizing.
    include, exclude
        Name filters.
    **layer_kwargs
        Passed to every new layer (e.g. ``prior``, ``rank_update``, ``start_fraction``).

    Returns
    -------
    tuple
        ``(model, summary)``: one summary row per replaced layer with keys ``layer``, ``type``,
        ``format``, ``shape``, ``tensor_shape``, ``max_ranks``, ``params_before``,
        ``params_after`` and ``rel_error``.
    """
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, ELIGIBLE) or isinstance(module, TensorizedModule) or not name:
            continue
        n_params = sum(p.numel() for p in module.parameters(recurse=False))
        if n_params < min_params or _ineligible_reason(module) is not None:
            continue
        if include is not None and not _matches(name, include):
            continue
        if _matches(name, exclude):
            continue
        targets.append((name, module, n_params))
    if not targets:
        warnings.warn(
            f"tensorize: no eligible layer (nn.Linear, nn.Conv2d, nn.Embedding or nn.EmbeddingBag with at least "
            f"{min_params} parameters, passing include={include!r} / exclude={exclude!r}); model unchanged",
            stacklevel=2,
        )
        return model, []
    summary = []
    for name, module, n_params in targets:
        kwargs = dict(layer_kwargs)
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            kwargs.pop("start_fraction", None)
        rank = 16 if max_rank is None and isinstance(module, nn.Embedding | nn.EmbeddingBag) else max_rank
        new = from_dense(module, format=format, max_rank=rank, method=method, init=init, **kwargs)
        new.train(module.training)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        w = new.weight
        summary.append(
            {
                "layer": name,
                "type": type(module).__name__,
                "format": w.fmt.name,
                "shape": tuple(module.weight.shape),
                "tensor_shape": (w.out_shape, w.in_shape),
                "max_ranks": list(w.ranks),
                "params_before": n_params,
                "params_after": new.get_num_params(),
                "rel_error": new.reconstruction_error,
            }
        )
    return model, summary


def format_summary(summary: list[dict]) -> str:
    """The summary of :func:`tensorize` as a plain-text table."""
    cols = ["layer", "type", "format", "shape", "tensor_shape", "max_ranks", "params_before", "params_after"]
    rows = [[str(r[c]) for c in cols] + [f"{r['rel_error']:.2e}"] for r in summary]
    cols = cols + ["rel_error"]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    before = sum(r["params_before"] for r in summary)
    after = sum(r["params_after"] for r in summary)
    lines.append(f"total: {before:,} -> {after:,} parameters ({after / max(before, 1):.3f}x)")
    return "\n".join(lines)
