"""One full training step of a tensorized model against its dense twin: fixed rank, MAP and SVI.

Run:  python benchmarks/train_step.py [--model fc|cnn|all] [--batch 128] [--threads 1] [--rounds 15]
      [--device cpu|cuda] [--compile] [--base REV]

A step is forward, cross-entropy, the prior term through ``bt.ARD`` (``β = 1`` from the first
step, so the prior, its gradient and the λ M-step in the optimizer hook all run), backward and an
Adam update. The models:

* ``fc``: Fashion-MNIST's 784-512-10 MLP, both layers TTM, max rank 14;
* ``cnn``: a LeNet-like net, conv 1→32 5×5 (dense, too small to tensorize), TT conv 32→64 5×5,
  TT FC 3136→512 (rank 16), FC 512→10 (dense).

Every case is timed interleaved with the others round by round; the table gives the median over
rounds of each case's time over the dense step's time in the same round. A last row per model
times ``bt.prior_loss`` with its backward alone, the Bayesian term's share of a MAP step; the MAP
step and the prior term are also timed with the default scale floor off (``scale_floor=0``), its cost.
On the CNN a MAP step is also timed with the TT convolution handing its input's gradient back as its
channel einsum returns it (channels innermost), the cost of not restoring the input's layout.

``--base REV`` adds the fixed-rank, MAP, prior-term and SVI cases of the package as it was at git
revision ``REV`` (imported beside this checkout's, ``common.load_package_at``), timed in the same
rounds on the same batch: an A/B of two builds.

``--compile`` adds the dense, MAP and SVI steps with their forward objective under
``torch.compile(fullgraph=True, dynamic=False)`` (default inductor backend; backward is the
compiled backward graph, the Adam step stays eager); compile time is spent in the warm-up, not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, load_package_at, paired_ratios, print_table  # noqa: E402

import bayestensor as bt  # noqa: E402
from bayestensor.layers import conv as conv_layer  # noqa: E402

NUM_DATA = 60_000


def fc() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


MODELS = {"fc": (fc, "ttm", 14, 1000), "cnn": (cnn, "tt", 16, 10_000)}


def build(name: str, method: str | None, device: str, lib=bt, **kwargs) -> nn.Module:
    """The dense model (``method="dense"``) or its tensorized twin with ``method`` (``None`` = fixed rank).

    ``lib`` is the ``bayestensor`` package that tensorizes it (this checkout's, or a revision's).
    """
    torch.manual_seed(0)
    make, fmt, rank, min_params = MODELS[name]
    model = make()
    if method != "dense":
        model, _ = lib.tensorize(
            model, format=fmt, max_rank=rank, method=method, init="random", min_params=min_params, **kwargs
        )
    return model.to(device)


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bayes: bool, compile: bool = False, lib=bt):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ard = lib.ARD(model, opt, num_data=NUM_DATA, epochs=1, no_kl_epochs=0, warmup_epochs=0) if bayes else None

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        return ard.loss(loss) if ard is not None else loss

    if compile:
        objective = torch.compile(objective, fullgraph=True, dynamic=False)

    def step() -> None:
        loss = objective(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def prior_fn(model: nn.Module, lib=bt):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        (lib.prior_loss(model) / NUM_DATA).backward()

    return step


def einsum_layout_fn(step):
    """``step`` with factorized convolutions handing the input's gradient back as their einsum returns it.

    The cost of the layout this build hands it back in (:func:`bayestensor.functional.grad_in_own_format`).
    """

    def run_step() -> None:
        kept = conv_layer.grad_in_own_format
        conv_layer.grad_in_own_format = lambda x: x
        try:
            step()
        finally:
            conv_layer.grad_in_own_format = kept

    return run_step


def run(name: str, args: argparse.Namespace) -> None:
    x = torch.randn(args.batch, 1, 28, 28, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    cases, params = {}, {}
    for method in ("dense", None, "map", "svi"):
        model = build(name, method, args.device)
        label = {"dense": "dense", None: "fixed rank", "map": "MAP", "svi": "SVI"}[method]
        cases[label] = step_fn(model, x, y, bayes=method in ("map", "svi"))
        params[label] = bt.count_params(model) if method != "dense" else sum(p.numel() for p in model.parameters())
        if method == "map":
            cases["MAP prior term only"] = prior_fn(model)
            off = build(name, method, args.device, prior_kwargs={"scale_floor": 0})  # the default floor's cost
            cases["MAP, scale floor off"] = step_fn(off, x, y, bayes=True)
            cases["MAP prior term only, scale floor off"] = prior_fn(off)
            if name == "cnn":
                twin = build(name, method, args.device)
                cases["MAP, conv input gradient as the einsum returns it"] = einsum_layout_fn(
                    step_fn(twin, x, y, bayes=True)
                )
    if args.base:
        for method in (None, "map", "svi"):
            model = build(name, method, args.device, lib=args.base_lib)
            label = {None: "fixed rank", "map": "MAP", "svi": "SVI"}[method] + f" ({args.base})"
            cases[label] = step_fn(model, x, y, bayes=method is not None, lib=args.base_lib)
            if method == "map":
                cases[f"MAP prior term only ({args.base})"] = prior_fn(model, lib=args.base_lib)
    if args.compile:
        for method in ("dense", "map", "svi"):
            model = build(name, method, args.device)
            label = {"dense": "dense", "map": "MAP", "svi": "SVI"}[method] + " compiled"
            cases[label] = step_fn(model, x, y, bayes=method != "dense", compile=True)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    samples = interleaved_samples(cases, rounds=args.rounds, inner=args.inner, sync=sync)
    ratios = paired_ratios(samples, "dense")
    rows = [
        [k, f"{statistics.median(v) * 1e3:.2f}", f"{ratios[k]:.2f}x", f"{params.get(k, '')}"]
        for k, v in samples.items()
    ]
    print_table(
        f"{name}: one training step, batch {args.batch}, {args.device}, threads {torch.get_num_threads()}",
        ["case", "median ms", "/ dense (paired)", "parameters"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    parser.add_argument("--base", default="", help="also time the cases of the package at this git revision")
    args = parser.parse_args()
    args.base_lib = load_package_at(args.base, Path(__file__).resolve().parents[1]) if args.base else None
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for name in MODELS if args.model == "all" else [args.model]:
        run(name, args)


if __name__ == "__main__":
    main()
