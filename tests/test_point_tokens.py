"""PointTokenizer: patch tokens from float points, and layers on sparse Points."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Attention, Block, Points, attend
from ndformer.point_tokens import PointTokenizer


@given(seed=st.integers(0, 2**31 - 1), patch=st.integers(1, 4), voxel=st.sampled_from([0.1, 0.25]))
def test_one_token_per_occupied_patch_of_each_scene(seed, patch, voxel):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 2 + 5
    batch = torch.randint(0, 3, (200,), generator=gen)
    rgb = torch.rand(200, 3, generator=gen, dtype=torch.float64)
    tokenizer = PointTokenizer(voxel, patch, in_chans=3, dim=16).double()
    out = tokenizer(xyz, rgb, batch)
    # the definition: per scene, shift to the minimum, floor to voxels, group by patch
    expected = set()
    for b in batch.unique().tolist():
        pts = xyz[batch == b]
        cells = torch.floor((pts - pts.min(0).values) / voxel).long() // patch
        expected |= {(b, *c) for c in cells.tolist()}
    got = {(b, *c) for b, c in zip(out.layout.batch.tolist(), out.layout.coords.tolist())}
    assert got == expected and out.tokens.shape == (len(expected), 16)
    # every point maps to its own scene's token, and offsets lie in [0, 1)
    assert torch.equal(out.layout.batch[out.point_token], batch)
    assert bool((out.offsets >= 0).all() and (out.offsets < 1).all())
    assert tokenizer.detokenize(out.tokens, out).shape == (200, 16)


def test_token_embeddings_do_not_depend_on_point_order_and_get_gradients():
    torch.manual_seed(0)
    xyz, rgb = torch.rand(300, 3, dtype=torch.float64), torch.rand(300, 3, dtype=torch.float64)
    tokenizer = PointTokenizer(0.1, 2, in_chans=3, dim=8).double()
    out = tokenizer(xyz, rgb)
    perm = torch.randperm(300)
    shuffled = tokenizer(xyz[perm], rgb[perm])
    assert torch.equal(shuffled.layout.coords, out.layout.coords)  # sorted unique patches
    torch.testing.assert_close(shuffled.tokens, out.tokens)
    xyz.requires_grad_(True)
    tokenizer.detokenize(tokenizer(xyz, rgb).tokens, tokenizer(xyz, rgb)).sum().backward()
    assert xyz.grad is not None and bool(xyz.grad.abs().sum() > 0)


def test_attention_and_block_on_points_match_attend_with_rope():
    torch.manual_seed(0)
    coords = torch.randint(0, 12, (90, 3))
    points = Points(coords, batch=(torch.arange(90) >= 50).long())
    attention = Attention(32, heads=4, pattern="serialized('hilbert', group=16)").double()
    x = torch.randn(90, 32, dtype=torch.float64)
    out = attention(x, points)
    # the same computation written out: qkv, RoPE on the coordinates, attend, projection
    from ndformer import RoPE

    q, k, v = attention.qkv(x).split(32, dim=-1)
    q, k, v = (t.unflatten(-1, (4, 8)).transpose(0, 1)[None] for t in (q, k, v))
    rope = RoPE(8, 3)
    q, k = rope(q, coords), rope(k, coords)
    want = attention.proj(attend(q, k, v, attention.pattern, points)[0].transpose(0, 1).flatten(1))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(attention(x[None].expand(2, -1, -1), points)[1], out)
    block = Block(32, 4, pattern="window(4)").double()
    assert block(x, points).shape == (90, 32)
    with pytest.raises(ValueError, match="expects x \\[N, dim\\] or \\[B, N, dim\\] with N = 90"):
        attention(x[:10], points)


def test_tokenizer_errors_name_the_argument():
    tokenizer = PointTokenizer(0.1, 2, in_chans=3, dim=8)
    with pytest.raises(ValueError, match=r"xyz must be float \[N, 3\], got \(5, 2\)"):
        tokenizer(torch.rand(5, 2), torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"features must be \[N, in_chans\] = \[5, 3\]"):
        tokenizer(torch.rand(5, 3), torch.rand(5, 4))
    with pytest.raises(ValueError, match=r"batch must be \[N\] = \[5\]"):
        tokenizer(torch.rand(5, 3), torch.rand(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="voxel_size must be > 0"):
        PointTokenizer(0, 2, 3, 8)
