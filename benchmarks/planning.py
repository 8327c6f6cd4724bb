"""How long a tensorized linear layer's first forward takes to plan, by format and number of modes.

Run:  python benchmarks/planning.py [--modes 4 6 8] [--rank 2]

A layer of ``2^d × 2^d`` with ``d`` modes of size 2 a side, at ``max_rank``, float32, batch 64. The
first forward plans its contractions (the cost model's strategies, the opt_einsum paths; cached
afterwards, and planned again for every new set of ranks a pruning pass leaves); the second only
runs them. A Tucker layer has ``2d + 1`` factors in a star, whose dynamic-programming path search
and two-stage splits grow as ``2^(2d+1)``; ``functional/planning.py`` (``DP_MAX_TERMS``) and
``functional/cost_model.py`` (``ALL_SPLITS_MAX_FACTORS``) bound them. One run per cell, fresh
plan caches for every layer (the caches key on shapes, and every cell has its own).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

import bayestensor as bt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for fmt in bt.available_formats():
        for d in args.modes:
            shape, n = (2,) * d, 2**d
            torch.manual_seed(0)
            layer = bt.TensorizedLinear(n, n, format=fmt, in_shape=shape, out_shape=shape, max_rank=args.rank)
            x = torch.randn(64, n)
            times = []
            for _ in range(2):
                start = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - start)
            factors = len(layer.weight.factors)
            rows.append([fmt, str(d), str(factors), f"{times[0]:.3f}", f"{times[1] * 1e3:.2f}"])
    print_table(
        f"first forward of a 2^d x 2^d layer, max rank {args.rank}, batch 64",
        ["format", "modes a side", "factors", "first forward (s)", "second forward (ms)"],
        rows,
    )


if __name__ == "__main__":
    main()
