"""Axial N-D RoPE: rotated q . k depends only on the relative offset, on every axis."""

from __future__ import annotations

import pytest
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


def rotated_by_definition(x, positions, split, base):
    """Every axis's block of 2 * pairs channels: pair (i, i + pairs) rotated by
    position[axis] * base ** (-i / pairs), written out one pair at a time."""
    out = x.clone()
    start = 0
    for axis, pairs in enumerate(split):
        for i in range(pairs):
            angle = positions[:, axis] * base ** (-i / pairs)
            a, b = x[..., start + i], x[..., start + pairs + i]
            out[..., start + i] = a * angle.cos() - b * angle.sin()
            out[..., start + pairs + i] = b * angle.cos() + a * angle.sin()
        start += 2 * pairs
    return out


@given(
    split=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    leftover=st.integers(0, 3),
    base=st.sampled_from([100.0, 10000.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_an_uneven_split_rotates_each_axis_by_its_own_frequencies(split, leftover, base, seed):
    gen = torch.Generator().manual_seed(seed)
    head_dim = 2 * sum(split) + leftover
    rope = RoPE(head_dim, len(split), base, split=split)
    x = torch.randn(2, 7, head_dim, generator=gen, dtype=torch.float64)
    positions = torch.randint(-9, 9, (7, len(split)), generator=gen).double()
    torch.testing.assert_close(rope(x, positions), rotated_by_definition(x, positions, split, base),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    # still relative: shifting every position by one offset leaves the scores unchanged
    shift = torch.randint(-5, 5, (1, len(split)), generator=gen).double()
    q = rope(x, positions)
    q2 = rope(x, positions + shift)
    torch.testing.assert_close(q @ q.transpose(-1, -2), q2 @ q2.transpose(-1, -2))


def test_split_errors():
    with pytest.raises(ValueError, match=r"one pair count >= 1 per axis \(3\), got \(12, 12\)"):
        RoPE(64, 3, split=(12, 12))
    with pytest.raises(ValueError, match=r"rotates 66 channels, more than head_dim = 64"):
        RoPE(64, 3, split=(12, 12, 9))
