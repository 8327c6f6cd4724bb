"""Cost of ``FactorizedTensor.contributions`` (what ARD's target cap reads 50 times an epoch) against a step.

python benchmarks/contributions.py [--rounds 20] [--batch 128]

One 3136 -> 512 ``TensorizedLinear`` per format at its default ranks, one torch thread. Each round times
one ``contributions()`` call and one forward+backward at ``--batch``, interleaved; prints the medians and
the median of the per-round ratios.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, paired_ratios  # noqa: E402

import bayestensor as bt  # noqa: E402


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
        cases = {
            "contributions": layer.weight.contributions,
            "fwd+bwd": lambda layer=layer, x=x: layer(x).sum().backward(),
        }
        samples = interleaved_samples(cases, rounds=args.rounds, inner=1, warmup=1)
        ratio = paired_ratios(samples, "fwd+bwd")["contributions"]
        ours, step = (statistics.median(samples[k]) * 1e3 for k in cases)
        print(
            f"{fmt:6s} ranks={layer.weight.ranks} contributions {ours:.2f} ms, fwd+bwd {step:.2f} ms, ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
