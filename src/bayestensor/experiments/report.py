"""Run reports: ``report.md`` and matplotlib plots from a run folder's ``report.json`` and ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch

from .run_state import COLLAPSE_RATIO

#: Most legend entries drawn inside the axes; a plot with more lines (one per layer and bond, e.g. a ViT's 48)
#: gets its legend beside the axes, in columns of at most :data:`LEGEND_ROWS` entries.
LEGEND_INSIDE = 12
LEGEND_ROWS = 24


class ReportError(ValueError):
    """A run folder without a readable report."""


#: Keys every run's ``report.json`` holds, which the summary and the plots read.
REQUIRED_KEYS = ("experiment", "format", "method", "test_accuracy", "params", "dense_params", "compression")


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``report.json`` and the rows of ``metrics.jsonl`` of a run folder."""
    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise ReportError(f"{str(run_dir)!r} has no report.json; expected a folder written by 'bayestensor train'")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(report, dict):
        raise ReportError(f"{str(path)!r} holds a JSON {type(report).__name__}; expected an object (a run's report)")
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ReportError(f"{str(path)!r} lacks {missing}; expected a report written by 'bayestensor train'")
    metrics = []
    mpath = run_dir / "metrics.jsonl"
    if mpath.is_file():
        for number, line in enumerate(mpath.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ReportError(f"{str(mpath)!r}, line {number}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise ReportError(f"{str(mpath)!r}, line {number}: expected a JSON object, got {line[:40]!r}")
            metrics.append(row)
    return report, metrics


#: The scores of a classification run, in the order a report row lists them: report key → name.
SCORES = {"test_accuracy": "accuracy", "accuracy": "accuracy", "nll": "NLL", "ece": "ECE", "ood_auroc": "OOD AUROC"}


def _scores_row(label: str, scores: dict[str, float], names: dict[str, str]) -> str:
    """``| label: a / b | x / y |``: the scores of ``names`` (key → name) that ``scores`` holds, in that order."""
    keys = [k for k in names if k in scores]
    return f"| {label}: {' / '.join(names[k] for k in keys)} | {' / '.join(f'{scores[k]:.4f}' for k in keys)} |"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Markdown lines summarising one run."""
    lines = [
        f"# {report['experiment']}: {report['format']} / {report['method']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test accuracy | {report['test_accuracy']:.4f} |",
        f"| accuracy before final prune | {report.get('accuracy_before_prune', float('nan')):.4f} |",
        f"| NLL | {report.get('nll', float('nan')):.4f} |",
        f"| ECE | {report.get('ece', float('nan')):.4f} |",
        *([f"| OOD AUROC (predictive entropy) | {report['ood_auroc']:.4f} |"] if "ood_auroc" in report else []),
        *(
            [
                f"| confidence (mean top-class probability) | {report['confidence']:.4f} |",
                _scores_row("members, mean of their own", report["members"], {**SCORES, "confidence": "confidence"}),
            ]
            if "members" in report
            else []
        ),
        *(
            [f"| posterior particles (stored params are per particle) | {report['predictive_samples']} |"]
            if "sampler" in report
            else []
        ),
        *([_scores_row("the MAP fit before the sampler", report["map_fit"], SCORES)] if report.get("map_fit") else []),
        f"| stored params | {report['params']:,} |",
        f"| params at max rank | {report.get('initial_params', report['params']):,} |",
        f"| dense params | {report['dense_params']:,} |",
        f"| compression | {report['compression']:.2f}x |",
        *(
            [
                f"| tensorized layers: compression | {report['tensorized_layers_compression']:.2f}x "
                f"({report['tensorized_layers_dense_params']:,} → {report['tensorized_layers_params']:,}) |"
            ]
            if report.get("tensorized_layers_compression")
            else []
        ),
        f"| prune threshold (relative λ) | {report.get('prune_threshold')} |",
        f"| epochs | {report['epochs']} |",
        f"| train seconds | {report['train_seconds']:.1f} |",
        *(
            [f"| scoring seconds (test metrics, not training) | {report['scoring_seconds']:.1f} |"]
            if "scoring_seconds" in report
            else []
        ),
        f"| peak RSS (MB) | {report['peak_rss_mb']:.0f} |",
        "",
    ]
    if "test_auc" in report:
        lines[4:4] = [
            f"| test AUC | {report['test_auc']:.4f} |",
            f"| test log loss | {report['test_logloss']:.4f} |",
            f"| teacher AUC (Bayes-optimal, synthetic) | {report.get('teacher_auc', float('nan')):.4f} |",
            f"| training samples/s | {report['samples_per_second']:,.0f} |",
            f"| processes | {report.get('world_size', 1)} |",
            f"| tensorized tables: dense-equivalent params | {report['tensorized_tables_dense_params']:,} |",
            f"| tensorized tables: stored params | {report['tensorized_tables_params']:,} |",
            f"| tensorized tables: compression | {report['tensorized_tables_compression']:,.0f}x |",
        ]
    lines += [
        "| layer | format | out × in shape | initial ranks | final ranks | params | dense params | weight RMS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, layer in report.get("layers", {}).items():
        rms = "n/a"
        if "weight_rms" in layer:
            rms = f"{layer['initial_weight_rms']:.3g} → {layer['weight_rms']:.3g}"
            rms += " (collapsed)" if layer["collapsed"] else ""
        lines.append(
            f"| {name} | {layer['format']} | {layer['out_shape']} × {layer['in_shape']} | {layer['initial_ranks']} "
            f"| {layer['final_ranks']} | {layer['params']:,} | {layer['dense_params']:,} | {rms} |"
        )
    if report.get("collapsed_layers"):
        lines += [
            "",
            f"**Collapsed layers** (weight RMS under {COLLAPSE_RATIO:.0%} of its initial value): "
            f"{', '.join(report['collapsed_layers'])}. They compute almost nothing, so their compression "
            "says nothing about the ranks the data need.",
        ]
    return lines


def _save_with_legend(fig: Figure, ax: Any, path: Path) -> None:
    """Save ``fig`` with the legend of ``ax``: inside for a few lines, beside the axes in columns for many."""
    count = len(ax.get_legend_handles_labels()[0])
    if count <= LEGEND_INSIDE:
        if count:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=-(-count // LEGEND_ROWS))
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _plot_history(run_dir: Path, metrics: list[dict[str, Any]]) -> list[str]:
    if not metrics:
        return []
    epochs = [m["epoch"] + 1 for m in metrics]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for layer in metrics[-1]["ranks"]:
        for b in range(len(metrics[-1]["ranks"][layer])):
            ax.plot(epochs, [m["ranks"].get(layer, [0] * (b + 1))[b] for m in metrics], label=f"{layer} bond {b}")
    ax.set(xlabel="epoch", ylabel="rank", title="ranks per layer and bond")
    _save_with_legend(fig, ax, run_dir / "ranks.png")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [m["params"] for m in metrics])
    ax.set(xlabel="epoch", ylabel="stored parameters", title="stored parameters over training", yscale="log")
    fig.tight_layout()
    fig.savefig(run_dir / "params.png", dpi=100)
    return ["ranks.png", "params.png"]


def _plot_spectra(run_dir: Path, report: dict[str, Any]) -> list[str]:
    spectra = report.get("spectra") or {}
    if not spectra:
        return []
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for layer, bonds in spectra.items():
        for b, spectrum in enumerate(bonds):
            ax.semilogy(range(1, len(spectrum) + 1), spectrum, marker="o", label=f"{layer} bond {b}")
    ax.axhline(report.get("prune_threshold", 1e-3), color="k", linestyle="--", linewidth=0.8, label="threshold")
    ax.set(xlabel="rank index (sorted)", ylabel="λ / max λ", title="rank-variance spectra at the end")
    _save_with_legend(fig, ax, run_dir / "spectrum.png")
    return ["spectrum.png"]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and the PNG plots of one run; returns the markdown path."""
    run_dir = Path(run_dir)
    report, metrics = read_run(run_dir)
    plots = _plot_history(run_dir, metrics) + _plot_spectra(run_dir, report)
    lines = summary_lines(report) + [""] + [f"![{p}]({p})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def compare_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Plot test accuracy against compression for several runs; returns the PNG path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {str(out)!r} is a file; expected a folder for the comparison plot")
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for d in run_dirs:
        report, _ = read_run(d)
        ax.scatter(report["compression"], report["test_accuracy"])
        ax.annotate(
            f"{report['format']}/{report['method']}", (report["compression"], report["test_accuracy"]), fontsize=7
        )
    ax.set(
        xscale="log",
        xlabel="compression (dense / stored params)",
        ylabel="test accuracy",
        title="accuracy against compression",
    )
    fig.tight_layout()
    path = out / "accuracy_vs_compression.png"
    fig.savefig(path, dpi=100)
    return path
