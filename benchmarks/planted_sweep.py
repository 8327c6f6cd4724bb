"""Planted-rank sweep: ARD on randomly drawn shapes, planted ranks and seeds, every format x MAP/SVI.

python benchmarks/planted_sweep.py [--cases 24] [--first-seed 1000] [--methods map,svi] [--tolerance T]
                                   [--lr-schedule cosine|constant] [--formats cp,tt,...]
                                   [--optimizer-state reset|transport]

Case k uses seed first_seed + k; the format cycles over the registry with the seed. With ``--formats``
only draws of those formats run: the seeds from first_seed on whose draw has another format are
skipped, and ``--cases`` counts the cases that run. Prints one line per
case and a pass count; a case passes when the relative test error is < 0.1 and no bond ends more than
1 above its planted rank (bayestensor.experiments.planted). ``--tolerance`` trains with ARD's loss tolerance
and prunes by the held-out validation loss (``fit_planted(..., tolerance=T)``).

A drawn rank can exceed what its bond can carry next to its neighbours (a TT bond is at most
``r_{k-1} n_k``), so each line also gives the teacher's own ranks, the ranks of the dense teacher's
unfoldings (numerical rank at 1e-10 relative; CP: the planted ranks), and the last line counts the runs
that end at exactly those.
"""

import argparse
import itertools
import math
import time

import torch

from bayestensor import available_formats
from bayestensor.data import PlantedCase, draw_planted_case, planted_teacher
from bayestensor.experiments.planted import fit_planted
from bayestensor.tensors.optimizer_state import OPTIMIZER_STATES


def teacher_ranks(case: PlantedCase) -> list[int]:
    """Numerical ranks of the dense teacher's unfolding at every bond (CP: the planted ranks)."""
    if case.format == "cp":
        return list(case.planted)
    w = planted_teacher(case.format, case.out_shape, case.in_shape, case.planted, seed=case.seed)
    d = len(case.out_shape)
    t = w.reshape(*case.out_shape, *case.in_shape)
    if case.format == "tucker":  # one bond per mode: the mode-k unfolding
        mats = [t.movedim(k, 0).reshape(t.shape[k], -1) for k in range(t.dim())]
    else:  # tt over out+in modes; ttm over (out_k, in_k) pairs
        if case.format == "ttm":
            t = t.permute([i for k in range(d) for i in (k, d + k)]).reshape(
                [o * i for o, i in zip(case.out_shape, case.in_shape, strict=True)]
            )
        mats = [t.reshape(math.prod(t.shape[: k + 1]), -1) for k in range(t.dim() - 1)]
    ranks = []
    for m in mats:
        s = torch.linalg.svdvals(m)
        ranks.append(int((s > 1e-10 * s[0]).sum()))
    return ranks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--methods", default="map,svi")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--tolerance", type=float, default=None)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--formats", default=None, help="comma-separated formats to keep (default: every format)")
    p.add_argument("--optimizer-state", choices=OPTIMIZER_STATES, default="reset", help="bt.ARD's option")
    args = p.parse_args()
    formats = None if args.formats is None else args.formats.split(",")
    unknown = sorted(set(formats or ()) - set(available_formats()))
    if unknown:
        p.error(f"--formats: unknown {unknown}; expected some of {available_formats()}")
    torch.set_num_threads(1)
    results, exact = [], 0
    drawn = map(draw_planted_case, itertools.count(args.first_seed))
    for case in itertools.islice((c for c in drawn if formats is None or c.format in formats), args.cases):
        teacher = teacher_ranks(case)
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            r = fit_planted(
                case,
                method,
                epochs=args.epochs,
                tolerance=args.tolerance,
                lr_schedule=args.lr_schedule,
                optimizer_state=args.optimizer_state,
            )
            results.append(r)
            exact += r["found"] == teacher
            print(
                f"seed {r['seed']} {r['format']:6s} {method:3s} out={r['out_shape']} in={r['in_shape']} "
                f"planted={r['planted']} teacher={teacher} start={r['max_rank']} found={r['found']} "
                f"rel_err={r['rel_error']:.4f} "
                f"{'pass' if r['passed'] else 'FAIL'} ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    passed = sum(r["passed"] for r in results)
    print(f"{passed} / {len(results)} cases pass; {exact} end at exactly the teacher's ranks")


if __name__ == "__main__":
    main()
