"""Embedding fwd+bwd on CPU: TT / TTM against TensorLy-Torch FactorizedEmbedding and nn.EmbeddingBag(sparse=True).

Run:  python benchmarks/embedding.py [--rounds 9] [--threads N]

Three tables from one run, every timing interleaved round by round (medians):
1. 1,000,000 x 64, batch 4096 (bags of one id), rank 16.
2. De-duplication at batch 65,536: Zipf(1.05) against uniform ids (TT rank 16), dedup on and off.
3. Memory: a 10,131,227 x 128 TT table (rows 200 x 220 x 250, rank 16): stored parameters, and the
   peak-RSS rise of one fwd+bwd at batch 4096 (measured in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, print_table  # noqa: E402

from bayestensor.layers.embedding import TensorizedEmbedding  # noqa: E402


def zipf_ids(n: int, vocab: int, s: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` ids with P(rank k) ∝ k^-s over ``vocab`` ids, ranks shuffled onto random ids."""
    weights = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-s)
    ranks = torch.multinomial(weights, n, replacement=True, generator=gen)
    return torch.randperm(vocab, generator=gen)[ranks]


def step(module: nn.Module, *args):
    def run() -> None:
        for p in module.parameters():
            p.grad = None
        module(*args).sum().backward()

    return run


def memory_child() -> None:
    torch.manual_seed(0)
    n = 10_131_227
    emb = TensorizedEmbedding(n, 128, format="tt", max_rank=16, row_shape=(200, 220, 250), mode="sum")
    ids = torch.randint(0, n, (4096,))
    offsets = torch.arange(4096)
    emb(ids[:8], offsets[:8]).sum().backward()  # plans and allocator warm, as in training
    for p in emb.parameters():
        p.grad = None
    before = _status_kb("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS, Linux >= 4.0
        Path("/proc/self/clear_refs").write_text("5")
        after_key = "VmHWM"
    except OSError:
        after_key = None
    emb(ids, offsets).sum().backward()
    after = _status_kb(after_key) if after_key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in emb.parameters())
    print(f"{params} {params * 4} {(after - before) / 1024:.1f}")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child()
        return
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    # 1. speed against TensorLy-Torch and a dense sparse-gradient bag
    vocab, dim, batch, rank = 1_000_000, 64, 4096, 16
    ids = torch.randint(0, vocab, (batch,), generator=gen)
    offsets = torch.arange(batch)
    cases = {
        "bt tt": step(TensorizedEmbedding(vocab, dim, format="tt", max_rank=rank, mode="sum"), ids, offsets),
        "bt ttm": step(TensorizedEmbedding(vocab, dim, format="ttm", max_rank=rank, mode="sum"), ids, offsets),
        "nn.EmbeddingBag(sparse=True)": step(nn.EmbeddingBag(vocab, dim, mode="sum", sparse=True), ids, offsets),
    }
    modules = {}
    try:
        import tltorch

        tl_emb = tltorch.FactorizedEmbedding(vocab, dim, factorization="blocktt", rank=rank)
        cases["tltorch blocktt"] = step(tl_emb, ids)
        modules["tltorch blocktt"] = tl_emb
    except ImportError:
        print("tensorly-torch not installed: skipping its row (pip install tensorly-torch)")
    times = interleaved_medians(cases, rounds=args.rounds, inner=3)
    ref = times.get("tltorch blocktt")
    rows = []
    for name, t in times.items():
        rows.append([name, f"{t * 1e3:.2f}", f"{t / ref:.3f}x" if ref else "-"])
    print_table(
        f"fwd+bwd, {vocab:,} x {dim}, batch {batch}, rank {rank}, CPU threads {torch.get_num_threads()}",
        ["layer", "median ms", "time / tltorch"],
        rows,
    )

    # 2. de-duplication on skewed ids
    big = 65_536
    uniform = torch.randint(0, vocab, (big,), generator=gen)
    zipf = zipf_ids(big, vocab, 1.05, gen)
    offsets = torch.arange(big)
    tt = TensorizedEmbedding(vocab, dim, format="tt", max_rank=rank, mode="sum")
    tt_nodedup = TensorizedEmbedding(vocab, dim, format="tt", max_rank=rank, mode="sum", dedup=False)
    tt_nodedup.load_state_dict(tt.state_dict())
    cases = {
        "zipf, dedup": step(tt, zipf, offsets),
        "uniform, dedup": step(tt, uniform, offsets),
        "zipf, no dedup": step(tt_nodedup, zipf, offsets),
        "uniform, no dedup": step(tt_nodedup, uniform, offsets),
    }
    times = interleaved_medians(cases, rounds=args.rounds, inner=1)
    uniques = {"zipf": int(zipf.unique().numel()), "uniform": int(uniform.unique().numel())}
    rows = [
        [k, f"{uniques[k.split(',')[0]]:,}", f"{t * 1e3:.2f}", f"{times['uniform, dedup'] / t:.2f}x"]
        for k, t in times.items()
    ]
    print_table(
        f"TT rank {rank}, {vocab:,} x {dim}, batch {big:,} (bags of one), fwd+bwd",
        ["ids", "unique ids", "median ms", "speed-up vs uniform+dedup"],
        rows,
    )
    print(f"zipf / uniform speed-up with dedup: {times['uniform, dedup'] / times['zipf, dedup']:.2f}x")

    # 3. memory of a Criteo-size table, in a fresh process
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", "--threads", str(args.threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    params, nbytes, rss = int(out[0]), int(out[1]), float(out[2])
    dense = 10_131_227 * 128 * 4
    print_table(
        "10,131,227 x 128 TT table (200 x 220 x 250), rank 16, fwd+bwd at batch 4096",
        ["stored params", "bytes (fp32)", "dense bytes", "peak RSS rise (MB)"],
        [[f"{params:,}", f"{nbytes / 1e6:.3f} MB", f"{dense / 1e9:.2f} GB", f"{rss:.1f}"]],
    )


if __name__ == "__main__":
    main()
