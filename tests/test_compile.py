"""A whole training step under ``torch.compile(fullgraph=True)``: every layer type x method, against eager,
with one compile per set of shapes however ``β`` moves, and one more per pruning pass that changes shapes."""

import json

import pytest
import torch
from torch._dynamo.utils import counters

import bayestensor as bt
from _layers import EXAMPLES, example
from bayestensor.cli.main import main
from bayestensor.experiments import compiled as compiled_mod
from bayestensor.experiments.compiled import CompiledObjective
from bayestensor.tensors import POSTERIORS


def _cut_one(model, optimizer):
    """Drop the last component of every bond above rank 1 (ARD's pruning, physically, with the optimizer)."""
    for _, t in bt.inference.bayesian_tensors(model):
        t.truncate_([torch.arange(max(1, r - 1)) for r in t.ranks], optimizer)


def _loss_and_grads(fn, model, x, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = fn(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("method", list(POSTERIORS))
@pytest.mark.parametrize("layer_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_compiled_step_matches_eager_and_recompiles_only_for_new_shapes(layer_type, method, dynamo_reset):
    torch.manual_seed(0)
    _, layer, x, call = example(layer_type, max_rank=4, format="tt", method=method)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
    ard = bt.ARD(layer, opt, num_data=100, epochs=4, steps_per_epoch=3, no_kl_epochs=0, warmup_epochs=2)

    def loss_fn(x):
        out = call(layer, x)
        return ard.loss(out.square().mean())

    counters.clear()
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    betas = []
    for cut in range(3):
        for step in range(3):
            eager_loss, eager_grads = _loss_and_grads(loss_fn, layer, x, seed=step)
            loss, grads = _loss_and_grads(compiled, layer, x, seed=step)
            torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
            for g, e in zip(grads, eager_grads, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
            opt.step()
            betas.append(ard.beta)
        compiles = counters["stats"]["unique_graphs"]
        assert compiles == cut + 1, f"{compiles} compiles after {cut} shape changes"
        _cut_one(layer, opt)
    assert len(set(betas)) > 3  # the warm-up moved β at every step without a recompile


def test_compiled_prior_loss_equals_eager_in_float64(dynamo_reset):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        bt.TensorizedLinear(24, 30, format="ttm", max_rank=4, method="svi", dtype=torch.float64),
        bt.TensorizedLinear(30, 6, format="cp", max_rank=3, method="map", dtype=torch.float64),
    )
    compiled = torch.compile(bt.prior_loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(model), bt.prior_loss(model), rtol=1e-12, atol=0)


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_trainer_compile_trains_like_eager_and_counts_its_compiles(tmp_path, dynamo_reset):
    """``--compile`` (inductor): the same run as eager up to float reordering, one compile per set of ranks."""
    problem = compiled_mod.compiler_problem(torch.device("cpu"))
    if problem is not None:
        pytest.skip(f"torch.compile's default backend does not work on this machine: {problem}")
    common = ["train", "--smoke", "--quiet", "--out", str(tmp_path)]
    assert main([*common, "--set", "name=eager"]) == 0
    assert main([*common, "--compile", "--set", "name=compiled"]) == 0
    eager, compiled = _report(tmp_path / "eager"), _report(tmp_path / "compiled")
    assert compiled["compile"] == "on" and eager["compiles"] is None
    history = [json.loads(line) for line in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    rank_sets = {json.dumps(row["ranks"]) for row in history[:-1]}  # the ranks each epoch trained at
    assert 1 <= compiled["compiles"] <= 2 * len(rank_sets)  # a ragged last batch may add one per set
    assert abs(compiled["test_accuracy"] - eager["test_accuracy"]) <= 0.02
    assert compiled["params"] == eager["params"]


def test_compile_modes_and_a_broken_compiler(tmp_path, capsys, monkeypatch):
    common = ["train", "--smoke", "--quiet", "--out", str(tmp_path)]
    capsys.readouterr()
    assert main([*common, "--compile=fast"]) == 2
    assert "train.compile: expected one of ('off', 'on', 'auto'), got 'fast'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # rejected before the run folder was made
    monkeypatch.setattr(compiled_mod, "compiler_problem", lambda device: "CppCompileError: no C++ compiler")
    assert main([*common, "--compile", "--set", "name=on"]) == 2
    err = capsys.readouterr().err
    assert "torch.compile does not work on this machine (CppCompileError: no C++ compiler)" in err
    assert "--compile=auto" in err and "Traceback" not in err
    assert not (tmp_path / "on" / "config.toml").exists()
    with pytest.warns(UserWarning, match="training without it"):
        assert main([*common, "--compile=auto", "--set", "name=auto"]) == 0
    report = _report(tmp_path / "auto")
    assert report["compile"] == "auto" and report["compiles"] is None


def test_a_compile_failure_names_the_tensorized_layers_and_shapes(dynamo_reset):
    model = torch.nn.Sequential(bt.TensorizedLinear(24, 30, format="ttm", max_rank=4, method="map"))
    opt = torch.optim.Adam(model.parameters())
    ard = bt.ARD(model, opt, num_data=10, epochs=1)

    def objective(x):
        loss = ard.loss(model(x).square().mean())
        torch._dynamo.graph_break()  # stands in for any construct Dynamo cannot trace: an error under fullgraph
        return loss, loss

    with pytest.raises(Exception) as info:
        CompiledObjective(objective, model)(torch.randn(5, 24))
    note = "\n".join(getattr(info.value, "__notes__", []))
    assert "batch shapes ((5, 24),)" in note
    assert "0.weight: ttm out_shape=(2, 3, 5) in_shape=(2, 3, 4) ranks=[4, 4]" in note
