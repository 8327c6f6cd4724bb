"""bt.save / bt.load for every layer type and for user classes, ONNX export, and the core install."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import bayestensor as bt
from _layers import example, prune_some
from bayestensor.experiments.vit import VisionTransformer
from bayestensor.io import ExportError

# non-default settings every layer type takes (their own extras below)
SETTINGS = {"method": "map", "prior": "log_uniform", "rank_update": "gradient", "em_step": 0.5}
OWN = {
    bt.TensorizedLinear: {"strategy": "reconstruct"},
    bt.TensorizedConv2d: {"strategy": "reconstruct"},
    bt.TensorizedConv1d: {"strategy": "factorized"},
    bt.TensorizedEmbedding: {"dedup": False, "validate": False},
    bt.TensorizedMultiheadAttention: {"strategy": "factorized"},
}


@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_every_layer_setting_round_trips_through_save_and_load(layer_type, tmp_path):
    _, layer, x, call = example(layer_type, max_rank=6, **SETTINGS, **OWN[layer_type])
    prune_some(layer)
    model = nn.Sequential(layer).eval()
    bt.save(model, tmp_path / "m")
    back = bt.load(tmp_path / "m")
    assert back[0].export_kwargs == layer.export_kwargs
    for key, value in {**SETTINGS, **OWN[layer_type]}.items():
        if key != "prior":
            assert back[0].export_kwargs[key] == value, key
    assert bt.ranks(back) == bt.ranks(model)
    torch.testing.assert_close(call(back[0], x), call(layer, x))


class UserNet(nn.Module):
    """A user's own class: save cannot describe it, load takes the rebuilt model."""

    def __init__(self, width=48):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, width), nn.GELU(), nn.Linear(width, width))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _user_model(max_rank=5):
    model, _ = bt.tensorize(UserNet(), max_rank=max_rank, min_params=100)
    return model


def test_user_class_saves_and_loads_into_the_rebuilt_model(tmp_path):
    model = _user_model()
    prune_some(model)
    model.eval()
    x = torch.randn(4, 20)
    bt.save(model, tmp_path / "user")
    with pytest.raises(ExportError, match=r"test_export.UserNet model.*load\(path, model=\.\.\.\)"):
        bt.load(tmp_path / "user")
    back = bt.load(tmp_path / "user", model=_user_model())
    assert bt.ranks(back) == bt.ranks(model)
    torch.testing.assert_close(back(x), model(x))


def test_load_refuses_stored_ranks_above_the_model_and_changes_nothing(tmp_path):
    bt.save(_user_model(max_rank=5), tmp_path / "big")
    small = _user_model(max_rank=2)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(ExportError, match=r"layer 'body.0' has stored ranks \[5, 5\].*exceed.*\[2, 2\]"):
        bt.load(tmp_path / "big", model=small)
    after = small.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ExportError, match="has a tensorized layer 'body.0'"):
        bt.load(tmp_path / "big", model=UserNet())


def _digits_model():
    return nn.Sequential(
        bt.TensorizedLinear(64, 256, format="ttm", max_rank=10, method="map"),
        nn.ReLU(),
        bt.TensorizedLinear(256, 10, format="ttm", max_rank=10, method="map"),
    )


def _vit_block():
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True), 2)


def _vit():
    tensor = {"format": "ttm", "max_rank": 5, "method": "map"}
    return VisionTransformer(dim=64, depth=2, heads=4, mlp_dim=128, tensor=tensor)


def _padded_cnn():
    """Convolutions with 'same' and asymmetric padding in the modes that pad the input first (ONNX Pad)."""
    torch.manual_seed(0)
    return nn.Sequential(
        bt.TensorizedConv2d(6, 16, (4, 3), padding="same", padding_mode="reflect", format="tt", max_rank=3),
        nn.ReLU(),
        bt.TensorizedConv2d(16, 16, 3, stride=2, padding=(2, 1), padding_mode="circular", format="tucker", max_rank=3),
    )


@pytest.mark.parametrize(
    "build,shape",
    [
        (_padded_cnn, (3, 6, 9, 8)),
        (_digits_model, (7, 64)),
        (lambda: bt.tensorize(_vit_block(), max_rank=6, min_params=1000)[0], (3, 9, 64)),
        (_vit, (3, 1, 28, 28)),
    ],
    ids=["padded-cnn", "digits-fc", "transformer", "fashion-mnist-vit"],
)
def test_pruned_model_in_onnx_matches_pytorch(build, shape, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = build()
    prune_some(model)
    model.eval()
    path = bt.export_onnx(model, torch.randn(*shape), tmp_path / "m.onnx", input_names=["x"])
    session = ort.InferenceSession(str(path))
    for batch in (shape[0], 2):  # the batch axis stays dynamic
        x = torch.randn(batch, *shape[1:])
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert abs(got - want).max() <= 1e-4
    # the file holds the stored factors, not reconstructed dense weights (nothing constant-folded)
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(path)).graph
    tensors = [*graph.initializer, *(a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute)]
    floats = sum(onnx.numpy_helper.to_array(t).size for t in tensors if t.data_type == onnx.TensorProto.FLOAT)
    factors = sum(p.numel() for n, p in model.named_parameters() if ".factors." in n)
    assert factors <= floats <= bt.count_params(model) + 16
    assert floats < 0.5 * bt.dense_params(model)


