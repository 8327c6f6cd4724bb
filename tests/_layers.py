"""One example per registered layer type (bayestensor.LAYER_TYPES): a dense module and an input for it.

Tests that run every layer type iterate over LAYER_TYPES and look the example up here;
``test_every_layer_type_has_an_example`` fails when a new type is registered without one.
"""

import torch
from torch import nn

import bayestensor as bt


def _mha_call(m, x):
    return m(x, x, x, need_weights=False)[0]


EXAMPLES = {
    bt.TensorizedLinear: (lambda: nn.Linear(24, 30), lambda: torch.randn(5, 24), lambda m, x: m(x)),
    bt.TensorizedConv2d: (lambda: nn.Conv2d(6, 8, 3, padding=1), lambda: torch.randn(2, 6, 7, 7), lambda m, x: m(x)),
    bt.TensorizedConv1d: (
        lambda: nn.Conv1d(6, 8, 5, padding="same", padding_mode="circular"),
        lambda: torch.randn(2, 6, 11),
        lambda m, x: m(x),
    ),
    bt.TensorizedEmbedding: (lambda: nn.Embedding(60, 12), lambda: torch.randint(0, 60, (4, 3)), lambda m, x: m(x)),
    bt.TensorizedMultiheadAttention: (
        lambda: nn.MultiheadAttention(16, 2, batch_first=True),
        lambda: torch.randn(2, 5, 16),
        _mha_call,
    ),
}


def example(layer_type, *, dtype=torch.float32, max_rank=10_000, **kwargs):
    """``(dense, tensorized, x, call)``: the dense module, its full-rank tensorized twin, an input, how to call."""
    make_dense, make_x, call = EXAMPLES[layer_type]
    dense = make_dense().to(dtype)
    ours = layer_type.from_dense(dense, max_rank=max_rank, **kwargs)
    x = make_x()
    if x.is_floating_point():
        x = x.to(dtype)
    return dense, ours, x, call


def prune_some(model):
    """Truncate every Bayesian tensor of ``model`` by a different cut per bond (0–2 components), at least rank 1.

    Stands in for ARD pruning where a test needs pruned, uneven ranks (save/load, export round trips).
    """
    for i, (_, t) in enumerate(bt.inference.bayesian_tensors(model)):
        t.truncate_([torch.arange(max(1, r - 1 - (i + b) % 3)) for b, r in enumerate(t.ranks)])


#: Per layer type, a dense module whose sizes factor badly (primes), so the chosen mode shapes are zero-padded.
PADDED = {
    bt.TensorizedLinear: (lambda: nn.Linear(13, 7), lambda: torch.randn(5, 13)),
    bt.TensorizedConv2d: (lambda: nn.Conv2d(13, 7, 3, padding=1), lambda: torch.randn(2, 13, 5, 5)),
    bt.TensorizedConv1d: (lambda: nn.Conv1d(13, 7, 3), lambda: torch.randn(2, 13, 9)),
    bt.TensorizedEmbedding: (lambda: nn.Embedding(61, 13), lambda: torch.randint(0, 61, (4, 3))),
    bt.TensorizedMultiheadAttention: (
        lambda: nn.MultiheadAttention(13, 1, batch_first=True),
        lambda: torch.randn(2, 5, 13),
    ),
}
