"""attend() equals dense masked SDPA (values and gradients, float64) for every pattern and path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, attend
from ndformer.patterns import (
    Causal,
    Full,
    HeadSplit,
    Neighborhood,
    Separable,
    Stripe,
    Window,
)
from strategies import any_pattern, shapes

BACKENDS = ("auto", "tiled", "blocksparse", "reference")


def applicable(pattern, grid, backend, heads):
    """Can ``backend`` run ``pattern``? (tiled: local separable patterns, head by head)"""
    if backend != "tiled":
        return True
    if isinstance(pattern, HeadSplit):
        groups = pattern.head_groups(heads)
        return all(
            applicable(p, grid, backend, stop - start)
            for p, (start, stop) in zip(pattern.patterns, groups)
            if stop > start
        )
    return isinstance(pattern, Separable) and all(r.local for r in pattern.axis_rules(grid))


def inputs(grid, batch, heads, head_dim, value_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    n = grid.num_tokens

    def make(d):
        return torch.randn(batch, heads, n, d, generator=gen, dtype=torch.float64).requires_grad_()

    return make(head_dim), make(head_dim), make(value_dim), gen


def check_against_dense(pattern, shape, heads, backend, tile=None, batch=1, scale=None, seed=0):
    grid = Grid(shape)
    q, k, v, gen = inputs(grid, batch, heads, 4, 3, seed)
    upstream = torch.randn(batch, heads, grid.num_tokens, 3, generator=gen, dtype=torch.float64)

    expected = F.scaled_dot_product_attention(
        q, k, v, attn_mask=pattern.mask(grid, heads), scale=scale
    )
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (q, k, v))
    out = attend(q, k, v, pattern, grid, backend=backend, tile=tile, scale=scale)
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))

    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    for name, got, want in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(
            got, want, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"d{n}: {m}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_attend_matches_dense_masked_sdpa(backend, data):
    shape = data.draw(shapes(), label="shape")
    heads = data.draw(st.integers(1, 4), label="heads")
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    if not applicable(pattern, Grid(shape), backend, heads):
        with pytest.raises(ValueError, match="tiled"):
            check_against_dense(pattern, shape, heads, backend)
        return
    tile = data.draw(st.none() | st.integers(1, 5) | st.tuples(*[st.integers(1, 6) for _ in shape]))
    batch = data.draw(st.integers(1, 2), label="batch")
    scale = data.draw(st.none() | st.floats(0.1, 2.0), label="scale")
    check_against_dense(pattern, shape, heads, backend, tile=tile, batch=batch, scale=scale)


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [
        (Window(8), (64,)),  # long 1-D sequence: many tiles
        (Window((4, 3), shift=(2, 1)), (13, 10)),
        (Window(3, dilation=4), (12, 12)),  # MaxViT grid: dilation = L // size
        (Neighborhood(7), (20, 21)),
        (Neighborhood((3, 5, 3), dilation=(2, 1, 1)), (9, 10, 7)),
        (Neighborhood(3, causal=(True, False, False)), (6, 8, 7)),
        (Stripe(1, 5), (9, 12)),
        (Causal(0), (7, 6, 5)),
        (Window(4) | Stripe(0, 3), (10, 11)),
        (Neighborhood(5) & Causal(1), (9, 9)),
        (HeadSplit(Stripe(0, 3), Stripe(1, 3)), (12, 12)),
        (Neighborhood(2), (5, 4, 3, 4)),
    ],
    ids=repr,
)
@pytest.mark.parametrize("backend", ["auto", "blocksparse"])
def test_attend_matches_dense_on_larger_grids(pattern, shape, backend):
    check_against_dense(pattern, shape, heads=4, backend=backend, batch=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", [Window(4, shift=2), Neighborhood(5), Causal(1)], ids=repr)
def test_low_precision_dtypes_stay_close_to_dense(pattern, dtype):
    grid = Grid((12, 10))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, grid.num_tokens, 8, generator=gen).to(dtype) for _ in range(3))
    expected = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=pattern.mask(grid)
    )
    out = attend(q, k, v, pattern, grid)
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


def test_full_pattern_is_plain_sdpa():
    grid = Grid((5, 7))
    q, k, v = (torch.randn(1, 2, 35, 8) for _ in range(3))
    torch.testing.assert_close(
        attend(q, k, v, Full(), grid), F.scaled_dot_product_attention(q, k, v)
    )


def test_spec_strings_and_shape_tuples_are_accepted():
    q, k, v = (torch.randn(1, 2, 24, 8, dtype=torch.float64) for _ in range(3))
    a = attend(q, k, v, "window(2, shift=1)", (4, 6))
    b = attend(q, k, v, Window(2, shift=1), Grid((4, 6)))
    torch.testing.assert_close(a, b)


def test_value_head_dim_may_differ_from_query_head_dim():
    grid = Grid((6, 6))
    q, k = (torch.randn(1, 2, 36, 8, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, 36, 5, dtype=torch.float64)
    for backend in ("auto", "blocksparse"):
        out = attend(q, k, v, Neighborhood(3), grid, backend=backend)
        assert out.shape == (1, 2, 36, 5)


@pytest.mark.parametrize(
    ("pattern", "shape", "tile"),
    [
        (Window(4, shift=2), (9, 10), None),
        (Neighborhood(3, dilation=2), (9, 7), 3),
        (Stripe(0, 3), (5, 7, 4), None),
    ],
    ids=repr,
)
def test_tiled_path_with_merged_padded_tiles(monkeypatch, pattern, shape, tile):
    # Normally tiles of different sizes run as separate parts; past MAX_PARTS they are
    # merged into one padded part. Force the merged path and check it too.
    from ndformer.kernels import tiled as tiling

    monkeypatch.setattr(tiling, "MAX_PARTS", 1)
    tiling.local_plan.cache_clear()
    try:
        check_against_dense(pattern, shape, heads=2, backend="tiled", tile=tile, batch=2)
        plan = tiling.local_plan(
            pattern.axis_rules(Grid(shape)), shape, (tile or 2,) * len(shape), torch.device("cpu")
        )
        assert len(plan.parts) == 1
    finally:
        tiling.local_plan.cache_clear()


@pytest.mark.parametrize(
    "pattern", [Window(3, shift=1), Neighborhood(3), Causal(0), Window(2) | Stripe(0, 2)], ids=repr
)
def test_plans_built_in_inference_mode_still_train(pattern):
    # The first call (which builds and caches the plan) happens at inference time;
    # a later training call must still be able to save the plan's tensors for backward.
    grid = Grid((7, 11, 3))
    q, k, v = (torch.randn(1, 2, grid.num_tokens, 4, requires_grad=True) for _ in range(3))
    with torch.inference_mode():
        attend(q, k, v, pattern, grid)
    attend(q, k, v, pattern, grid).sum().backward()
    assert q.grad is not None


@given(data=st.data())
def test_regular_partitions_take_the_block_path_and_match_dense(data):
    """Windows that divide the grid (contiguous, or MaxViT-style dilated residue classes)
    are reordered by views instead of gathers; values and gradients still equal dense."""
    from ndformer.kernels import tiled as tiling

    ndim = data.draw(st.integers(1, 4), label="ndim")
    tiles = data.draw(st.tuples(*[st.integers(1, 3)] * ndim), label="tiles")
    size = data.draw(st.tuples(*[st.integers(1, 4)] * ndim), label="size")
    strided = data.draw(st.tuples(*[st.booleans()] * ndim), label="strided")
    shape = tuple(t * s for t, s in zip(tiles, size, strict=True))
    dilation = tuple(t if d else 1 for t, d in zip(tiles, strided, strict=True))
    pattern = Window(size, dilation=dilation)
    plan = tiling.local_plan(
        pattern.axis_rules(Grid(shape)), shape, (4,) * ndim, torch.device("cpu")
    )
    # An axis with one tile, or tiles of one token, reads the same either way.
    expected = tuple(
        (d and t > 1 and s > 1, t, s) for t, s, d in zip(tiles, size, strided, strict=True)
    )
    assert plan.blocks == expected
    heads = data.draw(st.integers(1, 3), label="heads")
    check_against_dense(pattern, shape, heads, backend="tiled", tile=4, batch=2)


def test_irregular_tilings_keep_the_gather_path():
    from ndformer.kernels import tiled as tiling

    for pattern, shape in ((Window(8), (20, 16)), (Window(4, shift=2), (8, 8)),
                           (Neighborhood(3), (8, 8))):  # fmt: skip
        rules = pattern.axis_rules(Grid(shape))
        assert tiling.local_plan(rules, shape, (8, 8), torch.device("cpu")).blocks is None


@given(data=st.data())
def test_tiled_path_in_small_chunks_matches_dense(data):
    """Masked parts run in many chunks (strided and gathered tiles sliced per chunk)."""
    from unittest import mock

    from ndformer.kernels import tiled as local

    shape = data.draw(shapes(), label="shape")
    heads = data.draw(st.integers(1, 3), label="heads")
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    if not applicable(pattern, Grid(shape), "tiled", heads):
        return
    with mock.patch.object(local, "SCORES_PER_CHUNK", 64):
        check_against_dense(pattern, shape, heads, backend="tiled", batch=2)


def test_shifted_window_parts_are_gathered_by_strided_views():
    from ndformer.kernels import tiled as tiling

    shape = (9, 10)
    rules = Window(4, shift=2).axis_rules(Grid(shape))
    plan = tiling.local_plan(rules, shape, (4, 4), torch.device("cpu"))
    assert plan.blocks is None and len(plan.parts) > 1
    assert all(p.query_affine is not None and p.key_affine is not None for p in plan.parts)
    # Border windows of 2 tokens at both ends of axis 0: tiles at 0 and 6 (9 = 2 + 4 + 3).
    assert {p.query_affine[0] for p in plan.parts} >= {(2, 0, 1, 1, 4)}
    check_against_dense(Window(4, shift=2), shape, heads=2, backend="tiled", batch=2)
