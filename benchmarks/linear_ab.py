"""A/B of the planned contractions: this checkout's ``bayestensor.functional`` against a git revision's.

Run:  python benchmarks/linear_ab.py [--base REV] [--rounds 25] [--batch 256] [--no-input-grad] [--bias]
      [--only SUBSTRING ...]

Both versions run side by side in one process on the same factors: the revision's
``src/bayestensor/functional/`` is extracted with ``git archive`` and imported as a separate
package (before its split into planning / cost model / two-stage / reconstruction modules it was
one ``contraction.py``; either loads). Cases,
all fwd+bwd of 1024 × 1024 with ``in_shape = out_shape = (4, 4, 8, 8)`` at batch 256 (``--batch``), float32:

* ``factorized_linear`` of each format (the strategy its cost model picks), against ``nn.Linear``;
  with ``--no-input-grad`` as a network's first layer (``x`` needs no gradient, for either); with
  ``--bias`` both with a bias, which ``nn.Linear`` adds within its GEMM, each checkout's
  ``factorized_linear`` where it takes one, and a revision whose ``factorized_linear`` takes none
  after it, as its layer did;
* the reconstruction of ``W`` alone (``reconstruct_matrix``, then backward of a fixed gradient),
  this checkout's time over the base's;
* a copy of a TTM-weight-sized tensor into ``(out, in)`` layout from the interleaved ``(m_k, n_k)``
  layout and from the grouped one.

Ratios are medians over rounds of each case's time over the reference's in the same round; the
``factorized_linear`` table also gives each case's time over the base revision's directly.
``--only`` keeps the cases whose name (``"tt r=16"``) contains one of the given substrings.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_samples, paired_ratios, print_table  # noqa: E402

import bayestensor as bt  # noqa: E402
from bayestensor import functional as current  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE = (4, 4, 8, 8)
CASES = (
    ("ttm", 4),
    ("ttm", 38),
    ("tt", 16),
    ("tt", 76),
    ("tucker", 4),
    ("tucker", [3, 3, 6, 6, 3, 3, 6, 6]),
    ("cp", 1024),
)


def load_revision(rev: str) -> types.ModuleType:
    """``bayestensor/functional/`` as it was at ``rev``, imported as its own package ``functional_<rev>``."""
    archive = subprocess.run(
        ["git", "archive", rev, "src/bayestensor/functional"], cwd=REPO, capture_output=True, check=True
    ).stdout
    root = Path(tempfile.mkdtemp(prefix="linear_ab_"))
    name = "functional_" + re.sub(r"\W", "_", rev)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                text = tar.extractfile(member).read().decode()
                # imports of the rest of the package (formats, ...) resolve to this checkout's
                text = re.sub(r"from \.\.(\w+)", r"from bayestensor.\1", text)
                (root / name).mkdir(exist_ok=True)
                (root / name / Path(member.name).name).write_text(text)
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


def with_bias(mod: types.ModuleType, x: torch.Tensor, fmt: str, factors, ranks, bias) -> torch.Tensor:
    """``mod.factorized_linear`` plus ``bias`` (``None``: none): passed in where it takes one, else added after."""
    if bias is None:
        return mod.factorized_linear(x, fmt, factors, SHAPE, SHAPE, ranks)
    if "bias" in inspect.signature(mod.factorized_linear).parameters:
        return mod.factorized_linear(x, fmt, factors, SHAPE, SHAPE, ranks, bias=bias)
    return mod.factorized_linear(x, fmt, factors, SHAPE, SHAPE, ranks) + bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="f21ddcb", help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--no-input-grad", action="store_true", help="x needs no gradient (a first layer)")
    parser.add_argument("--bias", action="store_true", help="every layer with a bias (nn.Linear's too)")
    parser.add_argument("--only", nargs="+", default=None, help="cases whose name contains one of these")
    args = parser.parse_args()
    cases = [(f, r) for f, r in CASES if args.only is None or any(o in f"{f} r={r}" for o in args.only)]
    torch.manual_seed(0)
    base = load_revision(args.base)
    x = torch.randn(args.batch, 1024, requires_grad=not args.no_input_grad)
    dense = torch.nn.Linear(1024, 1024, bias=args.bias)
    bias = dense.bias
    grad_w = torch.randn(1024, 1024)
    linear = {"nn.Linear": lambda: dense(x).sum().backward()}
    recon = {}
    for fmt, rank in cases:
        layer = bt.TensorizedLinear(1024, 1024, format=fmt, max_rank=rank, in_shape=SHAPE, out_shape=SHAPE)
        ranks, factors = tuple(layer.weight.ranks), list(layer.weight.factors)
        for tag, mod in ((args.base, base), ("this checkout", current)):
            linear[f"{fmt} r={rank} {tag}"] = lambda mod=mod, f=factors, fmt=fmt, r=ranks: (
                with_bias(mod, x, fmt, f, r, bias).sum().backward()
            )
            recon[f"{fmt} r={rank} {tag}"] = lambda mod=mod, f=factors, fmt=fmt, r=ranks: mod.reconstruct_matrix(
                fmt, f, SHAPE, SHAPE, r
            ).backward(grad_w)
    samples = interleaved_samples(linear, rounds=args.rounds, inner=2)
    lin = paired_ratios(samples, "nn.Linear")
    rows = []
    for k, v in lin.items():
        ab = ""
        if k.endswith(" this checkout"):
            ab = f"{paired_ratios(samples, k[: -len('this checkout')] + args.base)[k]:.3f}x"
        rows.append([k, f"{v:.3f}x", ab])
    print_table("factorized_linear fwd+bwd", ["case", "time / nn.Linear", f"time / {args.base}'s"], rows)
    rec = interleaved_samples(recon, rounds=args.rounds, inner=2)
    rows = []
    for fmt, rank in cases:
        old_key, new_key = f"{fmt} r={rank} {args.base}", f"{fmt} r={rank} this checkout"
        rows.append([f"{fmt} r={rank}", f"{paired_ratios(rec, old_key)[new_key]:.3f}x"])
    print_table(f"reconstruct_matrix fwd+bwd, this checkout / {args.base}", ["case", "ratio"], rows)
    interleaved = torch.randn(4, 4, 4, 4, 8, 8, 8, 8)  # (m1, n1, m2, n2, m3, n3, m4, n4)
    grouped = torch.randn(4, 4, 4, 4, 8, 8, 8, 8)  # (m1, m2, n1, n2, m3, m4, n3, n4)
    copies = {
        "interleaved (m_k, n_k)": lambda: interleaved.permute(0, 2, 4, 6, 1, 3, 5, 7).contiguous(),
        "grouped": lambda: grouped.permute(0, 1, 4, 5, 2, 3, 6, 7).contiguous(),
        "plain copy": lambda: grouped.clone(),
    }
    cop = paired_ratios(interleaved_samples(copies, rounds=args.rounds), "plain copy")
    print_table("TTM weight into (out, in) layout, time / plain copy", ["layout of the source", "ratio"],
                [[k, f"{v:.2f}x"] for k, v in cop.items()])  # fmt: skip


if __name__ == "__main__":
    main()
