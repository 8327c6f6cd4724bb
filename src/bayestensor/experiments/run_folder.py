"""Where a run writes: its folder, never one that holds an earlier run unless it resumes that run."""

from __future__ import annotations

from pathlib import Path

#: Files whose presence means a folder holds a run (finished, or interrupted and resumable).
RUN_FILES = ("checkpoint.pt", "report.json", "metrics.jsonl", "config.toml")


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds any file of an earlier run (:data:`RUN_FILES`)."""
    return any((path / name).exists() for name in RUN_FILES)


def fresh_run_dir(path: Path) -> Path:
    """``path`` when it holds no run, else the first of ``path-2``, ``path-3``, … that holds none.

    A new run never writes into an earlier one's folder: a finished run's report and an interrupted
    run's checkpoint (which ``--resume`` would continue) are kept.
    """
    if not holds_run(path):
        return path
    k = 2
    while holds_run(path.with_name(f"{path.name}-{k}")):
        k += 1
    return path.with_name(f"{path.name}-{k}")


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (missing on one side included)."""
    keys = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{prefix}{key}.")
        elif a != b or (key in saved) != (key in current):
            keys.append(f"{prefix}{key}")
    return keys
