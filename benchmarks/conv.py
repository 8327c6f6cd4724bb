"""fwd+bwd of a 3x3 conv 256 -> 256 on 32x32 inputs: each format at ~10% of the kernel's parameters vs nn.Conv2d.

Run:  python benchmarks/conv.py [--batch 64] [--rounds 3] [--threads N]

All cases are timed interleaved in one run (medians); the table also shows which forward the
cost model chose (reconstruct + F.conv2d, or the factorized sequence) and its channel waist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, print_table  # noqa: E402

from bayestensor.functional import conv_plan  # noqa: E402
from bayestensor.layers.conv import TensorizedConv2d  # noqa: E402

C, K, HW = 256, 3, 32
SHAPES = {  # channel modes per format
    "tt": dict(in_shape=(16, 16), out_shape=(16, 16)),
    "ttm": dict(in_shape=(16, 16), out_shape=(16, 16)),
    "tucker": dict(in_shape=(256,), out_shape=(256,)),  # Tucker-2 conv (Kim et al. 2016)
    "cp": dict(in_shape=(16, 16), out_shape=(16, 16)),
}


def layer_for_budget(fmt: str, budget: float) -> TensorizedConv2d:
    """The layer with the largest uniform max_rank whose kernel factors stay within ``budget``."""
    best = None
    lo, hi = 1, 4096
    while lo <= hi:
        mid = (lo + hi) // 2
        layer = TensorizedConv2d(C, C, K, padding=1, format=fmt, max_rank=mid, **SHAPES[fmt])
        if layer.weight.n_params() <= budget:
            best, lo = layer, mid + 1
        else:
            hi = mid - 1
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense_params = C * C * K * K
    layers: dict[str, nn.Module] = {"nn.Conv2d": nn.Conv2d(C, C, K, padding=1)}
    for fmt in ("tt", "tucker", "cp", "ttm"):
        layer = layer_for_budget(fmt, 0.1 * dense_params)
        layers[f"{fmt} ranks={layer.weight.ranks}"] = layer
    x = torch.randn(args.batch, C, HW, HW, requires_grad=True)

    def step(m: nn.Module):
        def run() -> None:
            for p in m.parameters():
                p.grad = None
            x.grad = None
            m(x).sum().backward()

        return run

    times = interleaved_medians({k: step(m) for k, m in layers.items()}, rounds=args.rounds, inner=1, warmup=1)
    dense_t = times["nn.Conv2d"]
    rows = []
    for k, m in layers.items():
        params = m.weight.n_params() if isinstance(m, TensorizedConv2d) else m.weight.numel()
        path = "-"
        if isinstance(m, TensorizedConv2d):
            chosen, _, split = conv_plan(
                m.format, m.tensor_out_shape, m.tensor_in_shape, tuple(m.weight.ranks), args.batch, HW * HW, HW * HW
            )
            path = chosen if chosen == "reconstruct" else f"factorized (pass, grp, cout, cin)={split.sizes}"
        rows.append(
            [
                k,
                f"{params:,}",
                f"{params / dense_params:.3f}",
                f"{times[k] * 1e3:.1f}",
                f"{times[k] / dense_t:.2f}x",
                path,
            ]
        )
    print_table(
        f"fwd+bwd, conv {C}->{C} {K}x{K} on {HW}x{HW}, batch {args.batch}, CPU threads {torch.get_num_threads()}",
        ["layer", "kernel params", "fraction", "median ms", "time / dense", "forward"],
        rows,
    )


if __name__ == "__main__":
    main()
