"""``bayestensor train [EXPERIMENT]``: train a built-in experiment and write its run folder."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("train", help="train a built-in experiment (default: digits-fc)")
    p.add_argument("experiment", nargs="?", default="digits-fc", help="experiment name (see 'bayestensor experiments')")
    p.add_argument("--format", choices=None, help="tensor format: cp, tucker, tt, ttm")
    p.add_argument("--method", help="map, svi, none (fixed ranks), or svgd / sghmc (MAP, then the [sampler] phase)")
    p.add_argument("--prior", help="half_cauchy, log_uniform or inverse_gamma")
    p.add_argument("--max-rank", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--data-dir", help="folder holding the dataset's standard files (never downloaded)")
    p.add_argument("--out", help="parent folder of run folders (default: runs)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--dense", action="store_true", help="train the uncompressed twin with the same recipe")
    p.add_argument(
        "--compile",
        nargs="?",
        const="on",
        metavar="on|auto|off",
        help="train the batch objective under torch.compile; --compile=auto falls back to eager if it cannot",
    )
    p.add_argument("--config", help="TOML file with [model], [train], [data] sections")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set train.kl_weight=0.1",
    )
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="criteo-dlrm: synthetic clicks at the true table sizes (same as --set data.synthetic=true)",
    )
    p.add_argument("--smoke", action="store_true", help="shrink data, epochs and model (for tests)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(run=run)


FLAGS = {
    "format": "model.format",
    "method": "model.method",
    "prior": "model.prior",
    "max_rank": "model.max_rank",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "data_dir": "data.data_dir",
    "out": "out",
    "device": "train.device",
    "compile": "train.compile",
}


def build_config(args: argparse.Namespace):
    """Resolve defaults < experiment defaults < --config < flags < --set < --smoke/--dense."""
    from ..experiments import apply_override, default_config, get_experiment, load_toml, merge

    exp = get_experiment(args.experiment)
    cfg = default_config(exp.name)
    if args.config:
        data = load_toml(args.config)
        if data.get("experiment", exp.name) != exp.name:
            from ..experiments import ConfigError

            raise ConfigError(f"config file is for experiment {data['experiment']!r}, not {exp.name!r}")
        merge(cfg, data)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            apply_override(cfg, f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    if args.synthetic:
        apply_override(cfg, "data.synthetic=true")
    for assignment in args.set:
        apply_override(cfg, assignment)
    if args.smoke:
        exp.smoke(cfg)
    if args.dense:
        cfg.model.dense = True
    return cfg


def run(args: argparse.Namespace) -> int:
    """Train and print the summary (rank 0 only under torchrun); exit code 2 for bad configs, data or checkpoints.

    Multi-process: ``torchrun --nproc-per-node N -m bayestensor train ...`` (see
    :mod:`bayestensor.experiments.distributed`).
    """
    import os

    from ..experiments import CheckpointError, ConfigError, train
    from ..experiments.progress import Console
    from ..experiments.run_state import COLLAPSE_RATIO

    try:
        cfg = build_config(args)
        console = Console(quiet=True if args.quiet else None)
        report = train(cfg, resume=args.resume, console=console)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"bayestensor train: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    metric = f"test AUC {report['test_auc']:.4f}  accuracy" if "test_auc" in report else "test accuracy"
    layers = report.get("tensorized_layers_compression")
    print(
        f"{report['experiment']} [{report['format']}/{report['method']}]  "
        f"{metric} {report['test_accuracy']:.4f}  params {report['params']:,}  "
        f"dense params {report['dense_params']:,}  compression {report['compression']:.1f}x"
        + (f" (tensorized layers {layers:.1f}x)" if layers else "")
        + f"  ({report['train_seconds']:.1f}s)\nreport: {report['run_dir']}/report.json"
    )
    if report.get("collapsed_layers"):
        print(
            f"warning: {len(report['collapsed_layers'])} tensorized layer(s) collapsed to ~0 during training "
            f"({', '.join(report['collapsed_layers'])}): their weights shrank under {COLLAPSE_RATIO:.0%} of their "
            "initial RMS, so their compression is not meaningful; see report.md",
            file=sys.stderr,
        )
    return 0
