"""Export and import of trained (pruned) models: ``safetensors`` weights plus a small JSON description.

:func:`save` writes ``PATH.safetensors`` (every parameter and persistent buffer, at its current,
possibly pruned, shape) and ``PATH.json`` (the tensorized layers' ranks, the tensor shapes, an
optional run config and, when the model can be described, the module tree as constructor
arguments). Pruned tensorized layers shrink to the stored ranks as they load.

Two ways back:

* **A model of any class** (a user's network, ``nn.TransformerEncoder``, a Hugging Face model):
  rebuild it as it was before training (same constructor, same :func:`~bayestensor.tensorize`
  call) and pass it, ``load(path, model=rebuilt)``. Every tensorized layer shrinks to its stored
  ranks; a layer whose stored ranks exceed the rebuilt one's is an error, raised before any
  weight is loaded.
* **A described model**, rebuilt from the JSON alone (no experiment, config or training code),
  ``load(path)``. Described are ``torch.nn`` building blocks (``Sequential``, ``ModuleList``,
  ``Linear``, ``Conv1d/2d``, ``BatchNorm1d/2d``, ``ReLU``, ``Dropout``, ``Flatten``, pooling,
  ``Embedding(Bag)``, ``Identity``), every tensorized layer type (through its ``export_kwargs``,
  at its current ranks and with all its settings), and any class defined in ``bayestensor`` with
  an ``export_kwargs`` dict attribute, rebuilt as ``cls(**export_kwargs)`` (e.g. the CIFAR ResNet
  and DLRM of :mod:`bayestensor.experiments`). Classes are only imported from ``torch.nn`` and
  ``bayestensor``, so a JSON file cannot run code.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tensors import TensorizedModule

FORMAT_VERSION = 1
_ALLOWED_MODULES = ("torch.nn", "bayestensor")


class ExportError(ValueError):
    """A model that cannot be described, or files that do not describe a model."""


def _pairs(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


_NN_ARGS: dict[type, Any] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: lambda m: {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pairs(m.kernel_size),
        "stride": _pairs(m.stride), "padding": _pairs(m.padding), "dilation": _pairs(m.dilation),
        "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
    },
    nn.Conv1d: lambda m: {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pairs(m.kernel_size),
        "stride": _pairs(m.stride), "padding": _pairs(m.padding), "dilation": _pairs(m.dilation),
        "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
    },
    nn.BatchNorm1d: lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                               "affine": m.affine, "track_running_stats": m.track_running_stats},
    nn.BatchNorm2d: lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                               "affine": m.affine, "track_running_stats": m.track_running_stats},
    nn.ReLU: lambda m: {},
    nn.Identity: lambda m: {},
    nn.Dropout: lambda m: {"p": m.p},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.MaxPool2d: lambda m: {"kernel_size": _pairs(m.kernel_size), "stride": _pairs(m.stride),
                             "padding": _pairs(m.padding)},
    nn.AvgPool2d: lambda m: {"kernel_size": _pairs(m.kernel_size), "stride": _pairs(m.stride),
                             "padding": _pairs(m.padding)},
    nn.AdaptiveAvgPool2d: lambda m: {"output_size": _pairs(m.output_size)},
    nn.Embedding: lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim},
    nn.EmbeddingBag: lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                                "mode": m.mode, "sparse": m.sparse},
}  # fmt: skip


def describe(module: nn.Module) -> dict[str, Any]:
    """The JSON-able description of ``module`` that :func:`build` turns back into an (untrained) module."""
    cls = type(module)
    name = f"{cls.__module__}.{cls.__qualname__}"
    kwargs = getattr(module, "export_kwargs", None)
    if isinstance(kwargs, dict):
        return {"class": name, "kwargs": kwargs}
    if cls in (nn.Sequential, nn.ModuleList):
        return {"class": name, "children": [describe(c) for c in module]}
    if cls is nn.ModuleDict:
        return {"class": name, "named_children": {k: describe(c) for k, c in module.items()}}
    if cls in _NN_ARGS:
        return {"class": name, "kwargs": _NN_ARGS[cls](module)}
    raise ExportError(
        f"cannot export a module of type {name}: expected torch.nn building blocks, bayestensor layers, or a "
        "bayestensor class with an export_kwargs dict"
    )


def _import(name: str) -> type:
    module_name, _, qual = name.rpartition(".")
    if not any(module_name == p or module_name.startswith(p + ".") for p in _ALLOWED_MODULES):
        raise ExportError(f"refusing to import {name!r}: expected a class from {', '.join(_ALLOWED_MODULES)}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ExportError(f"cannot import {name!r}: {err}") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ExportError(f"{name!r} is not an nn.Module class")
    return obj


def build(spec: dict[str, Any]) -> nn.Module:
    """An untrained module from :func:`describe`'s output."""
    cls = _import(spec["class"])
    if "children" in spec:
        return cls(*(build(c) for c in spec["children"]))
    if "named_children" in spec:
        return cls({k: build(c) for k, c in spec["named_children"].items()})
    return cls(**spec.get("kwargs", {}))


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        p = p / "model"
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _ranks(model: nn.Module) -> dict[str, list[int]]:
    return {n: list(m.weight.ranks) for n, m in model.named_modules() if isinstance(m, TensorizedModule)}


