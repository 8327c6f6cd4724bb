"""Shared helpers for the side-by-side benchmarks: interleaved timing, saved-activation and peak bytes, tables."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def interleaved_samples(
    cases: dict[str, Callable[[], object]],
    rounds: int = 15,
    inner: int = 3,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each case in every round, timing the cases A/B/C... interleaved round by round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / inner)
    return samples


def interleaved_medians(cases: dict[str, Callable[[], object]], **kwargs) -> dict[str, float]:
    """Median seconds per call of each case (see :func:`interleaved_samples`)."""
    return {k: statistics.median(v) for k, v in interleaved_samples(cases, **kwargs).items()}


def paired_ratios(samples: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of ``time(case) / time(reference)`` in the same round.

    Pairing each case with the reference timed moments before it cancels the drift of a shared
    machine's speed, which a ratio of overall medians does not.
    """
    ref = samples[reference]
    return {k: statistics.median(a / b for a, b in zip(v, ref, strict=True)) for k, v in samples.items()}


def saved_activation_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward, not counting the module's parameters.

    This includes batch-independent intermediates such as a reconstructed weight or super-factors.
    """
    params = {p.data_ptr() for p in module.parameters()}
    total = 0
    seen: set[tuple[int, int]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.numel())
        if t.data_ptr() not in params and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return total


def saved_bytes_per_row(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Activation memory proper: the saved bytes that grow with the batch, per batch row."""
    double = torch.cat([x, x]).detach().requires_grad_(x.requires_grad)
    return (saved_activation_bytes(module, double) - saved_activation_bytes(module, x)) / x.shape[0]


def peak_step_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes the allocator holds above its starting level during one fwd+bwd of ``module(x).sum()``.

    Everything the step allocates counts: outputs, the waist or a reconstructed weight, gradient
    buffers (the parameters' and ``x``'s gradients are reset first, so each step allocates them).
    On CPU the level is the ``Total Allocated`` of the profiler's memory events; on CUDA it is
    ``torch.cuda.max_memory_allocated``.
    """

    def reset() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None

    reset()
    module(x).sum().backward()  # warm plan caches
    reset()  # outside the measured region: freeing earlier buffers is not part of the step
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        module(x).sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        module(x).sum().backward()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.remove(path)
    if not events:
        return 0
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - start


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a rich table (plain text when not a terminal)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)


def load_package_at(rev: str, repo: Path) -> types.ModuleType:
    """The whole ``bayestensor`` package as it was at git revision ``rev``, imported beside this checkout's.

    ``src/bayestensor`` at ``rev`` (``git archive``) is imported as the package ``bayestensor_<rev>``.
    Its modules import each other relatively, so the two builds share nothing but torch, and a
    benchmark can time both in the same interleaved rounds.
    """
    archive = subprocess.run(["git", "archive", rev, "src/bayestensor"], cwd=repo, capture_output=True, check=True)
    root = Path(tempfile.mkdtemp(prefix="bayestensor_ab_"))
    name = "bayestensor_" + re.sub(r"\W", "_", rev)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                dest = root / name / Path(member.name).relative_to("src/bayestensor")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
    sys.path.insert(0, str(root))
    return importlib.import_module(name)
