"""Cost of one SVGD step of P particles against one MAP step, and the vectorised ensemble against a loop of models.

Run:  python benchmarks/svgd_step.py [--model digits|fc|cnn] [--particles 8] [--batch 128] [--rounds 15] [--threads 1]

Cases, timed interleaved round by round (medians of per-round ratios to the MAP step):

* ``MAP``: one model; forward, cross-entropy + prior_loss / N, backward, RMSprop step.
* ``SVGD xP, vmap, drive=parameters``: :class:`bayestensor.SVGD` on a :class:`bayestensor.Ensemble`
  of P particles: one ``vmap(functional_call)`` forward, the kernel on the outputs, two backward
  passes through the network (potential, repulsion), one RMSprop step, the per-particle λ M-step.
* ``SVGD xP, vmap, drive=function``: the same with ``drive="function"``: the loss's gradient is
  mixed on the outputs and pulled back with the repulsion, one backward pass through the network.
* ``SVGD xP, loop, drive=...``: both steps with the ensemble's particles run by a loop of
  ``functional_call`` over the stacked tensors instead of ``vmap`` (``vectorize=False``).
* ``loop of P MAP steps``: P separate models, each doing the MAP step. It is less work than a
  looped SVGD step (no kernel, no repulsion pass), so the vectorised step beating it beats any loop.

Models (tensorized, method "map", the ranks of a fresh model):
``digits``: the default experiment's 64-256-10 TTM classifier on 64 features; ``fc``: the Fashion-MNIST
784-512-10 TTM classifier; ``cnn``: the LeNet-style net of issue 14 (TT conv 1->32 5x5, TT conv 32->64
5x5, TT FC 3136->512, FC 512->10); the last two on 28x28 inputs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, paired_ratios, print_table  # noqa: E402

import bayestensor as bt  # noqa: E402

N = 60_000


def build(kind: str) -> nn.Module:
    """The benchmarked model (see the module docstring)."""
    kw = {"format": "tt", "max_rank": 16, "method": "map"}
    if kind == "digits":
        from bayestensor.experiments.registry import default_config, get_experiment

        return get_experiment("digits-fc").build_model(default_config("digits-fc"))
    if kind == "fc":
        return nn.Sequential(
            nn.Flatten(),
            bt.TensorizedLinear(784, 512, format="ttm", max_rank=14, method="map"),
            nn.ReLU(),
            bt.TensorizedLinear(512, 10, format="ttm", max_rank=14, method="map"),
        )
    return nn.Sequential(
        bt.TensorizedConv2d(1, 32, 5, padding=2, **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),
        bt.TensorizedConv2d(32, 64, 5, padding=2, **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        bt.TensorizedLinear(3136, 512, **kw),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("digits", "fc", "cnn"), default="cnn")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    p = args.particles
    x = torch.rand(args.batch, 64) if args.model == "digits" else torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))

    def map_step_of(model: nn.Module):
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, alpha=0.9, eps=1e-6)

        def step() -> None:
            loss = F.cross_entropy(model(x), y) + bt.prior_loss(model) / N
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    model = build(args.model)
    single = map_step_of(model)
    loop_steps = [map_step_of(copy.deepcopy(model)) for _ in range(p)]

    def svgd_step_of(vectorize: bool, drive: str):
        ens = bt.Ensemble.clone(model, p, jitter=0.01)
        ens.vectorize = vectorize
        opt = torch.optim.RMSprop(ens.parameters(), lr=1e-5, alpha=0.9, eps=1e-6)
        svgd = bt.SVGD(ens, opt, num_data=N, drive=drive)

        def step() -> None:
            logits = ens(x)  # (P, B, 10)
            losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(p), reduction="none").view(p, -1).mean(1)
            svgd.step(losses, logits)

        return step

    def loop() -> None:
        for s in loop_steps:
            s()

    svgd_cases = {
        f"SVGD x{p}, {'vmap' if v else 'loop'}, drive={d}": svgd_step_of(v, d)
        for v in (True, False)
        for d in bt.inference.svgd.DRIVES
    }
    names = {"MAP": single, **svgd_cases, f"loop of {p} MAP steps": loop}
    samples = interleaved_samples(names, rounds=args.rounds, inner=1)
    ratios = paired_ratios(samples, "MAP")
    vs_loop = paired_ratios(samples, f"loop of {p} MAP steps")
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rows = [[k, f"{medians[k] * 1e3:.1f}", f"{ratios[k]:.2f}x", f"{vs_loop[k]:.2f}x"] for k in samples]
    print_table(
        f"one step, {args.model} model, batch {args.batch}, {args.threads} thread(s), "
        f"{bt.count_params(model):,} params per model",
        ["case", "median ms", "/ MAP step", "/ loop"],
        rows,
    )
    best = min(svgd_cases, key=ratios.__getitem__)
    print(
        f"fastest SVGD x{p} step: {best}, {ratios[best]:.2f}x a MAP step (target <= {p}), "
        f"{vs_loop[best]:.2f}x a loop of {p} MAP steps (target < 1)"
    )


if __name__ == "__main__":
    main()
