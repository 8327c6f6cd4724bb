"""``bayestensor env``: versions, threads and devices, for bug reports."""

from __future__ import annotations

import argparse
import platform


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("env", help="print versions, threads and devices (paste into bug reports)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the environment table."""
    import numpy
    import opt_einsum
    import torch

    import bayestensor

    rows = {
        "bayestensor": bayestensor.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "opt_einsum": opt_einsum.__version__,
        "torch threads": str(torch.get_num_threads()),
        "cuda available": str(torch.cuda.is_available()),
        "cuda devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "-",
        "formats": ", ".join(bayestensor.available_formats()),
        "priors": ", ".join(bayestensor.available_priors()),
    }
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    return 0
