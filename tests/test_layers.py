"""Attention and Block over channels-last N-D tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ndformer import Attention, Block, Grid, RoPE
from ndformer.patterns import HeadSplit, Neighborhood, Stripe, Window


def manual_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """The module's computation written out with a dense mask."""
    b, grid = x.shape[0], Grid(tuple(x.shape[1:-1]))
    qkv = module.qkv(x.reshape(b, -1, module.dim))
    e = module.qk_dim
    q, k, v = qkv[..., :e], qkv[..., e : 2 * e], qkv[..., 2 * e :]
    q, k, v = (t.reshape(b, t.shape[1], module.heads, -1).transpose(1, 2) for t in (q, k, v))
    if module.qk_norm:  # per head and token: zero mean, unit variance, then scale and shift

        def normalize(t, norm):
            centred = t - t.mean(-1, keepdim=True)
            scaled = centred / (centred.square().mean(-1, keepdim=True) + norm.eps).sqrt()
            return scaled * norm.weight + norm.bias

        q, k = normalize(q, module.q_norm), normalize(k, module.k_norm)
    rope = RoPE(module.qk_head_dim, grid.ndim)
    q, k = rope(q, grid.coords), rope(k, grid.coords)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=module.pattern.mask(grid, module.heads))
    return module.proj(out.transpose(1, 2).reshape(x.shape))


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((11,), "neighborhood(3)"),
        ((6, 7), Window(3, shift=1)),
        ((5, 4, 6), "headsplit(stripe(0, 2), stripe(2, 3))"),
        ((3, 4, 3, 4), Neighborhood(2) | Stripe(-1, 2)),
    ],
    ids=str,
)
@pytest.mark.parametrize(("qk_fraction", "qk_norm"), [(1.0, False), (0.5, False), (0.5, True)])
def test_attention_equals_its_dense_definition(shape, pattern, qk_fraction, qk_norm):
    torch.manual_seed(0)
    ndim = len(shape)
    qk_dim = int(8 * ndim * qk_fraction)  # 0.5: compressed query/key channels (S2AFormer)
    module = Attention(8 * ndim, heads=2, pattern=pattern, qk_dim=qk_dim, qk_norm=qk_norm)
    module = module.double()
    if qk_norm:  # affine parameters away from their identity start, so that they count
        for norm in (module.q_norm, module.k_norm):
            torch.nn.init.normal_(norm.weight, 1.0, 0.5)
            torch.nn.init.normal_(norm.bias, 0.0, 0.5)
        assert "qk_norm=True" in repr(module)
    assert module.qkv.out_features == 2 * qk_dim + 8 * ndim
    x = torch.randn(2, *shape, 8 * ndim, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, manual_attention(module, x))
    grad = torch.autograd.grad(out.sum(), x)[0]
    expected = torch.autograd.grad(manual_attention(module, x).sum(), x)[0]
    torch.testing.assert_close(grad, expected)


def test_attention_accepts_spec_strings_and_shows_them():
    module = Attention(16, heads=2, pattern="window(4, shift=2)")
    assert module.pattern == Window(4, shift=2)
    assert "window(4, shift=2)" in repr(module)


def test_attention_without_rope_is_permutation_equivariant_under_full():
    torch.manual_seed(0)
    module = Attention(16, heads=2, rope=False).double()
    x = torch.randn(1, 4, 5, 16, dtype=torch.float64)
    perm = torch.randperm(20)
    flat = x.reshape(1, 20, 16)
    out = module(flat[:, perm].reshape(1, 4, 5, 16)).reshape(1, 20, 16)
    torch.testing.assert_close(out, module(x).reshape(1, 20, 16)[:, perm])


def test_block_shapes_gradients_and_drop_path():
    torch.manual_seed(0)
    block = Block(24, heads=2, pattern=HeadSplit(Stripe(0, 2), Stripe(1, 2)), drop_path=0.5)
    x = torch.randn(3, 6, 5, 24, requires_grad=True)
    block.train()
    block(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    block.eval()
    torch.testing.assert_close(block(x), block(x))  # no randomness at inference
    with pytest.raises(ValueError, match="drop_path must be in"):
        Block(24, 2, drop_path=1.0)
