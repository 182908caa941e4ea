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


#: One spec per pattern family (and the backend auto gives it on CPU).
FAMILIES = {
    "full": "full",  # sdpa
    "window": "window(2, shift=1)",  # native shared keys
    "neighborhood": "neighborhood(3)",  # native lanes
    "stripe / axial": "axial(0)",  # native
    "union": "neighborhood(3) | causal(0)",  # block-sparse custom op
    "head split": "headsplit(window(2), neighborhood(3))",
    "pooled keys": "pooled(2)",  # keyset
    "linear": "linear",
    "routing": "routing(2, 2)",
}

SHRUNK = {
    "vit-tiny": dict(depth=1, dim=32, heads=2),
    "hvit-tiny": dict(depth=(1, 1), dim=16, heads=(2, 2)),
}


def one_block_per_stage(name: str) -> dict:
    """A preset with its published widths and heads but one block per stage."""
    depth = ndformer.create_model(name).config.depth
    return {"depth": 1 if isinstance(depth, int) else (1,) * len(depth)}


def assert_compiles_like_eager(model, *inputs, graph_breaks: int | None = 0):
    """The compiled model (aot_eager: autograd through every op, custom ops included) is
    captured in ``graph_breaks + 1`` graphs (None: any number) and gives eager's outputs
    and parameter gradients in float64. One compilation does both: the backend counts the
    graphs dynamo hands it (as ``torch._dynamo.explain`` would, without a second trace)."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    params = [p for p in model.parameters() if p.requires_grad]
    eager = model(*inputs)
    eager_grads = torch.autograd.grad(eager.square().sum(), params, allow_unused=True)
    out = torch.compile(model, backend=counting)(*inputs)
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    if graph_breaks is not None:
        assert len(graphs) == graph_breaks + 1, [str(g.code)[:200] for g in graphs]
    torch.testing.assert_close(out, eager, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, eager_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


#: hvit runs the same attention inside stages: the families whose plumbing differs there
HVIT_FAMILIES = ("window", "neighborhood", "union", "head split", "pooled keys")


@pytest.mark.parametrize(
    ("name", "family"),
    [("vit-tiny", f) for f in FAMILIES] + [("hvit-tiny", f) for f in HVIT_FAMILIES],
)
def test_every_pattern_family_compiles_without_graph_breaks(name, family):
    torch.manual_seed(0)
    model = ndformer.create_model(name, pattern=FAMILIES[family], in_chans=1, num_classes=3,
                                  **SHRUNK[name]).double()  # fmt: skip
    side = 32 if name.startswith("hvit") else 16  # two stages of at least 4 x 4 tokens
    assert_compiles_like_eager(model, torch.randn(2, 1, side, side, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(set(ndformer.list_models()) - set(SHRUNK)))
def test_every_model_compiles_like_eager(name):
    """Every other preset, at its widths and heads with one block per stage: grid models
    with no graph break; point models break around their data-dependent parts
    (voxelization, serialization, grouping), which run eagerly between graphs."""
    from ndformer.point_batch import PointBatch
    from ndformer.tasks.scenes import room_scene

    torch.manual_seed(0)
    config = ndformer.create_model(name).config
    overrides = one_block_per_stage(name)
    if config.arch not in ("volt", "voxconv"):
        model = ndformer.create_model(name, in_chans=1, num_classes=3, **overrides).double()
        size = {2: (32, 32), 3: (16, 16, 16), 4: (24, 24, 24, 8)}[config.ndim]  # its own ndim
        assert_compiles_like_eager(model, torch.randn(2, 1, *size, dtype=torch.float64))
        return
    scenes = [room_scene(300, seed) for seed in range(2)]
    batch = PointBatch.from_scenes([(torch.from_numpy(x), torch.from_numpy(r).float() / 255)
                                    for x, r, _ in scenes])  # fmt: skip
    batch = PointBatch(batch.xyz.double(), batch.features.double(), batch.batch)
    if config.arch == "volt":
        overrides["pattern"] = "serialized('hilbert', 16)"
    model = ndformer.create_model(name, in_chans=3, num_classes=4, voxel_size=0.25, patch=2,
                                  **overrides).double()  # fmt: skip
    assert_compiles_like_eager(model, batch, graph_breaks=None)


def test_the_graph_count_sees_a_graph_break():
    """The check of the tests above can fail: a module that breaks its graph once."""

    class Breaks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4).double(), torch.nn.Linear(4, 4).double()

        def forward(self, x):
            x = self.a(x)
            torch._dynamo.graph_break()
            return self.b(x)

    x = torch.randn(2, 4, dtype=torch.float64)
    assert_compiles_like_eager(Breaks(), x, graph_breaks=1)
    torch._dynamo.reset()
    with pytest.raises(AssertionError):
        assert_compiles_like_eager(Breaks(), x, graph_breaks=0)
