"""Training output: rich progress bars and end-of-epoch tables on a terminal, quiet otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Console:
    """Prints progress with rich when attached to a terminal; quiet otherwise (only final summaries).

    Parameters
    ----------
    quiet
        ``None`` (default): quiet unless stdout is a terminal. ``True`` / ``False`` force it.
    """

    def __init__(self, quiet: bool | None = None) -> None:
        from rich.console import Console as RichConsole

        self.rich = RichConsole()
        self.quiet = (not self.rich.is_terminal) if quiet is None else quiet

    def epoch(self, row: dict[str, Any]) -> None:
        """One end-of-epoch table row: losses, test metrics, parameters, ranks and time."""
        if self.quiet:
            return
        from rich.table import Table

        table = Table(show_header=row["epoch"] == 0, box=None, pad_edge=False)
        cells: dict[str, str] = {"epoch": f"{row['epoch'] + 1:>3}", "loss": f"{row['train_loss']:.4f}"}
        for key, label in (("test_auc", "auc"), ("test_accuracy", "acc"), ("samples_per_second", "samples/s")):
            if key in row:
                cells[label] = f"{row[key]:.4f}" if key != "samples_per_second" else f"{row[key]:,.0f}"
        cells |= {"params": f"{row['params']:,}", "ranks": str(row["ranks"]), "seconds": f"{row['seconds']:.1f}"}
        for col in cells:
            table.add_column(col, no_wrap=col != "ranks")
        table.add_row(*cells.values())
        self.rich.print(table)

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Any]:
        """A transient progress bar over ``total`` steps; yields ``advance()`` (a no-op when quiet)."""
        if self.quiet:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=self.rich, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    def print(self, *args: Any) -> None:
        """Print through rich (also when quiet: summaries and errors); long lines (paths) are not wrapped."""
        self.rich.print(*args, soft_wrap=True)
