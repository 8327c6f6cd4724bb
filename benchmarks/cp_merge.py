"""A/B of the CP merge of a pruning pass: this checkout's ``cp_merge`` against a git revision's.

Run:  python benchmarks/cp_merge.py [--base REV] [--rounds 3] [--threads 1] [--smoke]

Both versions run side by side in one process on the same factors: the revision's
``src/bayestensor/tensors/decompose.py`` is read with ``git show`` and imported as a
module of its own (its imports of the rest of the package resolve to this checkout's). Each
pruning pass of a CP layer with a posterior calls the merge once (``FactorizedTensor.merge_components_``
at the default threshold ``1e-3``). Cases, the CP factors of a ``TensorizedLinear`` as drawn:

* random factors, whose components no fewer components reproduce (the usual case: the merge
  finds nothing), at three sizes near and below the merge's size limit;
* a degenerate fit: a planted rank-4 weight held in 8 components, two pairs of which cancel
  (the case the merge exists for).

Prints, per case, both versions' results (the kept component count or ``None``; they must agree)
and the median over rounds of this checkout's time over the revision's in the same round.
``--smoke`` times small layers only (the test that the script works).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, paired_ratios, print_table  # noqa: E402

import bayestensor as bt  # noqa: E402
from bayestensor.tensors import decompose as current  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_revision(rev: str):
    """``bayestensor/tensors/decompose.py`` as it was at ``rev``, imported as the module ``decompose_base``."""
    text = subprocess.run(
        ["git", "show", f"{rev}:src/bayestensor/tensors/decompose.py"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    text = text.replace("from ..", "from bayestensor.")
    path = Path(tempfile.mkdtemp(prefix="cp_merge_ab_")) / "decompose_base.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("decompose_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_factors(features: int, rank: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    layer = bt.TensorizedLinear(features, features, format="cp", max_rank=rank, method="map")
    return [f.detach().clone() for f in layer.weight.factors]


def degenerate_factors() -> list[torch.Tensor]:
    """A rank-4 CP of modes (4, 4, 4, 4) in 8 components: the 4 planted ones split into cancelling pairs."""
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(4, 4, generator=g) for _ in range(4)]
    pairs = [torch.randn(4, 2, generator=g) * 3 for _ in range(4)]
    return [torch.cat([a[n], pairs[n], pairs[n] * (-1.0 if n == 0 else 1.0)], 1) for n in range(4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="5d43f3c", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="small layers only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_revision(args.base)
    sizes = [(16, 8)] if args.smoke else [(256, 64), (256, 200), (1024, 16)]
    cases = {f"random, {n} x {n}, rank {r}": random_factors(n, r) for n, r in sizes}
    cases["degenerate, 16 x 16 as (4, 4, 4, 4), rank 4 in 8"] = degenerate_factors()
    rows = []
    for name, factors in cases.items():

        def kept(mod, factors=factors):
            out = mod.cp_merge(factors, 1e-3)
            return None if out is None else len(out[0])

        results = {args.base: kept(base), "this checkout": kept(current)}
        samples = interleaved_samples(
            {
                args.base: lambda f=factors: base.cp_merge(f, 1e-3),
                "this checkout": lambda f=factors: current.cp_merge(f, 1e-3),
            },
            rounds=args.rounds,
            inner=1,
            warmup=0,
        )
        ratio = paired_ratios(samples, args.base)["this checkout"]
        rows.append([name, str(results[args.base]), str(results["this checkout"]),
                     f"{statistics.median(samples[args.base]):.3f} s", f"{ratio:.3f}x"])  # fmt: skip
    print_table(
        f"cp_merge(factors, 1e-3), this checkout against {args.base} ({args.threads} thread(s), {args.rounds} rounds)",
        ["case", f"kept ({args.base})", "kept (this checkout)", f"median s ({args.base})", "time / base"],
        rows,
    )


if __name__ == "__main__":
    main()
