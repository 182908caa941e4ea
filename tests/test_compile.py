"""torch.compile of models whose patterns run on the native custom ops: one graph, no
graph break, and the same outputs and gradients as eager."""

from __future__ import annotations

import pytest
import torch

import ndformer
from ndformer.kernels import native

if native.native_status() != "ready":  # pragma: no cover - every CI machine has g++
    pytest.skip(f"native kernels: {native.native_status()}", allow_module_level=True)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (compiled frames of earlier tests are dropped)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("spec", ["neighborhood(7)", "window(8, shift=4)"])
def test_vit_with_a_native_pattern_compiles_without_graph_breaks(spec):
    torch.manual_seed(0)
    model = ndformer.create_model("vit-tiny", depth=2, dim=64, heads=2, patch=4, in_chans=1,
                                  num_classes=3, pattern=spec).double()  # fmt: skip
    x = torch.randn(2, 1, 48, 40, dtype=torch.float64)
    explanation = torch._dynamo.explain(model)(x)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), [
        b.reason for b in explanation.break_reasons
    ]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")  # autograd through the custom ops
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_inductor_compiles_the_native_op_into_a_model():
    torch.manual_seed(0)
    model = ndformer.create_model("vit-tiny", depth=1, dim=32, heads=2, patch=4, in_chans=1,
                                  num_classes=3, pattern="neighborhood(5)")  # fmt: skip
    x = torch.randn(2, 1, 32, 32)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
