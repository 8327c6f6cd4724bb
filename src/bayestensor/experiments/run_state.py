"""Per-run bookkeeping shared by the task loops: RNG states, λ spectra, layer tables, peak memory."""

from __future__ import annotations

import random
import resource
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inference import COLLAPSE_RATIO, bayesian_tensors, tensorized_layers


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states (for checkpoints)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def lambda_spectra(model: nn.Module) -> dict[str, list[list[float]]]:
    """Per Bayesian layer and bond, ``λ / max λ`` sorted in decreasing order."""
    out = {}
    for name, t in bayesian_tensors(model):
        layer = name[: -len(".weight")] if name.endswith(".weight") else name
        out[layer] = [sorted((lam / lam.max()).tolist(), reverse=True) for lam in t.rank_variances()]
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def weight_rms(model: nn.Module) -> dict[str, float]:
    """Per tensorized layer, the RMS of its weight's entries (see :meth:`FactorizedTensor.weight_rms`)."""
    return {name: layer.weight.weight_rms() for name, layer in tensorized_layers(model)}


def layer_table(
    model: nn.Module, initial: dict[str, list[int]], initial_rms: dict[str, float] | None = None
) -> dict[str, Any]:
    """``report.json``'s ``layers``: format, shapes, initial and final ranks, params and dense params per layer.

    With ``initial_rms`` it also holds the weight RMS at the start and the end, and ``collapsed``:
    whether the whole weight shrank to under :data:`COLLAPSE_RATIO` of its initial size. A collapsed
    layer computes (almost) nothing, so its compression says nothing about its ranks.
    """
    table = {}
    for name, layer in tensorized_layers(model):
        t = layer.weight
        table[name] = {
            "format": t.fmt.name,
            "in_shape": list(t.in_shape),
            "out_shape": list(t.out_shape),
            "initial_ranks": initial.get(name, list(t.ranks)),
            "final_ranks": list(t.ranks),
            "params": layer.get_num_params(),
            "dense_params": layer.dense_params(),
        }
        if initial_rms is not None and name in initial_rms:
            rms = t.weight_rms()
            table[name] |= {
                "initial_weight_rms": initial_rms[name],
                "weight_rms": rms,
                "collapsed": rms < COLLAPSE_RATIO * initial_rms[name],
            }
    return table
