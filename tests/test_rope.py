"""Axial N-D RoPE: rotated q . k depends only on the relative offset, on every axis."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer import RoPE


@given(
    ndim=st.integers(1, 4),
    pairs_per_axis=st.integers(1, 4),
    leftover=st.integers(0, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_scores_depend_only_on_the_offset_on_every_axis(ndim, pairs_per_axis, leftover, seed):
    # leftover channels beyond a multiple of 2 * ndim pass through unrotated.
    head_dim = 2 * ndim * pairs_per_axis + leftover % (2 * ndim)
    rope = RoPE(head_dim, ndim)
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, head_dim, generator=gen, dtype=torch.float64)
    p, r = torch.randint(-50, 50, (2, 1, ndim), generator=gen)
    shift = torch.randint(-50, 50, (1, ndim), generator=gen)

    def score(pq, pk):
        return (rope(q, pq) * rope(k, pk)).sum()

    # Translating both positions by any vector leaves the score unchanged ...
    torch.testing.assert_close(score(p, r), score(p + shift, r + shift), rtol=1e-9, atol=1e-9)
    # ... and so does translating along each single axis.
    for axis in range(ndim):
        step = torch.zeros(1, ndim, dtype=torch.long)
        step[0, axis] = int(shift[0, axis])
        torch.testing.assert_close(score(p, r), score(p + step, r + step), rtol=1e-9, atol=1e-9)


@given(ndim=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_every_axis_is_encoded(ndim, seed):
    # Changing the offset on any one axis changes the score: no axis is ignored.
    rope = RoPE(4 * ndim, ndim)
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 4 * ndim, generator=gen, dtype=torch.float64)
    origin = torch.zeros(1, ndim, dtype=torch.long)
    base = (rope(q, origin) * rope(k, origin)).sum()
    for axis in range(ndim):
        moved = origin.clone()
        moved[0, axis] = 1
        assert not torch.isclose((rope(q, origin) * rope(k, moved)).sum(), base)


def test_rotation_preserves_norms_and_zero_position_is_identity():
    rope = RoPE(12, 3)
    x = torch.randn(2, 4, 7, 12, dtype=torch.float64)
    positions = torch.randint(0, 9, (7, 3))
    torch.testing.assert_close(rope(x, positions).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rope(x, torch.zeros(7, 3, dtype=torch.long)), x)


def test_float_positions_and_dtypes():
    rope = RoPE(8, 2)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = rope(x, torch.rand(3, 2) * 10)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_channels_beyond_the_rotation_pairs_pass_through():
    rope = RoPE(64, 3)  # 3 axes x 20 rotated channels, 4 unrotated
    assert rope.rotated == 60
    x = torch.randn(5, 64, dtype=torch.float64)
    out = rope(x, torch.randint(1, 9, (5, 3)))
    torch.testing.assert_close(out[:, 60:], x[:, 60:], rtol=0, atol=0)
    assert not torch.allclose(out[:, :60], x[:, :60])
