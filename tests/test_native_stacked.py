"""The native kernels' stacked-lane path (neighborhoods several query lanes at a time),
thread counts, groups and windows on points, and mutants that a missing gradient
contribution must fail: split from test_native.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend
from ndformer.kernels import native
from ndformer.kernels.native import stack_plans
from ndformer.patterns import (
    Neighborhood,
    Serialized,
    Window,
)
from strategies import neighborhoods, windows

if native.compiler() is None:  # pragma: no cover - every CI machine has g++
    pytest.skip("no C++ compiler: the native kernels cannot be built", allow_module_level=True)

from test_native import (
    assert_matches_reference,
    assert_native_equals_dense,
    dense,
    poisoned_allocations,
    qkv,
    run_plan,
    values_and_grads,
)


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
    assert_matches_reference(got, dense(pattern, grid, rows[1]), q, k, v)


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


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [(Neighborhood(7), (12, 12)), (Neighborhood(3), (8, 8, 8)), (Neighborhood(5), (16, 8))],
    ids=repr,
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_scratch_past_the_tokens_is_never_read_unwritten(pattern, shape, dtype, threads):
    """Token counts that fill whole SIMD registers (so no transposed block pads the columns
    past the tokens with zeros), with every buffer starting as NaN: the masked lanes of the
    border slots read those columns, and the last keys' dK, dV once came out NaN (a CI
    machine's train step diverged at step 2; 12x12 float32 is that run's case)."""
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert_native_equals_dense(pattern, shape, 2, 1 + threads, dtype, e=8, ev=8)
    finally:
        torch.set_num_threads(saved)


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
    with poisoned_allocations():
        got = values_and_grads(lambda *x: attend(*x, pattern, points, backend="native"), q, k, v)
    assert_matches_reference(got, dense(pattern, points, 2), q, k, v)


@given(data=st.data())
def test_windows_on_points_match_dense(data):
    _, pattern = data.draw(windows((8, 8, 8)), label="pattern")
    n = data.draw(st.integers(1, 200), label="n")
    points = Points(torch.randint(0, 8, (n, 3), generator=torch.Generator().manual_seed(n)))
    q, k, v = qkv(n, 1)
    with poisoned_allocations():
        got = values_and_grads(lambda *x: attend(*x, pattern, points), q, k, v)
    assert_matches_reference(got, dense(pattern, points, 1), q, k, v)


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
    # -O0 (the last -O wins): the same semantics, built in a third of the time
    flags = f"-D{mutation} -O0"
    env = dict(os.environ, NDFORMER_CXXFLAGS=flags, NDFORMER_KERNEL_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", MUTANT], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    caught = eval(done.stdout.strip().splitlines()[-1])
    assert caught == ([True, False] if "STACK" in mutation else [False, True])
