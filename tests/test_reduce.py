"""Token reduction: ToMe and EViT conserve the size-weighted sum; unmerge restores order."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer.reduce import evit_fuse, start_source, tome_merge, unmerge


def weighted_sum(tokens, sizes):
    return (tokens * sizes[..., None]).sum(1)


@given(
    n=st.integers(2, 40), steps=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), data=st.data()
)
def test_tome_removes_exactly_r_and_conserves_the_weighted_sum(n, steps, seed, data):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, 5, generator=gen, dtype=torch.float64)
    sizes = torch.ones(3, n, dtype=torch.float64)
    source = start_source(x)
    original = weighted_sum(x, sizes)
    tokens = x
    for _ in range(steps):
        count = tokens.shape[1]
        if count < 2:
            break
        r = data.draw(st.integers(0, min((count + 1) // 2, count // 2)))
        out = tome_merge(tokens, sizes, source, r)
        assert out.tokens.shape[1] == count - r
        tokens, sizes, source = out.tokens, out.sizes, out.source
        torch.testing.assert_close(weighted_sum(tokens, sizes), original, rtol=1e-12, atol=1e-12)
        assert torch.equal(sizes.sum(1), torch.full((3,), float(n), dtype=torch.float64))
    # unmerge: original count and order; every original token gets its holder's features
    restored = unmerge(tokens, source)
    assert restored.shape == x.shape
    counts = torch.zeros_like(sizes).scatter_add(
        1, source, torch.ones_like(source, dtype=sizes.dtype)
    )
    assert torch.equal(counts, sizes)  # each token holds exactly `size` original tokens
    # the holder's features are the size-weighted mean of the originals it holds
    for holder in range(tokens.shape[1]):
        members = source[0] == holder
        torch.testing.assert_close(tokens[0, holder], x[0, members].mean(0))


def test_tome_merges_the_most_similar_pairs():
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.0]]])
    out = tome_merge(a, torch.ones(1, 4), start_source(a), r=1)
    # A = tokens 0, 2; B = tokens 1, 3. Token 0 is nearly identical to token 1: merged.
    assert out.source.tolist() == [[1, 1, 0, 2]]
    torch.testing.assert_close(out.tokens[0, 1], torch.tensor([1.0, 0.005]))
    assert out.sizes.tolist() == [[1.0, 2.0, 1.0]]


def test_evit_keeps_the_most_attended_and_fuses_the_rest():
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    sizes = torch.ones(2, 6, dtype=torch.float64)
    attention = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3], [1, 2, 3, 4, 5, 6.0]])
    out = evit_fuse(x, sizes, start_source(x), attention, keep=3)
    assert out.tokens.shape == (2, 4, 3) and out.sizes[:, -1].tolist() == [3.0, 3.0]
    torch.testing.assert_close(out.tokens[0, :3], x[0, [1, 3, 5]])
    torch.testing.assert_close(out.tokens[0, 3], x[0, [0, 2, 4]].mean(0))
    torch.testing.assert_close(weighted_sum(out.tokens, out.sizes), weighted_sum(x, sizes))
    assert unmerge(out.tokens, out.source).shape == x.shape


def test_reduction_errors():
    x = torch.randn(1, 5, 2)
    with pytest.raises(ValueError, match=r"ToMe r=3 must be in \[0, 2\] for 5 tokens"):
        tome_merge(x, torch.ones(1, 5), start_source(x), 3)
    with pytest.raises(ValueError, match=r"EViT keep=5 must be in \[1, 4\]"):
        evit_fuse(x, torch.ones(1, 5), start_source(x), torch.rand(1, 5), 5)
