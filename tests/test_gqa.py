"""Grouped-query attention: k and v with fewer heads than q, in ``attend`` and in
``Attention(kv_heads=)``, equal to PyTorch's own GQA (``enable_gqa``) under the pattern's
mask, values and gradients in float64, every pattern family, 1-D to 4-D."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, attend
from ndformer.layers import Attention
from strategies import any_pattern, shapes


def grads_of(out, inputs, upstream):
    return (out.detach(), *torch.autograd.grad((out * upstream).sum(), inputs))


@given(data=st.data())
def test_grouped_query_attention_matches_sdpa_with_enable_gqa(data):
    shape = data.draw(shapes(), label="shape")
    kv_heads = data.draw(st.integers(1, 2), label="kv_heads")
    group = data.draw(st.integers(2, 3), label="group")
    heads = kv_heads * group
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    backend = data.draw(st.sampled_from(["auto", "blocksparse", "reference"]), label="backend")
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))

    def make(h, d):
        return torch.randn(2, h, grid.num_tokens, d, generator=gen, dtype=torch.float64)

    q, k, v = make(heads, 4).requires_grad_(), make(kv_heads, 4).requires_grad_(), make(kv_heads, 3)
    v.requires_grad_()
    upstream = make(heads, 3)
    got = grads_of(attend(q, k, v, pattern, grid, backend=backend), (q, k, v), upstream)
    mask = pattern.mask(grid, heads)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    want = grads_of(expected, (q, k, v), upstream)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 1), (4, 2), (6, 3), (2, 2)])
@pytest.mark.parametrize("spec", ["full", "neighborhood(3)", "window(2, shift=1)"])
def test_attention_with_fewer_key_value_heads(heads, kv_heads, spec):
    torch.manual_seed(0)
    layer = Attention(24, heads, spec, kv_heads=kv_heads).double()
    head_dim = 24 // heads
    assert layer.qkv.out_features == 24 + 2 * kv_heads * head_dim
    x = torch.randn(2, 5, 6, 24, dtype=torch.float64, requires_grad=True)
    grid = Grid((5, 6))
    q, k, v = layer.heads_of(x.reshape(2, 30, 24))
    assert q.shape[1] == heads and k.shape[1] == v.shape[1] == kv_heads
    q, k = layer.rotate(q, k, grid)
    mask = layer.pattern.mask(grid, heads)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    expected = layer.proj(expected.transpose(1, 2).flatten(2)).reshape(x.shape)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    upstream = torch.randn_like(out)
    (got,) = torch.autograd.grad((out * upstream).sum(), x)
    (want,) = torch.autograd.grad((expected * upstream).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert ("kv_heads" in repr(layer)) == (kv_heads != heads)


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        Attention(16, 4, kv_heads=3)
    with pytest.raises(ValueError, match="kv_heads"):
        Attention(16, 4, kv_heads=0)
