"""Patterns that change which keys exist (Pooled, Linear, HiLo): fast path == definition."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, attend, pattern
from ndformer.kernels import keysets
from ndformer.patterns import HeadSplit, HiLo, Linear, Pooled, Routing, Summary, Window
from strategies import shapes


def qkv(grid: Grid, heads: int, seed: int, ev: int = 6):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, heads, grid.num_tokens, 4)] * 2 + [(2, heads, grid.num_tokens, ev)]
    return [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]


def rounding_scale(p, q, k) -> float:
    """How much the formula amplifies float64 rounding: 1, or for Linear 1 / its smallest
    denominator (relu features can make phi(q) . sum phi(k) tiny; it is clamped at eps)."""
    if not isinstance(p, Linear):
        return 1.0
    phi = (lambda x: F.elu(x) + 1) if p.feature == "elu" else F.relu
    denominator = (phi(q) @ phi(k).sum(-2).unsqueeze(-1)).detach().clamp_min(p.eps)
    return max(1.0, float(1 / denominator.min()))


def assert_fast_equals_reference(p, grid: Grid, heads: int, seed: int) -> None:
    q, k, v = qkv(grid, heads, seed)
    fast = attend(q, k, v, p, grid)
    reference = attend(q, k, v, p, grid, backend="reference")
    atol = 1e-12 * rounding_scale(p, q, k)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=atol)
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed + 1),
                          dtype=torch.float64)  # fmt: skip
    got = torch.autograd.grad((fast * weights).sum(), (q, k, v))
    want = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(
            a, b, rtol=1e-10, atol=atol * (1 + float(v.detach().abs().max()))
        )


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_pooled_fast_path_equals_its_definition(shape, seed, data):
    grid = Grid(shape)
    sizes = data.draw(st.tuples(*[st.integers(1, n + 1) for n in grid.shape]))
    assert_fast_equals_reference(Pooled(sizes), grid, heads=2, seed=seed)


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_pooled_to_fixed_cells_equals_its_definition(shape, seed, data):
    grid = Grid(shape)
    cells = data.draw(st.tuples(*[st.integers(1, n + 2) for n in grid.shape]))
    p = Pooled(cells=cells)
    # at most `cells` blocks per axis, each ceil(n / c) tokens wide
    assert all(b <= c for b, c in zip(p.blocks(grid), cells))
    assert p._sizes(grid) == tuple(-(-n // c) for n, c in zip(grid.shape, cells))
    assert_fast_equals_reference(p, grid, heads=2, seed=seed)


def test_pooled_cells_keep_the_key_count_fixed_as_the_grid_grows():
    for n in (8, 16, 32, 64):
        assert Pooled(cells=4).key_counts(Grid((n, n, n))).unique().tolist() == [64]
    assert (
        Pooled(cells=4) == pattern("pooled(cells=4)") and repr(Pooled(cells=4)) == "pooled(cells=4)"
    )
    with pytest.raises(ValueError, match=r"exactly one of size .* and cells"):
        Pooled(2, cells=2)
    with pytest.raises(ValueError, match=r"exactly one of size .* and cells"):
        Pooled()
    with pytest.raises(ValueError, match="Pooled cells has 3 entries"):
        Pooled(cells=(2, 2, 2)).key_counts(Grid((4, 4)))


@given(
    shape=shapes(),
    seed=st.integers(0, 2**31 - 1),
    feature=st.sampled_from(["elu", "relu"]),
    chunk_bytes=st.sampled_from([keysets.LINEAR_CHUNK_BYTES, 1, 1000]),
)
def test_linear_fast_path_equals_its_definition(shape, seed, feature, chunk_bytes):
    """Also with tiny token chunks (1 and about 5 tokens here), so the chunked sums run."""
    grid = Grid(shape)
    with mock.patch.object(keysets, "LINEAR_CHUNK_BYTES", chunk_bytes):
        assert_fast_equals_reference(Linear(feature), grid, heads=2, seed=seed)


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_hilo_fast_path_equals_its_definition(shape, seed, data):
    grid = Grid(shape)
    window = data.draw(st.integers(1, max(grid.shape)))
    alpha = data.draw(st.sampled_from([0.25, 0.5, 0.75]))
    cells = data.draw(st.none() | st.integers(1, max(grid.shape)))
    assert_fast_equals_reference(HiLo(window, alpha, cells=cells), grid, heads=4, seed=seed)


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_summary_fast_path_equals_its_definition(shape, seed, data):
    grid = Grid(shape)
    window = data.draw(st.tuples(*[st.integers(1, n + 1) for n in shape]))
    block = data.draw(st.tuples(*[st.integers(1, n + 1) for n in shape]))
    assert_fast_equals_reference(Summary(window, block), grid, heads=2, seed=seed)


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_routing_fast_path_equals_its_definition(shape, seed, data):
    grid = Grid(shape)
    region = data.draw(st.tuples(*[st.integers(1, n + 1) for n in shape]))
    regions = Pooled(tuple(min(r, n) for r, n in zip(region, shape))).blocks(grid)
    topk = data.draw(st.integers(1, int(torch.tensor(regions).prod())))
    assert_fast_equals_reference(Routing(region, topk), grid, heads=2, seed=seed)


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_routing_to_every_region_is_full_attention(shape, seed, data):
    grid = Grid(shape)
    region = data.draw(st.tuples(*[st.integers(1, n) for n in shape]))
    regions = int(torch.tensor(Pooled(region).blocks(grid)).prod())
    q, k, v = qkv(grid, 2, seed)
    torch.testing.assert_close(
        attend(q, k, v, Routing(region, regions), grid), F.scaled_dot_product_attention(q, k, v)
    )


def test_summary_over_the_whole_grid_with_one_token_blocks_is_one_softmax_over_both_copies():
    grid = Grid((4, 5))
    q, k, v = qkv(grid, 2, seed=1)
    out = attend(q, k, v, Summary((4, 5), 1), grid)
    duplicated = F.scaled_dot_product_attention(q, torch.cat((k, k), -2), torch.cat((v, v), -2))
    torch.testing.assert_close(out, duplicated)
    # window part + every pooled key: a query sees its window plus one key per block
    counts = Summary(2, (2, 5)).key_counts(grid)
    assert set(counts.unique().tolist()) == {4 + 2, 2 + 2}


def test_pooled_by_one_token_is_full_attention_and_one_block_is_the_mean():
    grid = Grid((5, 6))
    q, k, v = qkv(grid, 2, seed=0)
    full = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attend(q, k, v, Pooled(1), grid), full)
    one_block = attend(q, k, v, Pooled((5, 6)), grid)
    torch.testing.assert_close(one_block, v.mean(-2, keepdim=True).expand_as(one_block))
    # border blocks average only the tokens they have: 5 = 4 + 1 on axis 0
    pooled = Pooled((4, 6)).pool(v.detach(), grid)
    torch.testing.assert_close(pooled[:, :, 1], v.detach()[:, :, 24:].mean(-2))


def test_linear_matches_the_formula_token_by_token():
    grid = Grid((7,))
    q, k, v = (t.detach() for t in qkv(grid, 1, seed=3))
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    out = attend(q, k, v, Linear(), grid)
    for i in range(7):
        weights = [(phi(q[..., i, :]) * phi(k[..., j, :])).sum(-1) for j in range(7)]  # [B, h]
        numerator = sum(w[..., None] * v[..., j, :] for j, w in enumerate(weights))
        torch.testing.assert_close(out[..., i, :], numerator / sum(weights)[..., None])


def test_hilo_gives_int_heads_alpha_heads_to_pooled():
    split = HiLo(4, alpha=0.3)
    assert isinstance(split, HeadSplit) and split.patterns == (Pooled(4), Window(4))
    assert split.head_groups(8) == [(0, 2), (2, 8)]  # int(8 * 0.3) = 2 pooled heads
    assert pattern("hilo(4, alpha=0.3)") == split
    linear = pattern("hilo(4, cells=8)")
    assert linear.patterns == (Pooled(cells=8), Window(4))
    assert linear.key_counts(Grid((64, 64)), heads=2)[0].unique().tolist() == [8 * 8]


def test_key_counts_and_clear_errors():
    grid = Grid((5, 6))
    assert Pooled(2).key_counts(grid).unique().tolist() == [3 * 3]
    assert Linear().key_counts(grid).unique().tolist() == [30]
    with pytest.raises(ValueError, match=r"pooled\(2\) is not a mask .* averages over 2 blocks"):
        Pooled(2).mask(grid)
    with pytest.raises(ValueError, match="is not a mask"):
        HiLo(2).mask(grid, heads=2)
    with pytest.raises(ValueError, match=r"Union combines masks key by key; linear is not a mask"):
        Window(2) | Linear()
    q, k, v = qkv(grid, 2, seed=0)
    with pytest.raises(ValueError, match="use backend 'auto' or 'reference'"):
        attend(q, k, v, Pooled(2), grid, backend="tiled")
    with pytest.raises(ValueError, match="Linear feature must be one of"):
        Linear("tanh")
    with pytest.raises(ValueError, match="HiLo alpha must be in"):
        HiLo(2, alpha=1.0)
    with pytest.raises(ValueError, match=r"topk=10 exceeds the 9 regions of 2 on grid \(5, 6\)"):
        attend(q, k, v, Routing(2, 10), grid)
    with pytest.raises(ValueError, match="topk must be an int >= 1"):
        Routing(2, 0)
    with pytest.raises(ValueError, match="Pooled size has 3 entries"):
        attend(q, k, v, Pooled((2, 2, 2)), grid)


def test_bench_counts_linear_flops_by_its_own_formula():
    from ndformer.bench.measure import Case, case_flops, pairs_per_head

    linear = Case("linear", None, (4, 4), heads=4, head_dim=32)
    pairs = pairs_per_head("linear", (4, 4), 4)
    assert case_flops(linear, pairs) == 4 * 16 * 32 * 32 * 4
    pooled = Case("pooled(2)", None, (4, 4), heads=4, head_dim=32)
    assert case_flops(pooled, pairs_per_head("pooled(2)", (4, 4), 4)) == 4 * 16 * 4 * 32 * 4


def test_show_draws_the_effective_key_set(tmp_path):
    from ndformer.viz import pattern_view

    low = pattern_view("hilo(4)", (8, 8), query=(1, 1), head=0, heads=2)
    high = pattern_view("hilo(4)", (8, 8), query=(1, 1), head=1, heads=2)
    assert bool(low.values.all())  # pooled head: every token feeds a pooled key
    assert int(high.values.sum()) == 16  # window head: its 4x4 window
    assert int(low.key_counts[0]) == 4 and int(high.key_counts[0]) == 16
