"""Export for deployment: ``torch.export`` programs that keep ndformer's kernels as custom
ops, ONNX files of standard operators that onnxruntime runs like PyTorch, and the
``ndformer export`` command on a trained run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import ndformer
from faults import cli
from ndformer.errors import UsageError
from ndformer.train.export import export_model

ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not ONNX, reason="pip install 'ndformer[export]'")

MODELS = {
    "vit-tiny": dict(depth=2, dim=32, heads=2),
    "hvit-tiny": dict(depth=(1, 1), dim=16, heads=(2, 2)),
}
CASES = [  # (model, pattern, the custom op its attention runs on in pt2)
    ("vit-tiny", "neighborhood(3)", "ndformer.native_attention"),
    ("hvit-tiny", "window(2, shift=1)", "ndformer.native_attention"),
    ("vit-tiny", "neighborhood(3) | causal(0)", "ndformer.block_sparse"),
    ("vit-tiny", "pooled(2)", None),
]


def model_for(name, pattern):
    torch.manual_seed(0)
    return ndformer.create_model(name, pattern=pattern, in_chans=1, num_classes=3, **MODELS[name])


@pytest.mark.parametrize(("name", "pattern", "op"), CASES)
def test_torch_export_keeps_the_kernels_and_reloads_equal(tmp_path, name, pattern, op):
    model, x = model_for(name, pattern), torch.randn(2, 1, 32, 32)
    result = export_model(model, x, "pt2", tmp_path / "model.pt2")
    assert result["custom_ops"] == ([f"{op}.default"] if op else [])
    assert result["max_abs_error"] < 1e-5  # the reloaded program against eager
    program = torch.export.load(tmp_path / "model.pt2")
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model.eval()(x), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))  # written atomically


@needs_onnx
@pytest.mark.parametrize(("name", "pattern", "op"), [*CASES, ("vit-tiny", "full", None)])
def test_onnx_has_standard_operators_only_and_runs_like_pytorch(tmp_path, name, pattern, op):
    import onnx
    import onnxruntime

    model, x = model_for(name, pattern), torch.randn(3, 1, 32, 32)
    result = export_model(model, x, "onnx", tmp_path / "model.onnx")
    assert result["custom_ops"] == [] and result["max_abs_error"] < 1e-4
    graph = onnx.load(str(tmp_path / "model.onnx"))
    domains = {node.domain for node in graph.graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # nothing an ONNX runtime would not know
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_what_cannot_be_exported_is_refused_with_the_reason(tmp_path):
    model = model_for("vit-tiny", "neighborhood(3)")
    with pytest.raises(UsageError, match="--format must be one of pt2, onnx; got 'tflite'"):
        export_model(model, torch.randn(1, 1, 32, 32), "tflite", tmp_path / "m")
    with pytest.raises(ValueError, match=r"the example input has shape \(1, 3, 32, 32\)"):
        export_model(model, torch.randn(1, 3, 32, 32), "pt2", tmp_path / "m.pt2")
    volt = ndformer.create_model("volt-tiny", depth=1, dim=24, heads=2)
    with pytest.raises(ValueError, match="volt-tiny segments point clouds: the example input"):
        export_model(volt, torch.randn(1, 3, 8, 8, 8), "pt2", tmp_path / "m.pt2")
    assert not list(tmp_path.iterdir())


@needs_onnx
def test_the_export_command_writes_a_checked_file(tmp_path):
    from ndformer.train import TrainConfig, fit

    run = tmp_path / "run"
    fit(TrainConfig(task="digits", model="vit-tiny", steps=2, batch_size=8, eval_samples=50,
                    overrides=dict(depth=1, dim=32, heads=2, pattern="neighborhood(3)")),
        run, progress=False)  # fmt: skip
    done = cli("export", str(run), "--out", str(tmp_path / "digits.onnx"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "max |difference| from PyTorch" in done.stdout
    assert (tmp_path / "digits.onnx").stat().st_size > 10_000
    done = cli("export", str(run), "--out", str(tmp_path / "m.xyz"))
    assert done.returncode != 0 and "--format must be one of pt2, onnx; got 'xyz'" in done.stderr
