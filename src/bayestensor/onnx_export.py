"""Export of (pruned) tensorized models to ONNX, with the factors stored, not the dense weights.

The graph contracts the stored factors as the PyTorch forward does, so the file holds the
compressed parameters. The TorchScript-based exporter of ``torch.onnx`` is used: it keeps the
batch axis dynamic, whereas the ``torch.export``-based one specialises it, since each layer's
contraction plan is chosen per batch size (any plan computes the same function; the traced one
is the plan of the example batch). SVI layers export their posterior mean, and say so.
Needs the ``onnx`` extra (``pip install "bayestensor[onnx]"``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .tensors import FactorizedTensor


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    opset_version: int = 17,
) -> Path:
    """Write ``model`` (in eval mode, posterior means) as an ONNX file; returns its path.

    Parameters
    ----------
    model
        Any module built from tensorized and ``torch.nn`` layers.
    example_inputs
        One input tensor or a sequence of them, as ``model(*example_inputs)`` takes.
    path
        Output ``.onnx`` file (folders are created).
    input_names, output_names
        Graph names (default ``input_0``, ``input_1``, …).
    dynamic_batch
        Leave dimension 0 of every input and output symbolic.
    opset_version
        ONNX opset.
    """
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'export_onnx needs the onnx extra: pip install "bayestensor[onnx]"', name="onnx"
        ) from None
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    names = list(input_names) if input_names is not None else [f"input_{i}" for i in range(len(inputs))]
    if len(names) != len(inputs):
        raise ValueError(f"expected {len(inputs)} input_names (one per example input), got {len(names)}")
    svi = [n for n, m in model.named_modules() if isinstance(m, FactorizedTensor) and m.posterior.stochastic]
    if svi:
        warnings.warn(
            f"export_onnx: {len(svi)} SVI weights ({svi[0]}, …) export their posterior mean (a point estimate); "
            "the posterior predictive averages samples and has no ONNX graph",
            stacklevel=2,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    sampling = [(m, m.sample_in_eval) for m in model.modules() if isinstance(m, FactorizedTensor)]
    model.eval()
    for m, _ in sampling:
        m.sample_in_eval = False
    axes = {n: {0: "batch"} for n in [*names, *output_names]} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, on purpose
            torch.onnx.export(
                model,
                inputs,
                str(path),
                input_names=names,
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=opset_version,
                do_constant_folding=False,  # folding would store each reconstructed dense W in the file
                dynamo=False,
            )
    finally:
        model.train(was_training)
        for m, flag in sampling:
            m.sample_in_eval = flag
    return path
