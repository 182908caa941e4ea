"""The FlexAttention backend: its mask function and block mask are the pattern's mask
exactly (random 1-D..4-D patterns, no compiler needed), and compiled runs match dense
attention (CPU: inference only, float32, the precision FlexAttention offers there)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend, pattern
from ndformer.kernels.flex import block_flags, flex_available, mask_mod
from strategies import any_pattern, shapes

pytestmark = pytest.mark.skipif(not flex_available(), reason="torch without FlexAttention")


@given(data=st.data())
def test_mask_function_and_block_flags_equal_the_mask(data):
    shape = data.draw(shapes(), label="shape")
    heads = data.draw(st.integers(1, 4), label="heads")
    _, p = data.draw(any_pattern(shape, heads), label="pattern")
    grid = Grid(shape)
    try:
        fn = mask_mod(p, grid, heads, torch.device("cpu"))
    except ValueError as err:  # only non-separable mask patterns are refused
        assert "backend='flex' takes separable" in str(err)
        return
    n = grid.num_tokens
    tokens = torch.arange(n)
    dense = torch.stack(
        [
            fn(torch.tensor(0), torch.tensor(h), tokens[:, None], tokens[None, :])
            for h in range(heads)
        ]
    )
    expected = p.mask(grid, heads).expand(heads, n, n)
    assert torch.equal(dense, expected)

    block = data.draw(st.integers(1, 8), label="block")
    partial, full = block_flags(fn, n, heads, torch.device("cpu"), block=block)
    blocks = -(-n // block)
    padded = torch.zeros(heads, blocks * block, blocks * block, dtype=torch.bool)
    padded[:, :n, :n] = expected
    tiles = padded.view(heads, blocks, block, blocks, block)
    real = torch.zeros(blocks * block, dtype=torch.bool)
    real[:n] = True
    complete = real.view(blocks, block).all(-1)
    every = tiles.all(dim=(2, 4)) & complete[None, :, None] & complete[None, None, :]
    assert torch.equal(full, every)
    assert torch.equal(partial, tiles.any(dim=(2, 4)) & ~every)


@pytest.mark.parametrize(
    ("spec", "shape", "heads"),
    [
        ("window(4, shift=2)", (9, 12), 2),
        ("neighborhood(3, dilation=2) | axial(0)", (7, 7, 6), 2),
        ("headsplit(stripe(0, 2), causal(1) & window(3))", (9, 7), 4),
        ("neighborhood(2)", (300,), 1),
    ],
)
def test_compiled_flex_matches_dense_attention(spec, shape, heads):
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, grid.num_tokens, 8, generator=gen) for _ in range(3))
    expected = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=pattern(spec).mask(grid, heads)
    )
    with torch.no_grad():
        out = attend(q, k, v, spec, grid, backend="flex")
    # FlexAttention computes in float32 on CPU; compared with the float64 definition.
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_flex_errors_are_clear():
    grid = Grid((4, 4))
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(ValueError, match="inference only"):
        attend(q.requires_grad_(), q, q, "window(2)", grid, backend="flex")
    q = q.detach()
    with pytest.raises(ValueError, match=r"bfloat16 or float16 inputs; got torch\.float64"):
        attend(q.double(), q.double(), q.double(), "window(2)", grid, backend="flex")
    with pytest.raises(ValueError, match="backend='flex' takes separable"):
        attend(q, q, q, "serialized('z', 4)", grid, backend="flex")
    with pytest.raises(ValueError, match="not a mask pattern"):
        attend(q, q, q, "pooled(2)", grid, backend="flex")
    points = Points(torch.tensor([[0, 0], [1, 1], [5, 5]]))
    with pytest.raises(ValueError, match="backend='flex' works on grids"):
        attend(q[:, :, :3], q[:, :, :3], q[:, :, :3], "window(2)", points, backend="flex")
