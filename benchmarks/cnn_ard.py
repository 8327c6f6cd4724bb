"""CNNs a user writes, tensorized from scratch with bt.tensorize and trained through bt.ARD on real Fashion-MNIST.

python benchmarks/cnn_ard.py [--models lenet5,vgg,resnet20] [--variants dense,fixed,map,svi] [--epochs 3]
                             [--train-limit 0] [--kl-weight 1.0] [--tolerance T [--holdout N]] [--finetune K]
                             [--target R] [--curve R1,R2,... [--plot FILE]] [--lr-schedule constant|cosine]
                             [--init random|frames]
                             [--save FILE.jsonl] [--threads N] [--smoke]
python benchmarks/cnn_ard.py --plot-from A.jsonl,B.jsonl --plot FILE   # plot runs saved by --save (no training)

Every model is built dense (plain torch.nn), then ``bt.tensorize(net, format="tt", method=..., init="random")``
(``--init frames``: isometric frames, ``bt.tensorize``'s ``init="frames"``)
with the library's defaults (ranks from a 10 % parameter budget, layers of >= 10,000 parameters) and the same
recipe for all three: Adam 1e-3 (held, or with ``--lr-schedule cosine`` decayed to 0 by a per-step cosine),
batch 128, ``bt.ARD`` with its default warm-up and pruning every epoch. The dense twin trains with the same
epochs and schedule. Prints test accuracy, the compression of the tensorized layers
(their dense parameters over their stored ones) and any collapsed layer. ``--smoke`` runs a few steps on
random images (the CI check that the script works).
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bayestensor as bt


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10),
    )  # fmt: skip


def vgg() -> nn.Module:
    def block(a, b):
        return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), *block(128, 128), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


class Basic(nn.Module):
    def __init__(self, a: int, b: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b)
        self.c2, self.b2 = nn.Conv2d(b, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b)
        self.short = (
            nn.Sequential(nn.Conv2d(a, b, 1, stride, bias=False), nn.BatchNorm2d(b)) if stride != 1 or a != b else None
        )

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(out + (x if self.short is None else self.short(x)))


def resnet20() -> nn.Module:
    """CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels) for 1-channel 28x28 images."""
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    a = 16
    for b, stride in ((16, 1), (32, 2), (64, 2)):
        for k in range(3):
            layers.append(Basic(a, b, stride if k == 0 else 1))
            a = b
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


MODELS = {"lenet5": lenet5, "vgg": vgg, "resnet20": resnet20}


def load(args):
    if args.smoke:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(96, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (96,), generator=g)
        return x[:64], y[:64], x[64:], y[64:]
    from bayestensor.data import load_fashion_mnist

    ds = load_fashion_mnist(args.data_dir or None)
    xtr, ytr, xte, yte = ds.train.images, ds.train.labels, ds.test.images, ds.test.labels
    if args.train_limit:
        xtr, ytr = xtr[: args.train_limit], ytr[: args.train_limit]
    return xtr[:, None] if xtr.dim() == 3 else xtr, ytr, xte[:, None] if xte.dim() == 3 else xte, yte


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000))
    return hits / len(x)


def validation_loss(model, x, y) -> float:
    """Mean cross-entropy on held-out images, in eval mode (the model is put back in training mode)."""
    model.eval()
    with torch.no_grad():
        total = sum(float(F.cross_entropy(model(x[i : i + 1000]), y[i : i + 1000], reduction="sum"))
                    for i in range(0, len(x), 1000))  # fmt: skip
    model.train()
    return total / len(x)


def prior_kwargs(args) -> dict:
    """The rank prior's ``scale_free`` / ``scale_floor`` options given on the command line."""
    return {
        **({"scale_free": 1} if args.scale_free else {}),
        **({"scale_floor": args.scale_floor} if args.scale_floor is not None else {}),
    }


