"""The native kernels (kernels/native/cpp/) equal dense masked attention in values and
gradients, and auto uses them where they apply (CPU, float32/float64, separable patterns
on grids, same-group patterns on points), with and without autograd."""

from __future__ import annotations

import ast
import contextlib
import math
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend
from ndformer.kernels import native
from ndformer.kernels.native import abi, build, calls, lane_plans
from ndformer.patterns import (
    Causal,
    HeadSplit,
    Neighborhood,
    Separable,
    Serialized,
    Stripe,
    Window,
)
from strategies import any_pattern, shapes

if native.compiler() is None:  # pragma: no cover - every CI machine has g++
    pytest.skip("no C++ compiler: the native kernels cannot be built", allow_module_level=True)

TOLERANCE = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}}
# float32 is judged against the float64 truth: the kernel's error may be at most this many
# times PyTorch's own float32 error on the same inputs, plus a few ulps of the largest value
# the call computes (for cases where PyTorch happens to be exact, such as a gradient that
# cancels to 0 with one key per query); a fixed atol would fail well-conditioned large
# gradients by chance and pass badly conditioned ones.
FLOAT32_ERROR_RATIO = 4.0
FLOAT32_ULPS = 16


def test_the_kernels_build_here_with_torch_s_openmp():
    assert native.native_status() == "ready"
    c = native.constants()
    assert c.lanes_f32 == 2 * c.lanes_f64 and c.lanes_f32 in (4, 8, 16)
    assert c.openmp  # built with OpenMP ...
    # ... and sharing the one runtime torch loaded (in a fresh process: other libraries the
    # tests import, such as scikit-learn, bring their own libgomp)
    probe = (
        "from ndformer.kernels.native import build; assert build.native_status() == 'ready';"
        "maps = open('/proc/self/maps').read().splitlines();"
        "print(sorted({l.split()[-1] for l in maps if 'gomp' in l.split('/')[-1]}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)  # fmt: skip
    gomp = ast.literal_eval(done.stdout)
    assert len(gomp) == 1, gomp


def test_an_interface_that_drifted_is_refused_with_its_reason(monkeypatch):
    lib = build.library().lib
    assert abi.read(lib)[1] is None
    shorter = type("NdfShared", (abi.ctypes.Structure,), {"_fields_": abi.NdfShared._fields_[:-1]})
    monkeypatch.setattr(abi, "STRUCTS", (abi.NdfCall, shorter, abi.NdfLanes, abi.NdfStack))
    _, mismatch = abi.read(lib)
    assert mismatch is not None and "NdfShared differs" in mismatch


def runs_natively(pattern, heads) -> bool:
    if isinstance(pattern, HeadSplit):
        return all(
            runs_natively(p, stop - start)
            for p, (start, stop) in zip(pattern.patterns, pattern.head_groups(heads))
            if stop > start
        )
    return isinstance(pattern, Separable)


def qkv(n, heads, batch=1, e=5, ev=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, n, e, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(batch, heads, n, ev, generator=gen, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v)]


def values_and_grads(fn, q, k, v, seed=1):
    out = fn(q, k, v)
    # drawn in float64 and rounded: a float32 run and its float64 upcast see the same dout
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad))


