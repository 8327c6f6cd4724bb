"""Cost of ``FactorizedTensor.contributions`` (what ARD's target cap reads 50 times an epoch) against a step.

python benchmarks/contributions.py [--rounds 20] [--batch 128]

One 3136 -> 512 ``TensorizedLinear`` per format at its default ranks, one torch thread. Each round times
one ``contributions()`` call and one forward+backward at ``--batch``, interleaved; prints the medians and
the median of the per-round ratios.
"""

import argparse
import statistics
import time

import torch

import bayestensor as bt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for fmt in bt.available_formats():
        layer = bt.TensorizedLinear(3136, 512, format=fmt, method="map")
        x = torch.randn(args.batch, 3136)
        layer.weight.contributions()
        layer(x).sum().backward()
        ours, step = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            layer.weight.contributions()
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            layer(x).sum().backward()
            step.append(time.perf_counter() - t0)
        ratio = statistics.median(a / b for a, b in zip(ours, step, strict=True))
        print(
            f"{fmt:6s} ranks={layer.weight.ranks} contributions {statistics.median(ours) * 1e3:.2f} ms, "
            f"fwd+bwd {statistics.median(step) * 1e3:.2f} ms, ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