def run(name: str, variant: str, data, args, target: float | None = None) -> dict:
    xtr, ytr, xte, yte = data
    if args.holdout:  # the last training images validate the pruning passes (never the test images)
        xtr, ytr, xva, yva = xtr[: -args.holdout], ytr[: -args.holdout], xtr[-args.holdout :], ytr[-args.holdout :]
    torch.manual_seed(args.seed)
    net = MODELS[name]()
    dense_total = sum(p.numel() for p in net.parameters())
    summary = []
    if variant != "dense":
        method = None if variant == "fixed" else variant
        options = prior_kwargs(args)
        net, summary = bt.tensorize(
            net, format=args.format, method=method, init=args.init, start_fraction=args.start_fraction,
            **({"prior_kwargs": options} if options and method else {}),
        )  # fmt: skip
    factors = [p for n, p in net.named_parameters() if ".factors." in n or ".raw_scales." in n]
    others = [p for n, p in net.named_parameters() if not (".factors." in n or ".raw_scales." in n)]
    groups = [{"params": others}] + ([{"params": factors, "lr": args.factor_lr}] if factors else [])
    opt = torch.optim.Adam(groups, lr=1e-3)
    steps = args.epochs * -(-len(xtr) // args.batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if args.lr_schedule == "cosine" else None
    bayes = variant in ("map", "svi")
    ard = None
    if bayes:
        kw = {"kl_weight": args.kl_weight, "target_compression": target, "tolerance": args.tolerance}
        if args.finetune is not None:
            kw["finetune_epochs"] = args.finetune
        ard = bt.ARD(net, opt, num_data=len(xtr), epochs=args.epochs, **kw)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        net.train()
        for idx in torch.randperm(len(xtr)).split(args.batch_size):
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            loss = ard.loss(loss) if bayes else loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
        if bayes:
            ard.end_epoch((lambda: validation_loss(net, xva, yva)) if args.holdout else None)
    seconds = time.perf_counter() - t0
    layers = bt.inference.tensorized_layers(net)
    dense_t = sum(m.dense_params() for _, m in layers)
    stored_t = sum(m.get_num_params() for _, m in layers)
    return {
        "model": name,
        "variant": variant,
        "accuracy": accuracy(net, xte, yte),
        "params": sum(p.numel() for n, p in net.named_parameters() if "raw_scales" not in n),
        "dense_params": dense_total,
        "tensorized_compression": dense_t / stored_t if stored_t else 1.0,
        "collapsed": ard.collapsed if ard else [],
        "ranks": bt.ranks(net),
        "seconds": seconds,
        "tensorized": [r["layer"] for r in summary],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="lenet5,vgg,resnet20")
    p.add_argument("--variants", default="dense,fixed,map,svi")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--format", default="tt")
    p.add_argument("--factor-lr", type=float, default=1e-3)
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="cosine: every lr decays to 0 per step",
    )
    p.add_argument("--start-fraction", type=float, default=0.1)
    p.add_argument("--init", choices=("random", "frames"), default="random", help="bt.tensorize's init")
    p.add_argument("--scale-free", action="store_true", help="the prior ignores each layer's overall scale")
    p.add_argument(
        "--scale-floor", type=float, default=None, help="the prior's scale_floor (default: the library's; 0: off)"
    )
    p.add_argument("--target", type=float, default=None, help="ARD target_compression of the tensorized layers")
    p.add_argument("--tolerance", type=float, default=None, help="ARD tolerance: allowed relative rise of the loss")
    p.add_argument("--finetune", type=float, default=None, help="ARD finetune_epochs (default: ARD's own)")
    p.add_argument("--holdout", type=int, default=0, help="hold out this many training images; prune by their loss")
    p.add_argument("--curve", default="", help="comma-separated targets: MAP runs at each, plotted to --plot")
    p.add_argument("--plot", default="compression_accuracy.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--save", default="", help="append every run's result to this JSON-lines file")
    p.add_argument("--plot-from", default="", help="plot the --models runs saved in these comma-separated files")
    args = p.parse_args()
    if args.plot_from:
        saved = [json.loads(line) for f in args.plot_from.split(",") for line in Path(f).read_text().splitlines()]
        names = [n for n in args.models.split(",") if any(r["model"] == n for r in saved)]
        out = Path(args.plot)
        for name in names:  # one plot per model: FILE itself for one, FILE's stem + _model for several
            rows = [r for r in saved if r["model"] == name]
            curve = sorted((r for r in rows if r.get("target")), key=lambda r: r["target"])
            path = out if len(names) == 1 else out.with_name(f"{out.stem}_{name}{out.suffix}")
            plot(name, [r for r in rows if not r.get("target")] + curve, len(curve), path, rows[0]["epochs"])
        return
    if args.holdout and args.tolerance is None:
        p.error("--holdout prunes within --tolerance; give both")
    if args.smoke:
        args.epochs, args.batch_size = 1, 32
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load(args)
    print("| model | variant | test accuracy | params | tensorized-layer compression | collapsed | train s |")
    print("|---|---|---|---|---|---|---|")
    curve = [float(t) for t in args.curve.split(",") if t]
    for name in args.models.split(","):
        rows = [(v, args.target) for v in args.variants.split(",")] + [("map", t) for t in curve]
        results = []
        for variant, target in rows:
            r = run(name, variant, data, args, target)
            results.append(r)
            if args.save:
                with open(args.save, "a") as f:
                    f.write(json.dumps({**r, "target": target, "epochs": args.epochs, "seed": args.seed}) + "\n")
            label = r["variant"] + (f" target {target:g}x" if target else "")
            print(
                f"| {r['model']} | {label} | {r['accuracy']:.4f} | {r['params']:,} | "
                f"{r['tensorized_compression']:.1f}x | {', '.join(r['collapsed']) or 'none'} | {r['seconds']:.0f} |",
                flush=True,
            )
        if curve:
            plot(name, results, len(curve), Path(args.plot), args.epochs)


def plot(name: str, results: list[dict], n_curve: int, path: Path, epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    pts = results[-n_curve:]
    ax.plot([r["tensorized_compression"] for r in pts], [r["accuracy"] for r in pts], "o-", label="MAP + target")
    for r in results[:-n_curve]:
        if r["variant"] == "dense":
            ax.axhline(r["accuracy"], color="k", ls="--", lw=1, label="dense")
            ax.axhline(r["accuracy"] - 0.01, color="k", ls=":", lw=1, label="dense − 1 point")
        else:
            ax.plot(r["tensorized_compression"], r["accuracy"], "s", label=r["variant"])
    ax.set_xscale("log")
    ax.set_xlabel("compression of the tensorized layers")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{name}, Fashion-MNIST ({epochs} epochs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