def assert_matches_reference(got, reference, q, k, v, names=("out", "dq", "dk", "dv")):
    """`got` (values and gradients) equals `reference` (a function of q, k, v) on q, k, v.

    float64: to rtol 1e-10. float32: the error against the reference run in float64 on the
    same (upcast) inputs is at most FLOAT32_ERROR_RATIO times the reference's own float32
    error there, plus FLOAT32_ULPS ulps of the largest magnitude among the outputs."""
    expected = values_and_grads(reference, q, k, v)
    if q.dtype == torch.float64:
        for name, a, b in zip(names, got, expected):
            torch.testing.assert_close(a, b, **TOLERANCE[torch.float64],
                                       msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip
        return
    wide = [x.detach().double().requires_grad_() for x in (q, k, v)]
    truth = values_and_grads(reference, *wide)
    floor = FLOAT32_ULPS * torch.finfo(q.dtype).eps * max(t.abs().max().item() for t in truth)
    for name, a, b, t in zip(names, got, expected, truth):
        error = (a.double() - t).abs().max().item()
        own = (b.double() - t).abs().max().item()
        bound = FLOAT32_ERROR_RATIO * own + floor
        assert error <= bound, (
            f"{name}: float32 error {error:.3g} against the float64 reference exceeds "
            f"{bound:.3g} ({FLOAT32_ERROR_RATIO:g}x the reference's own float32 error {own:.3g})"
        )


def dense(pattern, layout, heads, scale=None):
    mask = pattern.mask(layout, heads)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@contextlib.contextmanager
def poisoned_allocations():
    """Every buffer the native calls allocate inside (outputs, gradients, scratch) starts as
    NaN bytes: a kernel that reads memory it has not written fails the comparison instead of
    passing on whatever the allocator returned (it once read K^T columns past the tokens)."""
    new_empty = torch.Tensor.new_empty

    def poisoned(self, *size, **kwargs):
        x = new_empty(self, *size, **kwargs)
        return x.fill_(math.nan) if x.is_floating_point() else x

    def workspace(nbytes: int) -> torch.Tensor:
        return torch.full((nbytes,), 255, dtype=torch.uint8)  # all-ones bytes: NaN

    with mock.patch.object(torch.Tensor, "new_empty", poisoned), \
         mock.patch.object(calls, "_workspace", workspace):  # fmt: skip
        yield


def assert_native_equals_dense(pattern, shape, heads=2, batch=2, dtype=torch.float64, e=5,
                               ev=3, scale=None, seed=0):  # fmt: skip
    grid = Grid(shape)
    q, k, v = qkv(grid.num_tokens, heads, batch, e, ev, dtype, seed)
    with poisoned_allocations():
        got = values_and_grads(lambda *x: attend(*x, pattern, grid, backend="native",
                                                 scale=scale), q, k, v)  # fmt: skip
    assert_matches_reference(got, dense(pattern, grid, heads, scale), q, k, v)


@given(data=st.data())
def test_native_values_and_gradients_match_dense(data):
    shape = data.draw(shapes(), label="shape")
    heads = data.draw(st.integers(1, 3), label="heads")
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    batch = data.draw(st.integers(1, 2), label="batch")
    scale = data.draw(st.none() | st.floats(0.1, 2.0), label="scale")
    dtype = data.draw(st.sampled_from([torch.float64, torch.float32]), label="dtype")
    if not runs_natively(pattern, heads):
        with pytest.raises(ValueError, match="native"):
            assert_native_equals_dense(pattern, shape, heads)
        return
    assert_native_equals_dense(pattern, shape, heads, batch, dtype, scale=scale)


@pytest.mark.parametrize(
    ("pattern", "shape", "kinds"),
    [
        (Neighborhood(7), (20, 37), {native.SHIFT, native.PERM}),  # interior / clamped borders
        (Window(4), (8, 12), {native.BCAST}),
        (Window(3, shift=1), (7, 9), {native.SKIP, native.BCAST}),  # short border windows
        (Neighborhood(3, dilation=2), (9, 40), {native.PERM}),  # lanes 2 tokens apart
        (Neighborhood(3, dilation=9), (60,), {native.GATHER}),  # lanes 9 tokens apart
        (Stripe(1, 5), (9, 12), {native.BCAST, native.SKIP}),
        (Neighborhood(3, causal=(True, False, False)), (6, 8, 7), None),
        (Causal(0), (7, 6, 5), None),
    ],
    ids=repr,
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_slot_kind_matches_dense(monkeypatch, pattern, shape, kinds, dtype):
    """The lane kernel alone (no stacking, no shared keys): every slot kind, forward and
    backward (SHIFT adds a vector, BCAST a lane sum, PERM / GATHER lane by lane)."""
    monkeypatch.setattr(lane_plans, "PLAN_CHUNK", 512)  # plans built in several chunks
    native.lane_plan.cache_clear()
    grid = Grid(shape)
    rules = tuple(pattern.axis_rules(grid))
    vl = native.native_lanes(dtype)
    plan = native.lane_plan(rules, shape, vl)
    # With 2 lanes (float64 on 16-byte SIMD: NEON, SSE) a clamped border tile's lanes share
    # their keys (BCAST, not PERM): the kinds are those of 4 lanes or more.
    if kinds is not None and vl >= 4:
        assert kinds <= set(np.unique(plan.kind).tolist())
    lanes_only = native.NativePlan(None, plan, native.empty_stack(plan.tiles, plan.lanes))
    q, k, v = qkv(grid.num_tokens, 2, 2, dtype=dtype)
    got = values_and_grads(lambda *x: run_plan(lanes_only, *x), q, k, v)
    assert_matches_reference(got, dense(pattern, grid, 2), q, k, v)
    native.lane_plan.cache_clear()


def run_plan(plan, q, k, v, scale=None):
    """attend's native op for an explicit plan (forward and backward through autograd)."""
    from ndformer.kernels.native import calls

    scale = q.shape[-1] ** -0.5 if scale is None else scale

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out, lse = calls.forward(q, k, v, plan, scale, True)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, dout):
            return calls.backward(dout, *ctx.saved_tensors, plan, scale)

    return Function.apply(q, k, v)


def count_kernel_calls(monkeypatch) -> dict[str, int]:
    """Count calls of the native custom ops (forward and backward)."""
    from ndformer.kernels.native import calls

    counts = {"forward": 0, "backward": 0}
    for name in counts:
        kernel = getattr(calls, name)

        def counting(*args, name=name, kernel=kernel):
            counts[name] += 1
            return kernel(*args)

        monkeypatch.setattr(calls, name, counting)
    return counts


def test_auto_takes_the_native_kernels_with_and_without_autograd(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    pattern, shape = Neighborhood(5), (12, 13)
    q, k, v = qkv(156, 2, e=8, ev=8)
    expected = attend(q, k, v, pattern, shape, backend="reference")
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v, pattern, shape), expected)
    assert calls == {"forward": 1, "backward": 0}
    attend(q, k, v, pattern, shape).sum().backward()  # training: native forward + backward
    assert calls == {"forward": 2, "backward": 1}
    with torch.no_grad():
        attend(q, k, v, Window(4, shift=2), shape)
        attend(q, k, v, Stripe(0, 3), shape)
    assert calls == {"forward": 4, "backward": 1}
    attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, shape)  # not a native dtype
    assert calls == {"forward": 4, "backward": 1}


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [
        (Window(8), (16, 16)),  # 64 queries per window: several registers per tile
        (Window(4), (8, 12)),
        (Window(4, shift=2), (10, 11)),  # border windows: fewer keys and queries
        (Window(4), (4, 4, 8)),
        (Stripe(1, 5), (9, 12)),
        (Window((2, 3), dilation=(3, 2)), (7, 8)),
        (Window(16), (20, 20)),  # several tiles per window: the group's dK adds them all
    ],
    ids=repr,
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shared_key_tiles_match_dense(pattern, shape, dtype):
    vl = native.native_lanes(dtype)
    plan = native.shared_plan(tuple(pattern.axis_rules(Grid(shape))), shape, vl)
    assert plan is not None
    group = native.SHARED_GROUP
    tokens = plan.tokens.reshape(plan.tiles, group, vl)
    used = (tokens[:, :, 0] >= 0).sum(1)
    # a window of c queries fills tiles of `group` registers of vl lanes, the last partly
    sizes = torch.unique(pattern.mask(Grid(shape), 1)[0].sum(1), return_counts=False).tolist()
    expected = {min(group, -(-(c - t) // vl)) for c in sizes for t in range(0, c, group * vl)}
    assert set(used.tolist()) == expected
    # every query exactly once; every tile's keys are each of its queries' keys; a group's
    # tiles share its keys, which are its queries
    assert sorted(tokens[tokens >= 0].tolist()) == list(range(Grid(shape).num_tokens))
    mask = pattern.mask(Grid(shape), 1)[0]
    for g in range(plan.groups):
        members = tokens[plan.first[g] : plan.first[g + 1]]
        keys = plan.keys[plan.first[g], : plan.counts[plan.first[g]]]
        assert sorted(members[members >= 0].tolist()) == sorted(keys.tolist())
        for query in members[members >= 0]:
            assert sorted(keys.tolist()) == torch.nonzero(mask[query]).flatten().tolist()
    assert_native_equals_dense(pattern, shape, heads=2, batch=2, dtype=dtype)


def test_without_a_compiler_auto_falls_back(monkeypatch):
    monkeypatch.setenv("NDFORMER_NATIVE", "0")
    build.library.cache_clear()
    try:
        assert "disabled" in native.native_status()
        q, k, v = qkv(30, 2, e=4, ev=4)
        out = attend(q, k, v, "neighborhood(3)", (5, 6))
        out.sum().backward()  # the tiled path trains
        expected = attend(q, k, v, "neighborhood(3)", (5, 6), backend="reference")
        torch.testing.assert_close(out, expected)
        with pytest.raises(ValueError, match="NDFORMER_NATIVE"):
            attend(q, k, v, "neighborhood(3)", (5, 6), backend="native")
    finally:
        monkeypatch.delenv("NDFORMER_NATIVE")
        build.library.cache_clear()


def test_native_backend_refuses_what_it_cannot_run():
    x = torch.randn(1, 1, 16, 4)
    with pytest.raises(ValueError, match="float32 or float64"):
        attend(x.half(), x.half(), x.half(), "window(2)", (4, 4), backend="native")
    with pytest.raises(ValueError, match="separable"):
        attend(x, x, x, "window(2) | axial(0)", (4, 4), backend="native")
    points = Points(torch.tensor([[0, 0], [1, 0], [3, 2]]))
    y = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="partition into groups"):
        attend(y, y, y, "causal(0)", points, backend="native")


@pytest.mark.parametrize(
    "pattern", [Window(8, shift=3), Neighborhood(7), Neighborhood(5, dilation=2), Stripe(0, 4)]
)
def test_native_paths_stay_linear_in_tokens(pattern):
    from test_no_quadratic import LargestTensor

    grid = Grid((48, 48))  # N = 2304, N^2 = 5.3M
    n = grid.num_tokens
    q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for _ in range(3))
    with LargestTensor() as probe:
        attend(q, k, v, pattern, grid, backend="native").sum().backward()
    assert probe.largest < n * n / 4
    plan = native.native_plan(tuple(pattern.axis_rules(grid)), grid.shape, torch.float32)
    parts = [plan.shared, plan.lanes, plan.stack]
    sizes = [x.size for p in parts if p is not None for x in vars(p).values()
             if isinstance(x, np.ndarray)]  # fmt: skip
    slots = pattern.key_counts(grid).max().item()
    assert max(sizes) <= 2 * n * slots < n * n / 4


def test_gradcheck_on_small_cases():
    for pattern, layout in [
        (Neighborhood(3), Grid((5, 6))),
        (Window(3, shift=1), Grid((5, 4))),
        (Stripe(0, 2), Grid((4, 5))),
        (Neighborhood(3, dilation=2), Grid((9,))),
        (Serialized("z", group=4), Points(torch.randint(0, 6, (13, 2)))),
    ]:
        q, k, v = qkv(layout.num_tokens, 2, e=4, ev=3)
        assert torch.autograd.gradcheck(
            lambda *x, p=pattern, lay=layout: attend(*x, p, lay, backend="native"), (q, k, v)
        )


def test_the_custom_op_passes_torch_s_checks():
    from ndformer.kernels.native import ops

    q, k, v = qkv(30, 2, e=4, ev=3)
    rules = native.encode_rules(tuple(Neighborhood(3).axis_rules(Grid((5, 6)))))
    torch.library.opcheck(ops.native_attention_op, (q, k, v, rules, [5, 6], 0.5, True))
    groups = torch.tensor([0, 1, 0, 2, 1, 1] * 5)
    torch.library.opcheck(ops.native_groups_op, (q, k, v, groups, 0.5, True))


# -- stacked neighborhood tiles ------------------------------------------------------------
