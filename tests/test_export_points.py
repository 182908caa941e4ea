"""Exported point models: ``FixedPoints`` (a layout whose group ids were computed before
tracing) attends like ``Points`` by the definition, and a ``volt`` program exported once
runs other point clouds (other numbers of points and tokens) like the eager model."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from ndformer import attend
from ndformer.choice import portable
from ndformer.cli import build_app
from ndformer.errors import UsageError
from ndformer.layout import FixedPoints, Points
from ndformer.models import create_model
from ndformer.patterns import pattern as parse
from ndformer.train.export import export_model
from ndformer.train.export_points import PointProgram, point_inputs
from test_point_models import TINY_VOLT, batch_of, scenes
from test_points import (
    assert_attention_equal,
    point_leaves,
    point_sets,
    points_definition_mask,
    qkv,
)

ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not ONNX, reason="pip install 'ndformer[export]'")


@given(data=st.data(), seed=st.integers(0, 2**31 - 1), portable_=st.booleans())
def test_fixed_points_attend_like_the_definition(data, seed, portable_):
    points = data.draw(point_sets())
    spec, pattern = data.draw(point_leaves(points.shape))
    if pattern.group_ids(points) is None:  # causal masks are no partition: refused
        with pytest.raises(ValueError, match="not a partition into groups"):
            FixedPoints.of(points, [pattern])
        return
    fixed = FixedPoints.of(points, [pattern])
    heads = data.draw(st.integers(1, 3))
    q, k, v = qkv(points.num_tokens, heads, seed)
    want_mask = points_definition_mask(spec, points, heads)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=want_mask)
    with portable() if portable_ else torch.enable_grad():  # reference mask / group kernels
        got = attend(q, k, v, pattern, fixed)
    assert_attention_equal(got, want, (q, k, v), seed)


def test_fixed_points_name_what_they_lack():
    points = FixedPoints.of(Points(torch.tensor([[0, 1], [3, 2], [1, 1]])), [parse("full")])
    q = torch.randn(1, 1, points.num_tokens, 4)
    with pytest.raises(ValueError, match=r"has group ids for \['full'\], not window\(2\)"):
        attend(q, q, q, "window(2)", points)


PATTERNS = ["window(2)", "serialized('hilbert', 8)", "flattened(2, 4)", "full"]


def volt(pattern):
    torch.manual_seed(0)
    return create_model("volt-tiny", in_chans=3, num_classes=5, voxel_size=0.25, patch=2,
                        pattern=pattern, **TINY_VOLT).eval()  # fmt: skip


@pytest.mark.parametrize("pattern", [[PATTERNS[0], PATTERNS[1]], [PATTERNS[2]], [PATTERNS[3]]])
def test_an_exported_volt_runs_other_scenes_like_eager(tmp_path, pattern):
    model = volt(pattern)
    traced_on, other = batch_of(scenes(2, 300)), batch_of(scenes(3, 500, seed=1))
    result = export_model(model, traced_on, "pt2", tmp_path / "volt.pt2")
    assert result["custom_ops"] == [] and result["max_abs_error"] < 1e-5
    program = torch.export.load(tmp_path / "volt.pt2").module()
    args = point_inputs(model, other)
    assert args[0].shape[0] != result["inputs"][0][0] and args[2].shape[0] != result["inputs"][2][0]
    with torch.no_grad():
        want = model(other)
        torch.testing.assert_close(program(*args), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(PointProgram(model)(*args), want, rtol=1e-6, atol=1e-6)


@needs_onnx
def test_an_onnx_volt_runs_other_scenes_in_onnxruntime(tmp_path):
    import onnxruntime

    model = volt([PATTERNS[0], PATTERNS[1]])
    result = export_model(model, batch_of(scenes(2, 300)), "onnx", tmp_path / "volt.onnx")
    assert result["max_abs_error"] < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "volt.onnx"))
    other = batch_of(scenes(1, 700, seed=2))
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), point_inputs(model, other))}
    with torch.no_grad():
        want = model(other)
    torch.testing.assert_close(torch.from_numpy(session.run(None, feed)[0]), want,
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_point_models_that_cannot_export_are_refused(tmp_path):
    teacher = create_model("voxconv-tiny", in_chans=3, num_classes=5)
    with pytest.raises(UsageError, match="voxconv-tiny builds a dense voxel grid"):
        export_model(teacher, batch_of(scenes(1, 200)), "pt2", tmp_path / "m.pt2")
    causal = volt("causal(0)")
    with pytest.raises(ValueError, match=r"causal.* on points is not a partition into groups"):
        export_model(causal, batch_of(scenes(1, 200)), "pt2", tmp_path / "m.pt2")
    assert not list(tmp_path.glob("*.pt2"))


def test_the_export_command_on_a_point_run(tmp_path, monkeypatch):
    from ndformer.train import TrainConfig, fit

    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))  # the voxelized scans
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, (xyz, rgb, label) in enumerate(scenes(6, 300)):
        np.savez(folder / f"s{i}.npz", xyz=xyz, rgb=rgb, label=label)
    run = tmp_path / "run"
    fit(TrainConfig(data=str(folder), model="volt-tiny", steps=2, batch_size=2, eval_samples=2,
                    overrides=dict(TINY_VOLT, pattern="window(2)")),
        run, progress=False)  # fmt: skip
    done = CliRunner().invoke(build_app(), ["export", str(run), "--out", str(tmp_path / "v.pt2")])
    assert done.exit_code == 0, done.output
    assert "wrote" in done.output and "max |difference| from PyTorch" in done.output
