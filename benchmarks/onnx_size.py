"""ONNX file of a trained, pruned model against its dense twin's: size, and both checked in onnxruntime.

python benchmarks/onnx_size.py [RUN_DIR]   (default runs/digits-fc-ttm-map, written by `bayestensor train`)

Loads the run's model (bt.load), exports it with bt.export_onnx (the graph contracts the stored factors),
builds the dense twin (every TensorizedLinear, including the projections of an attention layer, replaced
by nn.Linear holding its full_weight()) and exports that too, then runs both in onnxruntime on the run's
test images (its experiment's data, the first 1,000) and prints file sizes and the largest difference from
PyTorch's outputs.
"""

import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

import bayestensor as bt
from bayestensor.experiments import RunConfig, get_experiment, load_toml, merge


def densify(model: nn.Module) -> nn.Module:
    for name, m in list(model.named_children()):
        if isinstance(m, bt.TensorizedLinear):
            dense = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                dense.weight.copy_(m.full_weight())
                if m.bias is not None:
                    dense.bias.copy_(m.bias)
            setattr(model, name, dense)
        else:
            densify(m)
    return model


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits-fc-ttm-map")
    model = bt.load(run)
    twin = densify(bt.load(run))
    cfg = RunConfig()
    merge(cfg, load_toml(run / "config.toml"))
    _, _, x_test, _ = get_experiment(cfg.experiment).load_data(cfg)
    x_test = x_test[:1000]
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for label, m in (("tensorized", model), ("dense twin", twin)):
            path = bt.export_onnx(m, x_test[:8], Path(tmp) / f"{label}.onnx", input_names=["x"])
            (got,) = ort.InferenceSession(str(path)).run(None, {"x": x_test.numpy()})
            err = abs(got - model(x_test).numpy()).max()
            params = sum(p.numel() for p in m.parameters())
            size = path.stat().st_size
            print(f"{label:>10}: {size:>8,} bytes, {params:>7,} parameters, max |onnx - torch| {err:.1e}")


if __name__ == "__main__":
    main()
