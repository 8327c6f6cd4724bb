"""Time of one training step of the same TTM layer: SVI against MAP against fixed ranks.

Run:  python benchmarks/svi_overhead.py [--batch 256] [--rank 16] [--rounds 15]

A step is forward, loss (+ prior_loss / N for MAP and SVI, which also runs the λ M-step),
backward and an Adam update. All three are timed interleaved in one run; medians are reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, print_table  # noqa: E402

import bayestensor as bt  # noqa: E402

SHAPE = (4, 4, 8, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    n = 1024
    x, y = torch.randn(args.batch, n), torch.randn(args.batch, n)
    cases = {}
    for method in (None, "map", "svi"):
        layer = bt.TensorizedLinear(
            n, n, format="ttm", max_rank=args.rank, in_shape=SHAPE, out_shape=SHAPE, method=method
        )
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)

        def step(layer=layer, opt=opt, bayes=method is not None) -> None:
            loss = F.mse_loss(layer(x), y)
            if bayes:
                loss = loss + bt.prior_loss(layer) / 60_000
            opt.zero_grad()
            loss.backward()
            opt.step()

        cases["fixed rank" if method is None else method.upper()] = step
    times = interleaved_medians(cases, rounds=args.rounds)
    rows = [
        [k, f"{v * 1e3:.2f}", f"{v / times['MAP']:.2f}x", f"{v / times['fixed rank']:.2f}x"] for k, v in times.items()
    ]
    print_table(
        f"one training step, TTM 1024x1024 rank {args.rank}, batch {args.batch}",
        ["method", "median ms", "/ MAP", "/ fixed rank"],
        rows,
    )
    print(f"SVI / MAP = {times['SVI'] / times['MAP']:.3f}")


if __name__ == "__main__":
    main()
