"""fwd+bwd of a 1024 × 1024 linear layer: bayestensor formats against nn.Linear and TensorLy-Torch.

Run:  python benchmarks/linear.py [--batch 256] [--device cpu|cuda] [--rounds 15] [--only SUBSTRING ...]

All cases are timed interleaved in one run; the table reports medians, and ratios as the median over
rounds of each case's time over nn.Linear's in the same round. "activations" are the bytes autograd
saves for backward that grow with the batch (per row, against nn.Linear's); "all saved" adds
batch-independent intermediates such as a reconstructed weight or super-factors (parameters
themselves are never counted). "peak" is the most memory one fwd+bwd step allocates at once
(outputs, intermediates and gradient buffers; :func:`common.peak_step_bytes`), against nn.Linear's
step (``nn.Linear``: ``y``, ``∂x`` and ``∂W``). TensorLy-Torch layers get exactly our ranks.

Every layer is timed twice in the same rounds: with the input's gradient (a hidden layer) and
without it (a network's first layer: ``x.requires_grad = False``, so no ``∂x`` is computed);
"no ∂x / dense" is against ``nn.Linear`` without it. The cases are each format at ≈10 % of the
dense parameters with uniform ranks (Tucker's largest uniform rank there is 4, 6 %), Tucker at the
non-uniform ranks ``[3, 3, 6, 6, 3, 3, 6, 6]`` (10 %), CP rank 1024 (5 %), TTM rank 4 and TT rank 16.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    interleaved_samples,
    paired_ratios,
    peak_step_bytes,
    print_table,
    saved_activation_bytes,
    saved_bytes_per_row,
)

import bayestensor as bt  # noqa: E402

SHAPE = (4, 4, 8, 8)


def rank_for_budget(fmt: str, budget: float) -> int:
    """Largest uniform max_rank whose factor count stays within ``budget`` parameters."""
    f = bt.get_format(fmt)
    best = 1
    for r in range(1, 4097):
        ranks = f.resolve_ranks(r, SHAPE, SHAPE)
        if f.n_params(SHAPE, SHAPE, ranks) > budget:
            break
        best = r
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--only", nargs="+", default=None, help="time only the layers whose name contains one of these (and nn.Linear)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = math.prod(SHAPE)
    budget = 0.1 * n * n
    layers: dict[str, nn.Module] = {"nn.Linear": nn.Linear(n, n)}
    for fmt in ("ttm", "tt", "tucker", "cp"):
        r = rank_for_budget(fmt, budget)
        layer = bt.TensorizedLinear(n, n, format=fmt, max_rank=r, in_shape=SHAPE, out_shape=SHAPE)
        layers[f"{fmt} r={r} ({layer.weight.n_params() / (n * n):.0%})"] = layer
    layers["tucker r=[3,3,6,6,3,3,6,6] (10%)"] = bt.TensorizedLinear(
        n, n, format="tucker", max_rank=[3, 3, 6, 6, 3, 3, 6, 6], in_shape=SHAPE, out_shape=SHAPE
    )
    layers["cp r=1024 (5%)"] = bt.TensorizedLinear(n, n, format="cp", max_rank=1024, in_shape=SHAPE, out_shape=SHAPE)
    layers["ttm r=4"] = bt.TensorizedLinear(n, n, format="ttm", max_rank=4, in_shape=SHAPE, out_shape=SHAPE)
    layers["tt r=16"] = bt.TensorizedLinear(n, n, format="tt", max_rank=16, in_shape=SHAPE, out_shape=SHAPE)
    try:
        import tltorch

        for name, fact, key in (("blocktt", "blocktt", "ttm"), ("cp", "cp", "cp"), ("tucker", "tucker", "tucker")):
            ours = next(v for k, v in layers.items() if k.startswith(key + " "))  # the first: the uniform budget
            # the same ranks as ours: TT ranks with their boundary 1s, the CP rank, or the Tucker ranks
            ranks = tuple(ours.weight.ranks)
            rank = (1, *ranks, 1) if fact == "blocktt" else ranks[0] if fact == "cp" else ranks
            layers[f"tltorch {name}"] = tltorch.FactorizedLinear(
                SHAPE, SHAPE, factorization=fact, rank=rank, implementation="factorized"
            )
    except ImportError:
        print("tensorly-torch not installed: skipping its rows (pip install tensorly-torch)")
    if args.only:
        layers = {k: v for k, v in layers.items() if k == "nn.Linear" or any(o in k for o in args.only)}
    layers = {k: v.to(dev) for k, v in layers.items()}
    x = torch.randn(args.batch, n, device=dev, requires_grad=True)
    x_first = x.detach()  # a first layer's input: no gradient

    def step(m: nn.Module, inp: torch.Tensor):
        def run() -> None:
            m(inp).sum().backward()

        return run

    cases = {k: step(m, x) for k, m in layers.items()}
    cases |= {f"{k} no dx": step(m, x_first) for k, m in layers.items()}
    samples = interleaved_samples(cases, rounds=args.rounds, sync=sync)
    times = {k: statistics.median(v) for k, v in samples.items()}
    ratios = paired_ratios({k: v for k, v in samples.items() if not k.endswith(" no dx")}, "nn.Linear")
    first = paired_ratios({k[: -len(" no dx")]: v for k, v in samples.items() if k.endswith(" no dx")}, "nn.Linear")
    dense_mem = saved_activation_bytes(layers["nn.Linear"], x)
    dense_row = saved_bytes_per_row(layers["nn.Linear"], x)
    dense_peak = peak_step_bytes(layers["nn.Linear"], x)
    rows = []
    for k, m in layers.items():
        params = sum(p.numel() for p in m.parameters()) - n  # without bias
        rows.append(
            [
                k,
                f"{params:,}",
                f"{params / (n * n):.3f}",
                f"{times[k] * 1e3:.3f}",
                f"{ratios[k]:.2f}x",
                f"{first[k]:.2f}x",
                f"{saved_bytes_per_row(m, x) / dense_row:.2f}x",
                f"{saved_activation_bytes(m, x) / dense_mem:.2f}x",
                f"{peak_step_bytes(m, x) / dense_peak:.2f}x",
            ]
        )
    print_table(
        f"fwd+bwd, {n}x{n}, batch {args.batch}, {args.device}, threads {torch.get_num_threads()}",
        ["layer", "weight params", "fraction", "median ms", "time / dense", "no ∂x / dense", "activations / dense"]
        + ["all saved / dense", "peak / dense"],
        rows,
    )
    for ours, theirs in (("ttm", "tltorch blocktt"), ("cp", "tltorch cp"), ("tucker", "tltorch tucker")):
        ok = next((k for k in times if k.startswith(ours + " ")), "")
        if theirs in times and ok in times:
            print(f"{ok} / {theirs}: {paired_ratios(samples, theirs)[ok]:.3f}")
    print("ratios:", {k: round(v, 3) for k, v in ratios.items()})
    print("ratios without the input gradient:", {k: round(v, 3) for k, v in first.items()})


if __name__ == "__main__":
    main()
