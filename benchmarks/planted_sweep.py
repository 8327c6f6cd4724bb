"""Planted-rank sweep: ARD on randomly drawn shapes, planted ranks and seeds, every format x MAP/SVI.

python benchmarks/planted_sweep.py [--cases 24] [--first-seed 1000] [--methods map,svi] [--tolerance T]
                                   [--lr-schedule cosine|constant]

Case k uses seed first_seed + k; the format cycles over the registry with the seed. Prints one line per
case and a pass count; a case passes when the relative test error is < 0.1 and no bond ends more than
1 above its planted rank (bayestensor.experiments.planted). ``--tolerance`` trains with ARD's loss tolerance
and prunes by the held-out validation loss (``fit_planted(..., tolerance=T)``).
"""

import argparse
import time

import torch

from bayestensor.data import draw_planted_case
from bayestensor.experiments.planted import fit_planted


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--methods", default="map,svi")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--tolerance", type=float, default=None)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = []
    for k in range(args.cases):
        case = draw_planted_case(args.first_seed + k)
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            r = fit_planted(case, method, epochs=args.epochs, tolerance=args.tolerance, lr_schedule=args.lr_schedule)
            results.append(r)
            print(
                f"seed {r['seed']} {r['format']:6s} {method:3s} out={r['out_shape']} in={r['in_shape']} "
                f"planted={r['planted']} start={r['max_rank']} found={r['found']} rel_err={r['rel_error']:.4f} "
                f"{'pass' if r['passed'] else 'FAIL'} ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    passed = sum(r["passed"] for r in results)
    print(f"{passed} / {len(results)} cases pass")


if __name__ == "__main__":
    main()
