"""The native kernels (kernels/native/cpp/) equal dense masked attention in values and
gradients, and auto uses them where they apply (CPU, float32/float64, separable patterns
on grids, same-group patterns on points), with and without autograd."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend
from ndformer.kernels import native
from ndformer.kernels.native import abi, build, lane_plans, stack_plans
from ndformer.patterns import (
    Causal,
    HeadSplit,
    Neighborhood,
    Separable,
    Serialized,
    Stripe,
    Window,
)
from strategies import any_pattern, neighborhoods, shapes, windows

if native.compiler() is None:  # pragma: no cover - every CI machine has g++
    pytest.skip("no C++ compiler: the native kernels cannot be built", allow_module_level=True)

TOLERANCE = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {}}


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
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), grad))


def dense(pattern, layout, heads, scale=None):
    mask = pattern.mask(layout, heads)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def assert_native_equals_dense(pattern, shape, heads=2, batch=2, dtype=torch.float64, e=5,
                               ev=3, scale=None, seed=0):  # fmt: skip
    grid = Grid(shape)
    q, k, v = qkv(grid.num_tokens, heads, batch, e, ev, dtype, seed)
    got = values_and_grads(lambda *x: attend(*x, pattern, grid, backend="native", scale=scale),
                           q, k, v)  # fmt: skip
    expected = values_and_grads(dense(pattern, grid, heads, scale), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=lambda m, n=name: f"{n}: {m}")


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
    plan = native.lane_plan(rules, shape, native.native_lanes(dtype))
    if kinds is not None:
        assert kinds <= set(np.unique(plan.kind).tolist())
    lanes_only = native.NativePlan(None, plan, native.empty_stack(plan.tiles, plan.lanes))
    q, k, v = qkv(grid.num_tokens, 2, 2, dtype=dtype)
    got = values_and_grads(lambda *x: run_plan(lanes_only, *x), q, k, v)
    expected = values_and_grads(dense(pattern, grid, 2), q, k, v)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype])
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
@st.composite
def stackable_shapes(draw, vl):
    """Grids with whole and partial VL-lane tiles along the last axis."""
    ndim = draw(st.integers(1, 4))
    lead = [draw(st.integers(1, side)) for side in (9, 5, 3)[: ndim - 1]]
    return (*lead, draw(st.integers(2, 3 * vl + 3)))


def stacked_tiles(plan, stack) -> list[int]:
    """The lane plan's tiles that the stacked plan's groups hold (by first token)."""
    first = {int(t): i for i, t in enumerate(plan.tokens[:, 0])}
    return [first[int(t)] for t in stack.tok0.ravel() if t >= 0]


def columns(dtype) -> int:
    c = native.constants()
    return c.stack_columns_f64 if dtype == torch.float64 else c.stack_columns_f32


@given(data=st.data())
def test_stacked_neighborhoods_match_dense(data):
    dtype = data.draw(st.sampled_from([torch.float64, torch.float32]), label="dtype")
    vl = native.native_lanes(dtype)
    shape = data.draw(stackable_shapes(vl), label="shape")
    _, pattern = data.draw(neighborhoods(shape), label="pattern")
    # (batch, heads): one row shared by all threads, one row per thread, and a mix
    rows = data.draw(st.sampled_from([(1, 1), (1, 3), (2, 2)]), label="batch, heads")
    # channels: whole VL x VL register transposes and CB / 4 / 1-channel value blocks
    e, ev = data.draw(st.sampled_from([(vl, 13), (2 * vl, vl), (5, 3)]), label="channels")
    grid = Grid(shape)
    rules = tuple(pattern.axis_rules(grid))
    # K and V transposed for the whole grid at once, or in chunks of few key tokens
    span = data.draw(st.sampled_from([stack_plans.STACK_SPAN, 1]), label="span")
    saved, stack_plans.STACK_SPAN = stack_plans.STACK_SPAN, span
    try:
        native.stack_plan.cache_clear()
        plan = native.lane_plan(rules, shape, vl)
        stack = native.stack_plan(rules, shape, vl, columns(dtype), native.constants().stack)
    finally:
        stack_plans.STACK_SPAN = saved
        native.stack_plan.cache_clear()
    held = stacked_tiles(plan, stack)
    assert sorted(held + stack.rest.tolist()) == list(range(plan.tiles))  # each tile once
    q, k, v = qkv(grid.num_tokens, rows[1], rows[0], e, ev, dtype,
                  data.draw(st.integers(0, 99), label="seed"))  # fmt: skip
    got = values_and_grads(lambda *x: run_plan(native.NativePlan(None, plan, stack), *x), q, k, v)
    expected = values_and_grads(dense(pattern, grid, rows[1]), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    ("pattern", "shape", "share"),
    [
        (Neighborhood(7), (24, 64), 1.0),  # clamped borders are a lane permutation
        (Neighborhood(3), (6, 5, 32), 1.0),
        (Neighborhood(5, dilation=(2, 1)), (12, 48), 1.0),
        (Neighborhood(3, dilation=2), (6, 48), 0.0),  # lanes 2 tokens apart: not stacked
        (Neighborhood(7), (20, 37), 1.0),  # 37 = 2 x 16 + 5: partial tiles too
    ],
    ids=repr,
)
def test_stacked_plan_takes_the_tiles_it_can(pattern, shape, share):
    grid = Grid(shape)
    rules = tuple(pattern.axis_rules(grid))
    plan, stack = native.lane_plan(rules, shape, 16), native.stack_plan(rules, shape, 16, 8, 5)
    assert len(stacked_tiles(plan, stack)) / plan.tiles == pytest.approx(share, abs=0.1)
    # every block reads at most 8 columns for at most 5 tiles
    assert stack.blocks[:, 2].max(initial=1) <= 5 and stack.blocks[:, 3].max(initial=1) <= 8


def test_folds_add_every_lane_onto_its_key_once():
    """fold_lanes: lane l of a vector belongs to key idx[l]; the fold adds it there once."""
    rng = np.random.default_rng(0)
    for idx, real in [
        ([0, 0, 0, 0, 1, 2, 3, 4], 8),  # left border of neighborhood(7)
        ([0, 1, 2, 3, 4, 4, 4, 4], 8),  # right border
        ([0, 0, 1, 1, 2, 5, 6, 7], 5),  # short line: idle lanes 5.. (their own index)
        ([0, 0, 0, 1, 2, 3, 3, 3], 8),  # both
    ]:
        idx = np.array(idx)
        shift, sources = stack_plans.fold_lanes(idx, real)
        x = rng.standard_normal(len(idx))
        x[real:] = 0
        added = np.zeros(3 * len(idx))
        for layer in sources:
            for p, lane in enumerate(layer):
                if lane >= 0:
                    added[len(idx) + shift + p] += x[lane]
        expected = np.zeros(3 * len(idx))
        np.add.at(expected, len(idx) + idx, x)
        np.testing.assert_allclose(added, expected)


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [(Neighborhood(3), (9, 5, 20)), (Neighborhood(7), (30, 37)), (Neighborhood(5), (200,))],
    ids=repr,
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stacked_chunks_match_dense(monkeypatch, pattern, shape, dtype):
    """K and V transposed a few key tokens at a time (chunks) give the same attention and
    gradients (dK^T and dV^T added back chunk by chunk where chunks overlap)."""
    monkeypatch.setattr(stack_plans, "STACK_SPAN", 1)
    native.stack_plan.cache_clear()
    rules = tuple(pattern.axis_rules(Grid(shape)))
    vl = native.native_lanes(dtype)
    stack = native.constants().stack
    assert len(native.stack_plan(rules, shape, vl, columns(dtype), stack).chunks) >= 2
    assert_native_equals_dense(pattern, shape, heads=3, dtype=dtype)
    native.stack_plan.cache_clear()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_gradients(threads):
    """torch.set_num_threads governs the kernels; whole rows per thread or shared rows,
    the results agree."""
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for pattern, shape in [(Neighborhood(5), (11, 19)), (Window(3, shift=1), (9, 10))]:
            for batch, heads in [(1, 1), (1, 2), (3, 1)]:
                assert_native_equals_dense(pattern, shape, heads, batch)
    finally:
        torch.set_num_threads(saved)


# -- groups of points ----------------------------------------------------------------------
@given(
    n=st.integers(1, 300),
    group=st.integers(1, 70),
    scenes=st.integers(1, 3),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 99),
)
def test_groups_of_points_match_dense(n, group, scenes, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    points = Points(torch.randint(0, 20, (n, 3), generator=gen),
                    batch=torch.randint(0, scenes, (n,), generator=gen))  # fmt: skip
    pattern = Serialized("hilbert", group=group, shift=group // 2)
    q, k, v = qkv(n, 2, 1, 6, 4, dtype, seed)
    got = values_and_grads(lambda *x: attend(*x, pattern, points, backend="native"), q, k, v)
    expected = values_and_grads(dense(pattern, points, 2), q, k, v)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype])


@given(data=st.data())
def test_windows_on_points_match_dense(data):
    _, pattern = data.draw(windows((8, 8, 8)), label="pattern")
    n = data.draw(st.integers(1, 200), label="n")
    points = Points(torch.randint(0, 8, (n, 3), generator=torch.Generator().manual_seed(n)))
    q, k, v = qkv(n, 1)
    got = values_and_grads(lambda *x: attend(*x, pattern, points), q, k, v)
    expected = values_and_grads(dense(pattern, points, 1), q, k, v)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float64])


# -- the tests can fail ---------------------------------------------------------------------
MUTANT = """
import torch, torch.nn.functional as F
from ndformer import Grid, attend
from ndformer.kernels.native import native_status
assert native_status() == "ready", native_status()
failed = []
for spec, shape in [("neighborhood(5)", (9, 21)), ("window(4, shift=2)", (9, 10))]:
    grid = Grid(shape)
    q, k, v = (torch.randn(1, 2, grid.num_tokens, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = __import__("ndformer").pattern(spec).mask(grid, 2)
    dk = torch.autograd.grad(attend(q, k, v, spec, grid, backend="native").sum(), k)[0]
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum(), k)[0]
    failed.append(not torch.allclose(dk, ref, rtol=1e-10, atol=1e-12))
print(failed)
"""


@pytest.mark.parametrize("mutation", ["NDF_MUTATE_STACK_DK", "NDF_MUTATE_SHARED_DK"])
def test_dropping_one_dk_contribution_is_caught(tmp_path, mutation):
    """Kernels built with one dK contribution left out (a compile-time mutation) fail the
    comparison with dense gradients that the tests above make."""
    env = dict(os.environ, NDFORMER_CXXFLAGS=f"-D{mutation}", NDFORMER_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", MUTANT], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    caught = eval(done.stdout.strip().splitlines()[-1])
    assert caught == ([True, False] if "STACK" in mutation else [False, True])