def save(model: nn.Module, path: str | Path, *, config: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``model`` as ``PATH.safetensors`` + ``PATH.json``; returns both paths.

    Parameters
    ----------
    model
        Any module. When :func:`describe` cannot describe it (a user's class), only the weights
        and ranks are written and :func:`load` needs the rebuilt model.
    path
        File stem (``run/model``), a ``.safetensors``/``.json`` path, or a folder (``folder/model``).
    config
        Optional JSON-able run configuration, stored under ``"config"``.
    """
    from safetensors.torch import save_file

    weights, meta_path = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state, tied, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and key in seen:
            tied[k] = seen[key]  # a tied weight (an LM head and its embedding) is written once
            continue
        seen[key] = k
        state[k] = v.detach().cpu().contiguous()
    try:
        description = describe(model)
    except ExportError:
        description = None  # a user's class: load() needs the rebuilt model
    meta = {
        "format_version": FORMAT_VERSION,
        "model": description,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "ranks": _ranks(model),
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "tied": tied,
        "config": config,
    }
    save_file(state, str(weights))
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return weights, meta_path


def _check_ranks(model: nn.Module, stored: dict[str, list[int]], where: str) -> None:
    have = _ranks(model)
    for name, ranks in stored.items():
        if name not in have:
            raise ExportError(f"{where} has a tensorized layer {name!r} with ranks {ranks}; the given model has none")
        if any(r > c for r, c in zip(ranks, have[name], strict=False)) or len(ranks) != len(have[name]):
            raise ExportError(
                f"{where}: layer {name!r} has stored ranks {ranks}, which exceed (or do not fit) the given model's "
                f"ranks {have[name]}; rebuild the model with max ranks of at least the stored ones"
            )


def load(path: str | Path, *, model: nn.Module | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save` (stem, either file, or a run folder), in eval mode.

    Parameters
    ----------
    path
        What :func:`save` was given.
    model
        The model rebuilt by the caller (needed for classes :func:`describe` cannot describe);
        its tensorized layers shrink to the stored ranks. ``None``: rebuild from the JSON.
    map_location
        Device of the loaded weights.

    Raises
    ------
    ExportError
        Missing files, an unknown format version, a model that needs ``model=``, stored ranks
        that exceed the given model's, or weights that do not match the description.
    """
    from safetensors.torch import load_file

    weights, meta_path = _paths(path)
    for p in (weights, meta_path):
        if not p.is_file():
            raise ExportError(f"expected {p.name} next to it at {str(p.parent)!r}; it does not exist")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{str(meta_path)!r} is not valid JSON: {err}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{str(meta_path)!r}: expected format_version {FORMAT_VERSION}, got {meta.get('format_version')!r}"
        )
    if model is None:
        if meta.get("model") is None:
            raise ExportError(
                f"{str(meta_path)!r} holds a {meta.get('model_class', 'user')} model, which cannot be rebuilt from "
                "the file; build it as before training (and tensorize it the same way) and pass load(path, model=...)"
            )
        model = build(meta["model"])
    else:
        _check_ranks(model, meta.get("ranks", {}), repr(str(meta_path)))
    from safetensors import SafetensorError

    try:
        state = load_file(str(weights), device=str(map_location))
    except SafetensorError as err:
        raise ExportError(f"{str(weights)!r} is not a complete safetensors file ({err})") from None
    for name, source in meta.get("tied", {}).items():
        if source not in state:
            raise ExportError(f"{str(weights)!r} lacks {source!r}, which {name!r} is tied to in {meta_path.name}")
        state[name] = state[source]
    got = {k: list(v.shape) for k, v in state.items()}
    if got != meta["shapes"]:
        raise ExportError(f"{str(weights)!r} does not match {meta_path.name}: tensors or shapes differ")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ExportError(f"weights in {str(weights)!r} do not fit the model: {err}") from None
    return model.to(map_location).eval()
