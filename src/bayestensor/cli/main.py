"""``bayestensor`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import env, experiments, report, train

COMMANDS = (train, experiments, report, env)
#: Modules of the ``experiments`` extra (``pip install "bayestensor[experiments]"``) that the commands need.
EXTRA_MODULES = ("rich", "matplotlib", "sklearn")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="bayestensor",
        description="Train compact tensorized networks with Bayesian automatic rank determination.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayestensor`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(
            f"bayestensor {args.command}: interrupted; a run's last checkpoint is kept, and --resume continues it",
            file=sys.stderr,
        )
        return 130
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in EXTRA_MODULES:
            raise
        print(
            f"bayestensor {args.command}: needs {err.name!r}, part of the experiments extra; install it with "
            'pip install "bayestensor[experiments]" (or pip install -e ".[experiments]" from a checkout)',
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
