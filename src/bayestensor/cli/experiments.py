"""``bayestensor experiments``: the table of built-in experiments."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("experiments", help="list the built-in experiments")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one row per registered experiment."""
    from rich.console import Console
    from rich.table import Table

    from ..experiments import available_experiments, get_experiment

    table = Table(title="built-in experiments (bayestensor train NAME)")
    for col in ("name", "model", "data"):
        table.add_column(col)
    for name in available_experiments():
        exp = get_experiment(name)
        table.add_row(name, exp.description, exp.data)
    Console(width=140).print(table)
    return 0
