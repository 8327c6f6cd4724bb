"""``tensorize(model)``: swap every large enough dense layer of a model for its tensorized counterpart."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence

from torch import nn
from torch.nn.parameter import is_lazy

from ..formats import RankSpec
from ..layers import LAYER_TYPES, TensorizedLinear
from ..tensors import TensorizedModule
from .from_dense import from_dense, layer_type_for

DENSE_BASES = tuple(t for layer_type in LAYER_TYPES for t in layer_type.dense_types)
"""The ``torch.nn`` classes the registered layer types replace (their subclasses are named when left dense)."""


def _matches(name: str, patterns: str | Sequence[str] | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + ".") for p in patterns)


def _named_exactly(name: str, patterns: str | Sequence[str] | None) -> bool:
    if patterns is None:
        return False
    return name in ([patterns] if isinstance(patterns, str) else list(patterns))


def _skip_reason(name: str, module: nn.Module, shared: dict[int, list[tuple[str, nn.Module]]]) -> str | None:
    """Why a module that looks convertible is left dense, or ``None`` when it is converted."""
    layer_type = layer_type_for(module)
    if layer_type is None:
        base = next(b.__name__ for b in DENSE_BASES if isinstance(module, b))
        return (
            f"{type(module).__name__} is a subclass of nn.{base}; only exact types are converted, since a "
            "subclass (or its parent, as nn.MultiheadAttention does with out_proj) may read .weight as a dense tensor"
        )
    reason = layer_type.unsupported_reason(module)
    if reason is not None:
        return reason
    for p in module.parameters(recurse=False):
        # the same module reused under several names is not tying: it is converted once, put back at each
        others = [n for n, owner in shared.get(id(p), []) if owner is not module]
        if others:
            return f"its parameter is shared with {others[0]} (tied weights)"
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
    """Replace dense layers by their tensorized counterparts (every type of ``bayestensor.layers.LAYER_TYPES``).

    Converted: ``nn.Linear`` (and Hugging Face's GPT-2 ``Conv1D``), ``nn.Conv2d``, ``nn.Conv1d``,
    ``nn.Embedding``, ``nn.EmbeddingBag`` and ``nn.MultiheadAttention`` (all four projections,
    packed or separate Q/K/V; :class:`~bayestensor.layers.TensorizedMultiheadAttention`). A
    module is replaced when it has at least ``min_params`` parameters or is named exactly in
    ``include``, its qualified name matches ``include`` (glob patterns or module-name prefixes;
    all modules when ``None``) and not ``exclude``. The model is modified in place; when
    ``model`` is itself a convertible layer (``tensorize(nn.Linear(1024, 1024))``), the new layer
    is returned in its place (its summary row is named ``""``) and ``include`` / ``exclude`` do not
    apply to it.

    Types match exactly. Modules of a subclass of those types, modules with unsupported
    settings (``max_norm``, ``add_bias_kv``, …) and modules whose
    weight is tied to another module's (an LM head tied to its embedding) are left dense; one
    warning names each with the reason, and naming one exactly in ``include`` is an error. A module
    used at several places (``nn.Sequential(l, act, l)``) is converted once, and the new layer is put
    at each of them. A frozen layer (``requires_grad=False``) stays frozen (:func:`from_dense`). The
    feed-forward layers of an ``nn.TransformerEncoderLayer`` are converted only together with its
    ``self_attn`` (its inference fast path reads ``linear1.weight`` otherwise), and an
    ``nn.TransformerEncoder`` whose layers were converted gets ``use_nested_tensor = False`` (the
    nested-tensor fast path needs dense packed weights).

    How the new layers start is the explicit choice ``init``:

    * ``"random"`` (default, for training from scratch): random factors drawn so that the
      reconstructed weight has the replaced layer's weight std (for a freshly built layer,
      PyTorch's default initialisation), plus its bias. Decomposing a random weight instead
      would keep only its top singular directions, a weight 2–10× too small.
    * ``"frames"``: the same, except that in tree formats (TT, TTM, Tucker) every factor but one
      is a random isometry along its bond towards that one
      (:func:`~bayestensor.tensors.init.draw_frames_`): a better-conditioned start, which trained
      a TT VGG markedly better (README, "Isometric frames"); CP keeps its random factors.
    * ``"decompose"`` (for a trained model): decompose the trained weight, so at full rank the
      model computes the same function.

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
        ``"random"``, ``"frames"`` or ``"decompose"`` (see above).
    min_params
        Smallest module (its parameters) worth tensorizing.
    include, exclude
        Name filters.
    **layer_kwargs
        Passed to every new layer (e.g. ``prior``, ``rank_update``, ``start_fraction``).

    Returns
    -------
    tuple
        ``(model, summary)``: the model (the new layer when ``model`` was one) and one summary row
        per new factorized weight with keys ``layer``,
        ``type``, ``format``, ``shape``, ``tensor_shape``, ``max_ranks``, ``params_before``,
        ``params_after`` and ``rel_error``.

    Raises
    ------
    ValueError
        A module named exactly in ``include`` cannot be converted (the message says why), or an
        ``include`` name matches no module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tensorize expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(min_params, bool) or not isinstance(min_params, int) or min_params < 0:
        raise ValueError(f"min_params must be an int >= 0, got {min_params!r}")
    by_name = dict(model.named_modules(remove_duplicate=False))
    shared: dict[int, list[tuple[str, nn.Module]]] = {}  # parameter -> (its names, the module holding it)
    for pname, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append((pname, by_name[pname.rpartition(".")[0]]))
    aliases: dict[int, list[str]] = {}  # module -> every name it is reachable under
    for mname, m in by_name.items():
        aliases.setdefault(id(m), []).append(mname)
    names = [n for n, _ in model.named_modules()]
    if include is not None:
        for pattern in [include] if isinstance(include, str) else include:
            if not any(_matches(n, pattern) for n in names if n):
                raise ValueError(f"tensorize: include={pattern!r} matches no module of {type(model).__name__}")
    targets, skipped, claimed = {}, [], []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) or any(name.startswith(c + ".") for c in claimed):
            continue
        if not isinstance(module, DENSE_BASES) and layer_type_for(module) is None:
            continue
        if name and ((include is not None and not _matches(name, include)) or _matches(name, exclude)):
            continue
        named = bool(name) and _named_exactly(name, include)
        if any(is_lazy(p) for p in module.parameters()):
            raise ValueError(
                f"tensorize: {name or type(module).__name__} ({type(module).__name__}) has uninitialized (lazy) "
                "parameters; run one forward pass to materialize them before tensorize"
            )
        if sum(p.numel() for p in module.parameters()) < min_params and not named:
            continue
        reason = _skip_reason(name, module, shared)
        if reason is not None:
            if named:
                raise ValueError(f"tensorize: cannot convert {name!r} ({type(module).__name__}): {reason}")
            skipped.append((name or type(model).__name__, reason))
            continue
        targets[name] = module
        if not name:
            break  # the model is the layer
        claimed.append(name)
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoderLayer) and f"{name}.self_attn".lstrip(".") not in targets:
            for child in ("linear1", "linear2"):
                key = f"{name}.{child}".lstrip(".")
                if targets.pop(key, None) is not None:
                    skipped.append(
                        (key, "nn.TransformerEncoderLayer's inference fast path reads it as a dense weight unless its "
                              "self_attn is converted too (it is excluded, unsupported or below min_params)")
                    )  # fmt: skip
    if skipped:
        warnings.warn(
            "tensorize left these modules dense: " + "; ".join(f"{n} ({r})" for n, r in skipped), stacklevel=2
        )
    if not targets:
        warnings.warn(
            f"tensorize: no convertible module ({', '.join('nn.' + t.__name__ for t in DENSE_BASES)} with at least "
            f"{min_params} parameters, passing include={include!r} / "
            f"exclude={exclude!r}); model unchanged",
            stacklevel=2,
        )
        return model, []
    summary = []
    for name, module in targets.items():
        kwargs = dict(layer_kwargs)
        is_table = isinstance(module, nn.Embedding | nn.EmbeddingBag)
        if is_table:
            kwargs.pop("start_fraction", None)
        rank = 16 if max_rank is None and is_table else max_rank
        try:
            new = from_dense(module, format=format, max_rank=rank, method=method, init=init, **kwargs)
        except ValueError as err:
            raise ValueError(f"tensorize: {name or type(module).__name__}: {err}") from err
        new.train(module.training)
        if name:
            for alias in aliases[id(module)]:  # a module used at several places stays one module
                parent_name, _, child = alias.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, new)
        else:  # the model itself was the layer (then the only target)
            model = new
        for sub_name, sub in new.named_modules():
            if isinstance(sub, TensorizedModule):
                summary.append(_summary_row(".".join(n for n in (name, sub_name) if n), module, sub))
    larger = [r for r in summary if r["params_after"] > r["params_before"]]
    if larger:
        warnings.warn(
            "tensorize: at their starting ranks these layers hold more parameters than their dense weights: "
            + "; ".join(f"{r['layer']} ({r['params_after']:,} > {r['params_before']:,})" for r in larger)
            + " (give a smaller max_rank, or exclude them)",
            stacklevel=2,
        )
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(isinstance(m, LAYER_TYPES) for m in module.modules()):
            module.use_nested_tensor = False
    return model, summary


def _summary_row(name: str, dense: nn.Module, layer: TensorizedModule) -> dict:
    w = layer.weight
    if isinstance(layer, TensorizedLinear) and not isinstance(dense, nn.Linear):
        shape = (layer.out_features, layer.in_features)  # one projection of an attention block, or a Conv1D
    else:
        shape = tuple(dense.weight.shape)
    return {
        "layer": name,
        "type": type(dense).__name__,
        "format": w.fmt.name,
        "shape": shape,
        "tensor_shape": (w.out_shape, w.in_shape),
        "max_ranks": list(w.ranks),
        "params_before": layer.dense_params(),
        "params_after": layer.get_num_params(),
        "rel_error": layer.reconstruction_error,
    }


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
