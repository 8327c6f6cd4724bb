"""The floor of "reconstruct W, then one matmul" for the ≈10 % TTM of ``benchmarks/linear.py``.

Run:  python benchmarks/linear_floor.py [--rounds 31] [--batch 256]

TTM ranks ``[16, 38, 38]`` over ``(4, 4, 8, 8) × (4, 4, 8, 8)`` costs at least 1.26 GFLOP forward
at batch 256 when contracted with ``x`` (``benchmarks/linear.py`` shows the cost model's figures),
against 0.54 for dense, so every fast path reconstructs ``W``. This script times the least work
that path can do, written by hand without autograd, beside ``nn.Linear``, our layer and TensorLy-Torch's
``blocktt`` layer, all fwd+bwd with a gradient for ``x``:

* forward: ``W_g = S_L @ S_R`` (``(16·16, 38) @ (38, 64·64)``, the grouped layout), one permute copy
  of ``W_g`` into ``(out, in)``, ``y = x Wᵀ``;
* backward: ``∂x = ∂y W``, ``∂W = ∂yᵀ x``, one permute copy of ``∂W`` back, and the two
  super-factor gradients ``∂W_g S_Rᵀ`` and ``S_Lᵀ ∂W_g``.

The super-factors themselves (from the cores) and the cores' gradients are left out, so the floor
is below what any implementation can reach. Ratios are medians over rounds of each case's time over
``nn.Linear``'s in the same round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, paired_ratios, print_table  # noqa: E402

import bayestensor as bt  # noqa: E402

SHAPE = (4, 4, 8, 8)
RANKS = (16, 38, 38)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, bond = 1024, RANKS[1]
    x = torch.randn(args.batch, n, requires_grad=True)
    gy = torch.randn(args.batch, n)
    s_left, s_right = torch.randn(256, bond), torch.randn(bond, 4096)  # (m1 m2 n1 n2, r), (r, m3 m4 n3 n4)

    def floor() -> None:
        w = (s_left @ s_right).view(16, 16, 64, 64).permute(0, 2, 1, 3).reshape(n, n)  # (out, in)
        xd = x.detach()
        _ = xd @ w.T  # (B, in) @ (in, out)
        _ = gy @ w  # ∂x
        gw = (gy.T @ xd).view(16, 64, 16, 64).permute(0, 2, 1, 3).reshape(256, 4096)  # ∂W, grouped
        _ = gw @ s_right.T, s_left.T @ gw  # ∂S_L, ∂S_R

    dense = torch.nn.Linear(n, n, bias=False)
    ours = bt.TensorizedLinear(n, n, format="ttm", max_rank=max(RANKS), in_shape=SHAPE, out_shape=SHAPE, bias=False)
    if tuple(ours.weight.ranks) != RANKS:
        raise RuntimeError(f"expected TTM ranks {RANKS}, got {tuple(ours.weight.ranks)}")
    cases = {
        "nn.Linear": lambda: dense(x).backward(gy),
        "reconstruct floor (hand-written)": floor,
        "bayestensor ttm": lambda: ours(x).backward(gy),
    }
    try:
        import tltorch

        theirs = tltorch.FactorizedLinear(
            SHAPE, SHAPE, bias=False, factorization="blocktt", rank=(1, *RANKS, 1), implementation="factorized"
        )
        cases["tltorch blocktt"] = lambda: theirs(x).backward(gy)
    except ImportError:
        print("tensorly-torch not installed: skipping its row (pip install tensorly-torch)")
    samples = interleaved_samples(cases, rounds=args.rounds)
    ratios = paired_ratios(samples, "nn.Linear")
    rows = [[k, f"{v:.3f}x"] for k, v in ratios.items()]
    if "tltorch blocktt" in samples:
        against = paired_ratios(samples, "tltorch blocktt")
        rows = [[*row, f"{against[row[0]]:.3f}x"] for row in rows]
    print_table(
        f"TTM ranks {list(RANKS)} fwd+bwd, 1024x1024, batch {args.batch}",
        ["case", "time / nn.Linear"] + (["time / tltorch"] if "tltorch blocktt" in samples else []),
        rows,
    )


if __name__ == "__main__":
    main()
