"""Train-then-compress warm start for ARD, against ARD from scratch, on the default digits task.

1. Train the dense 64-256-10 MLP.
2. Decompose both layers at a generous rank with ``bt.from_dense(..., method="map")`` (TTM-SVD).
3. Keep training with the rank prior, pruning every few epochs: the ranks keep shrinking.
4. Compare with ARD from scratch (random TTM factors at the same max rank), same recipe.

Run:  python examples/warm_start_digits.py [--smoke]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

import bayestensor as bt
from bayestensor.data import load_digits_split

SMOKE = "--smoke" in sys.argv
MAX_RANK, EPOCHS, KL = 16, (2 if SMOKE else 60), 0.2


def fit(model: nn.Module, x, y, epochs: int, bayes: bool) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ard = bt.ARD(model, opt, num_data=len(x), epochs=epochs, kl_weight=KL, no_kl_epochs=0,
                 warmup_epochs=min(5, epochs), prune_start=4, prune_every=5) if bayes else None  # fmt: skip
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss = ard.loss(loss) if bayes else loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        if bayes:
            ard.end_epoch()


def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    x, y, x_test, y_test = load_digits_split()
    dense = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    fit(dense, x, y, EPOCHS, bayes=False)
    warm = nn.Sequential(
        bt.from_dense(dense[0], format="ttm", max_rank=MAX_RANK, method="map"),
        nn.ReLU(),
        bt.from_dense(dense[2], format="ttm", max_rank=MAX_RANK, method="map"),
    )
    start_ranks = bt.ranks(warm)
    fit(warm, x, y, EPOCHS, bayes=True)
    scratch = nn.Sequential(
        bt.TensorizedLinear(64, 256, format="ttm", max_rank=MAX_RANK, method="map"),
        nn.ReLU(),
        bt.TensorizedLinear(256, 10, format="ttm", max_rank=MAX_RANK, method="map"),
    )
    fit(scratch, x, y, EPOCHS, bayes=True)
    n_dense = bt.dense_params(dense)
    print(f"dense        accuracy {accuracy(dense, x_test, y_test):.4f}  params {n_dense:,}")
    for name, m in (("warm start", warm), ("from scratch", scratch)):
        print(
            f"{name:<12} accuracy {accuracy(m, x_test, y_test):.4f}  params {bt.count_params(m):,}  "
            f"compression {n_dense / bt.count_params(m):.1f}x  ranks {bt.ranks(m)}"
        )
    print(f"warm start began at ranks {start_ranks}")


if __name__ == "__main__":
    main()
