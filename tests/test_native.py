"""The native lane kernel (kernels/cpp/) equals dense masked SDPA, and auto uses it
only where it applies (CPU inference, float32/float64, local separable patterns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend
from ndformer.kernels import lane_plans, native, stack_plans
from ndformer.patterns import Causal, HeadSplit, Neighborhood, Separable, Stripe, Window
from strategies import any_pattern, neighborhoods, shapes

if native._compiler() is None:  # pragma: no cover - every CI machine has g++
    pytest.skip("no C++ compiler: the native kernel cannot be built", allow_module_level=True)


def test_the_kernel_builds_here():
    assert native.native_status() == "ready"
    assert native.native_lanes(torch.float32) * 4 == native.native_lanes(torch.float64) * 8


def runs_natively(pattern, grid, heads):
    if isinstance(pattern, HeadSplit):
        return all(
            runs_natively(p, grid, stop - start)
            for p, (start, stop) in zip(pattern.patterns, pattern.head_groups(heads))
            if stop > start
        )
    return isinstance(pattern, Separable)


def dense_and_native(pattern, shape, heads, *, batch=1, scale=None, dtype=torch.float64, seed=0):
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, grid.num_tokens, 5, generator=gen) for _ in range(2))
    v = torch.randn(batch, heads, grid.num_tokens, 3, generator=gen)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    mask = pattern.mask(grid, heads)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attend(q, k, v, pattern, grid, backend="native", scale=scale), expected


@given(data=st.data())
def test_native_matches_dense_masked_sdpa(data):
    shape = data.draw(shapes(), label="shape")
    heads = data.draw(st.integers(1, 3), label="heads")
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    batch = data.draw(st.integers(1, 2), label="batch")
    scale = data.draw(st.none() | st.floats(0.1, 2.0), label="scale")
    if not runs_natively(pattern, Grid(shape), heads):
        with pytest.raises(ValueError, match="native"):
            dense_and_native(pattern, shape, heads)
        return
    out, expected = dense_and_native(pattern, shape, heads, batch=batch, scale=scale)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


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
    monkeypatch.setattr(lane_plans, "PLAN_CHUNK", 512)  # plans built in several chunks
    native.lane_plan.cache_clear()
    grid = Grid(shape)
    plan = native.lane_plan(tuple(pattern.axis_rules(grid)), shape, native.native_lanes(dtype))
    if kinds is not None:
        assert kinds <= set(np.unique(plan.kind).tolist())
    out, expected = dense_and_native(pattern, shape, heads=2, batch=2, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(out, expected, **tol)
    native.lane_plan.cache_clear()


def count_kernel_calls(monkeypatch) -> dict[str, int]:
    """Count calls of the two native kernels (by the name of their Python entry)."""
    calls = {"lanes": 0, "shared": 0}
    for key, name in (("lanes", "lane_attention"), ("shared", "shared_attention")):
        kernel = getattr(native, name)

        def counting(*args, key=key, kernel=kernel):
            calls[key] += 1
            return kernel(*args)

        monkeypatch.setattr(native, name, counting)
    return calls


def test_auto_takes_the_native_kernels_only_for_inference(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    pattern, shape = Neighborhood(5), (12, 13)
    q, k, v = (torch.randn(1, 2, 156, 8, dtype=torch.float64) for _ in range(3))
    expected = attend(q, k, v, pattern, shape, backend="reference")
    with torch.inference_mode():
        torch.testing.assert_close(attend(q, k, v, pattern, shape), expected)
    assert calls == {"lanes": 1, "shared": 0}
    q.requires_grad_()
    attend(q, k, v, pattern, shape).sum().backward()  # training: the tiled path
    assert calls == {"lanes": 1, "shared": 0}
    with torch.no_grad():
        attend(q, k, v, pattern, shape)
        attend(q, k, v, Window(4, shift=2), shape)
        attend(q, k, v, Stripe(0, 3), shape)
    assert calls == {"lanes": 2, "shared": 2}
    attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, shape)
    assert calls == {"lanes": 2, "shared": 2}


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [
        (Window(8), (16, 16)),  # 64 queries per window: several registers per tile
        (Window(4), (8, 12)),
        (Window(4, shift=2), (10, 11)),  # border windows: fewer keys and queries
        (Window(4), (4, 4, 8)),
        (Stripe(1, 5), (9, 12)),
        (Window((2, 3), dilation=(3, 2)), (7, 8)),
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
    # every query exactly once; every tile's keys are each of its queries' keys
    assert sorted(tokens[tokens >= 0].tolist()) == list(range(Grid(shape).num_tokens))
    mask = pattern.mask(Grid(shape), 1)[0]
    for t in range(plan.tiles):
        keys = plan.keys[t, : plan.counts[t]]
        for query in tokens[t][tokens[t] >= 0]:
            assert sorted(keys.tolist()) == torch.nonzero(mask[query]).flatten().tolist()
    out, expected = dense_and_native(pattern, shape, heads=2, batch=2, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(out, expected, **tol)


def test_native_backend_refuses_what_it_cannot_run():
    x = torch.randn(1, 1, 16, 4)
    with pytest.raises(ValueError, match="inference-only"):
        attend(x.requires_grad_(), x, x, "window(2)", (4, 4), backend="native")
    x = torch.randn(1, 1, 16, 4)
    with pytest.raises(ValueError, match="float32 or float64"):
        attend(x.half(), x.half(), x.half(), "window(2)", (4, 4), backend="native")
    with pytest.raises(ValueError, match="separable"):
        attend(x, x, x, "window(2) | axial(0)", (4, 4), backend="native")
    points = Points(torch.tensor([[0, 0], [1, 0], [3, 2]]))
    y = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="grids"):
        attend(y, y, y, "window(2)", points, backend="native")


def test_without_a_compiler_auto_falls_back(monkeypatch):
    monkeypatch.setenv("NDFORMER_NATIVE", "0")
    native._library.cache_clear()
    try:
        assert "disabled" in native.native_status()
        x = torch.randn(1, 2, 30, 4, dtype=torch.float64)
        with torch.no_grad():
            out = attend(x, x, x, "neighborhood(3)", (5, 6))
        expected = attend(x, x, x, "neighborhood(3)", (5, 6), backend="reference")
        torch.testing.assert_close(out, expected)
        with pytest.raises(ValueError, match="NDFORMER_NATIVE"):
            attend(x, x, x, "neighborhood(3)", (5, 6), backend="native")
    finally:
        monkeypatch.delenv("NDFORMER_NATIVE")
        native._library.cache_clear()


@pytest.mark.parametrize(
    "pattern", [Window(8, shift=3), Neighborhood(7), Neighborhood(5, dilation=2), Stripe(0, 4)]
)
def test_native_paths_stay_linear_in_tokens(pattern):
    from test_no_quadratic import LargestTensor

    grid = Grid((48, 48))  # N = 2304, N^2 = 5.3M
    n = grid.num_tokens
    q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
    with torch.inference_mode(), LargestTensor() as probe:
        attend(q, k, v, pattern, grid, backend="native")
    assert probe.largest < n * n / 4
    rules, vl = tuple(pattern.axis_rules(grid)), native.native_lanes(torch.float32)
    plan = native.shared_plan(rules, grid.shape, vl) or native.lane_plan(rules, grid.shape, vl)
    sizes = [x.size for x in vars(plan).values() if isinstance(x, np.ndarray)]
    slots = pattern.key_counts(grid).max().item()
    assert max(sizes) <= 2 * n * slots < n * n / 4


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


@given(data=st.data())
def test_stacked_neighborhoods_match_dense(data):
    dtype = data.draw(st.sampled_from([torch.float64, torch.float32]), label="dtype")
    vl = native.native_lanes(dtype)
    shape = data.draw(stackable_shapes(vl), label="shape")
    _, pattern = data.draw(neighborhoods(shape), label="pattern")
    rows = data.draw(st.sampled_from([(1, 1), (1, 3), (2, 2)]), label="batch, heads")
    # channels: whole VL x VL register transposes and 8 / 4 / 1-channel value blocks
    e, ev = data.draw(st.sampled_from([(vl, 13), (2 * vl, vl), (5, 3)]), label="channels")
    grid = Grid(shape)
    rules = tuple(pattern.axis_rules(grid))
    # K and V transposed for the whole grid at once, or in chunks of few key tokens
    span = data.draw(st.sampled_from([stack_plans.STACK_SPAN, 1]), label="span")
    saved, stack_plans.STACK_SPAN = stack_plans.STACK_SPAN, span
    try:
        native.stack_plan.cache_clear()
        plan, stack = native.lane_plan(rules, shape, vl), native.stack_plan(rules, shape, vl)
    finally:
        stack_plans.STACK_SPAN = saved
        native.stack_plan.cache_clear()
    held = stacked_tiles(plan, stack)
    assert sorted(held + stack.rest.tolist()) == list(range(plan.tiles))  # each tile once
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))
    q, k = (torch.randn(*rows, grid.num_tokens, e, generator=gen, dtype=dtype) for _ in "qk")
    v = torch.randn(*rows, grid.num_tokens, ev, generator=gen, dtype=dtype)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.mask(grid, rows[1]))
    out = native.lane_attention(q, k, v, plan, e**-0.5, stack)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(out, expected, **tol)


@pytest.mark.parametrize(
    ("pattern", "shape", "share"),
    [
        (Neighborhood(7), (24, 64), 1.0),  # clamped borders are a lane permutation
        (Neighborhood(3), (6, 5, 32), 1.0),
        (Neighborhood(5, dilation=(2, 1)), (12, 48), 1.0),
        (Neighborhood(3, dilation=2), (6, 48), 0.0),  # lanes 2 tokens apart: not stacked
        (Neighborhood(7), (20, 37), 1.0),  # 37 = 2 x 16 + 5: 5-lane tiles too
    ],
    ids=repr,
)
def test_stacked_plan_takes_the_tiles_it_can(pattern, shape, share):
    grid = Grid(shape)
    rules = tuple(pattern.axis_rules(grid))
    plan, stack = native.lane_plan(rules, shape, 16), native.stack_plan(rules, shape, 16)
    assert len(stacked_tiles(plan, stack)) / plan.tiles == pytest.approx(share, abs=0.1)
    # every block reads at most 8 columns for at most 3 tiles
    assert stack.blocks[:, 2].max(initial=1) <= 3 and stack.blocks[:, 3].max(initial=1) <= 8


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [(Neighborhood(3), (9, 5, 20)), (Neighborhood(7), (30, 37)), (Neighborhood(5), (200,))],
    ids=repr,
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stacked_chunks_match_dense(monkeypatch, pattern, shape, dtype):
    """K and V transposed a few key tokens at a time (chunks) give the same attention."""
    monkeypatch.setattr(stack_plans, "STACK_SPAN", 1)
    native.stack_plan.cache_clear()
    rules = tuple(pattern.axis_rules(Grid(shape)))
    assert len(native.stack_plan(rules, shape, native.native_lanes(dtype)).chunks) >= 2
    out, expected = dense_and_native(pattern, shape, heads=3, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(out, expected, **tol)
    native.stack_plan.cache_clear()
