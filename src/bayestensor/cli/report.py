"""``bayestensor report RUN_DIR [RUN_DIR ...]``: re-print reports, write report.md and plots."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("report", help="re-print a run's report; write report.md and the plots")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="folder for the comparison plot of several runs (default: first run)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write and print each run's report; with several runs, plot accuracy against compression."""
    from ..experiments.report import ReportError, compare_runs, read_run, summary_lines, write_report

    try:
        for d in args.run_dirs:
            path = write_report(d)
            print("\n".join(summary_lines(read_run(d)[0])))
            print(f"\nwrote {path}")
        if len(args.run_dirs) > 1:
            print(f"wrote {compare_runs(args.run_dirs, args.out or args.run_dirs[0])}")
    except ReportError as err:
        print(f"bayestensor report: error: {err}", file=sys.stderr)
        return 2
    return 0