def test_onnx_export_of_an_svi_model_exports_the_posterior_mean(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = nn.Sequential(bt.TensorizedLinear(16, 8, max_rank=4, method="svi")).eval()
    model[0].weight.sample_in_eval = True
    x = torch.randn(3, 16)
    with pytest.warns(UserWarning, match="posterior mean"):
        path = bt.export_onnx(model, x, tmp_path / "svi.onnx", input_names=["x"])
    assert model[0].weight.sample_in_eval  # restored
    model[0].weight.sample_in_eval = False
    (got,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    assert abs(got - model(x).detach().numpy()).max() <= 1e-5


def test_core_import_and_training_need_no_extra(tmp_path):
    extras = ("rich", "matplotlib", "sklearn", "transformers", "onnx", "onnxruntime")
    for name in extras:  # stand-ins that fail to import, as if the extras were not installed
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ModuleNotFoundError('not installed', name={name!r})\n")
    code = textwrap.dedent(
        f"""
        import sys
        import torch, bayestensor as bt
        nn = torch.nn
        model, _ = bt.tensorize(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)))
        opt = torch.optim.Adam(model.parameters())
        ard = bt.ARD(model, opt, num_data=64, epochs=2)
        ard.loss(model(torch.randn(8, 64)).square().mean()).backward()
        opt.step()
        ard.end_epoch()
        bt.save(model, {str(tmp_path / "m")!r})
        bt.load({str(tmp_path / "m")!r})
        assert not any(m in sys.modules for m in {extras!r})
        from bayestensor.cli.main import main
        sys.exit(main(["train", "--epochs", "1"]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "experiments extra" in proc.stderr and "Traceback" not in proc.stderr


def _shapes(layer: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every mode shape a layer or its sub-layers describe themselves with."""
    return {
        f"{name}.{key}": tuple(value)
        for name, sub in layer.named_modules()
        if isinstance(sub, bt.tensors.TensorizedModule)
        for key, value in sub.export_kwargs.items()
        if key.endswith("_shape")
    }


@pytest.mark.parametrize("fmt", bt.available_formats())
@pytest.mark.parametrize("layer_type", bt.LAYER_TYPES, ids=lambda t: t.__name__)
def test_zero_padded_shapes_round_trip_through_save_and_load(layer_type, fmt, tmp_path):
    # sizes that factor badly get padded mode shapes; the saved description hands them back to the constructor
    from _layers import EXAMPLES, PADDED

    make_dense, make_x = PADDED[layer_type]
    call = EXAMPLES[layer_type][2]
    dense, x = make_dense(), make_x()
    layer = layer_type.from_dense(dense, format=fmt, max_rank=3)
    sizes = [n for k, n in vars(dense).items() if k in ("in_features", "in_channels", "num_embeddings", "embed_dim")]
    assert sizes and any(math.prod(s) > min(sizes) for s in _shapes(layer).values()), _shapes(layer)  # padded
    bt.save(nn.Sequential(layer), tmp_path / "m")
    back = bt.load(tmp_path / "m")[0]
    assert _shapes(back) == _shapes(layer)
    torch.testing.assert_close(call(back, x), call(layer, x))


@pytest.mark.parametrize("fmt", bt.available_formats())
def test_a_checkpoint_of_another_format_is_refused_naming_the_layer(fmt):
    other = next(f for f in bt.available_formats() if f != fmt)
    saved = nn.Sequential(bt.TensorizedLinear(16, 16, format=other, max_rank=2, method="map"))
    model = nn.Sequential(bt.TensorizedLinear(16, 16, format=fmt, max_rank=2, method="map"))
    with pytest.raises(RuntimeError, match=rf"0\.weight: the checkpoint's factors .* are not a '{fmt}' tensor"):
        model.load_state_dict(saved.state_dict())


def test_a_truncated_weights_file_is_an_export_error(tmp_path):
    model = nn.Sequential(bt.TensorizedLinear(16, 16, format="tt", max_rank=2))
    weights, _ = bt.save(model, tmp_path / "m")
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ExportError, match=r"m.safetensors' is not a complete safetensors file"):
        bt.load(tmp_path / "m")
