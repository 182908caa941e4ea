"""The drop-in modules of ``ndformer.nn``: NATTEN-style neighborhood attention, Swin-style
window attention and the swap of a timm-style ViT's attention, each equal to its
definition computed here from the module's own weights (values and gradients, float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ndformer import Grid
from ndformer.nn import (
    NeighborhoodAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
    PatternAttention,
    WindowAttention,
    replace_attention,
)
from ndformer.patterns import Neighborhood

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def masked_attention(module, x, mask, scale=None):
    """The module's own qkv and proj around dense SDPA under ``mask`` [N, N] (True: may
    attend); x [B, *spatial, dim]."""
    b, dim = x.shape[0], x.shape[-1]
    tokens = x.reshape(b, -1, dim)
    q, k, v = module.qkv(tokens).reshape(b, tokens.shape[1], 3, module.heads, -1).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return module.proj(out.transpose(1, 2).reshape(tokens.shape)).reshape(x.shape)


@settings(max_examples=25, deadline=None)
@given(
    ndim=st.integers(1, 3),
    data=st.data(),
)
def test_neighborhood_attention_is_natten_s_definition(ndim, data):
    shape = tuple(data.draw(st.integers(3, 7), label="side") for _ in range(ndim))
    kernel = data.draw(st.sampled_from([k for k in (2, 3) if k <= min(shape)]), label="kernel")
    stride = data.draw(st.integers(1, kernel), label="stride")
    causal = data.draw(st.booleans(), label="causal")
    module = NeighborhoodAttention(8, 2, kernel, stride=stride, is_causal=causal, ndim=ndim)
    module = module.double()
    x = torch.randn(2, *shape, 8, dtype=torch.float64, requires_grad=True)
    pattern = Neighborhood(kernel, stride=stride, causal=causal)
    want = masked_attention(module, x, pattern.mask(Grid(shape)))
    got = module(x)
    torch.testing.assert_close(got, want, **TIGHT)
    upstream = torch.randn_like(got)
    (a,) = torch.autograd.grad((got * upstream).sum(), x)
    (b,) = torch.autograd.grad((want * upstream).sum(), x)
    torch.testing.assert_close(a, b, **TIGHT)


def test_the_1d_2d_3d_classes_fix_the_spatial_axes():
    for cls, ndim in ((NeighborhoodAttention1D, 1), (NeighborhoodAttention2D, 2),
                      (NeighborhoodAttention3D, 3)):  # fmt: skip
        module = cls(16, 4, 3, dilation=1)
        assert module.ndim == ndim
        x = torch.randn(1, *(5,) * ndim, 16)
        assert module(x).shape == x.shape
    with pytest.raises(ValueError, match=r"2 spatial axes and dim = 16; got \(1, 5, 16\)"):
        NeighborhoodAttention2D(16, 4, 3)(torch.randn(1, 5, 16))


def test_neighborhood_attention_agrees_with_natten_s_module():
    natten = pytest.importorskip("natten", reason="NATTEN (the oracle) is not installed")
    torch.manual_seed(0)
    theirs = natten.NeighborhoodAttention2D(16, 2, kernel_size=3, dilation=2)  # float32 only
    ours = NeighborhoodAttention2D(16, 2, 3, dilation=2)
    ours.qkv.load_state_dict(theirs.qkv.state_dict())
    ours.proj.load_state_dict(theirs.proj.state_dict())
    x = torch.randn(2, 9, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def swin_mask(shape, window, shift):
    """Swin's shifted-window attention as a mask over the original tokens: roll the grid
    by -shift, cut it into windows, and within a window keep apart the tokens of Swin's
    three regions per axis (slices [0, L-window), [L-window, L-shift), [L-shift, L))."""
    coords = torch.tensor(list(itertools.product(*(range(n) for n in shape))))
    same = torch.ones(len(coords), len(coords), dtype=torch.bool)
    for axis, length in enumerate(shape):
        rolled = (coords[:, axis] - shift) % length
        region = (rolled >= length - window).long() + (rolled >= length - shift).long()
        key = rolled // window * 3 + region
        same &= key[:, None] == key[None, :]
    return same


@pytest.mark.parametrize(
    ("shape", "window", "shift"), [((8, 8), 4, 2), ((6, 9), 3, 1), ((4, 4, 8), 4, 2), ((12,), 4, 3)]
)
def test_shifted_window_attention_is_swin_s_roll_and_mask(shape, window, shift):
    torch.manual_seed(0)
    module = WindowAttention(12, 3, window_size=window, shift_size=shift, ndim=len(shape))
    module = module.double()
    x = torch.randn(2, *shape, 12, dtype=torch.float64)
    torch.testing.assert_close(
        module(x), masked_attention(module, x, swin_mask(shape, window, shift)), **TIGHT
    )


# -- a ViT built like timm's (its Attention's attributes and forward) --------------------
class TimmAttention(nn.Module):
    def __init__(self, dim, num_heads, qk_norm=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(0.0), nn.Linear(dim, dim), \
            nn.Dropout(0.0)  # fmt: skip

    def forward(self, x, attn_mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class TimmBlock(nn.Module):
    def __init__(self, dim, num_heads, qk_norm):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, num_heads, qk_norm)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    def __init__(self, grid=(4, 5), dim=16, heads=2, depth=2, prefix=1, qk_norm=False):
        super().__init__()
        self.num_prefix_tokens = prefix
        self.patch_embed = nn.Linear(3, dim)
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + grid[0] * grid[1], dim))
        self.blocks = nn.Sequential(*(TimmBlock(dim, heads, qk_norm) for _ in range(depth)))
        self.head = nn.Linear(dim, 5)

    def forward(self, pixels):  # pixels [B, H, W, 3]
        x = self.patch_embed(pixels.flatten(1, 2))
        x = torch.cat([self.prefix.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.blocks(x)[:, 0])


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("prefix", [0, 1, 4])
def test_replacing_a_timm_vit_s_attention_with_full_changes_nothing(prefix, qk_norm):
    torch.manual_seed(0)
    model = TimmViT(prefix=prefix, qk_norm=qk_norm).double()  # prefix 0: no CLS token
    pixels = torch.randn(3, 4, 5, 3, dtype=torch.float64)
    before = model(pixels)
    assert replace_attention(model, "full", (4, 5), prefix_tokens=prefix) == 2
    assert all(isinstance(b.attn, PatternAttention) for b in model.blocks)
    torch.testing.assert_close(model(pixels), before, **TIGHT)


def test_a_swapped_vit_attends_under_the_pattern_and_sees_its_prefix_tokens():
    torch.manual_seed(1)
    model = TimmViT(prefix=2).double()
    attn = model.blocks[0].attn
    swapped = PatternAttention.from_timm(attn, "neighborhood(3)", (4, 5), prefix_tokens=2)
    assert swapped.qkv is attn.qkv and swapped.proj is attn.proj  # weights shared
    x = torch.randn(2, 22, 16, dtype=torch.float64, requires_grad=True)
    # the definition: prefix queries see every token; grid queries the prefix and their
    # neighborhood on the 4 x 5 grid
    mask = torch.ones(22, 22, dtype=torch.bool)
    mask[2:, 2:] = Neighborhood(3).mask(Grid((4, 5)))
    b = x.shape[0]
    q, k, v = attn.qkv(x).reshape(b, 22, 3, 2, 8).permute(2, 0, 3, 1, 4)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    want = attn.proj(want.transpose(1, 2).reshape(x.shape))
    got = swapped(x)
    torch.testing.assert_close(got, want, **TIGHT)
    upstream = torch.randn_like(got)
    grads = torch.autograd.grad((got * upstream).sum(), (x, attn.qkv.weight))
    wanted = torch.autograd.grad((want * upstream).sum(), (x, attn.qkv.weight))
    for a, w in zip(grads, wanted, strict=True):
        torch.testing.assert_close(a, w, **TIGHT)


def test_swaps_refuse_what_they_cannot_keep():
    attn = TimmAttention(16, 2)
    attn.attn_drop = nn.Dropout(0.1)
    with pytest.raises(ValueError, match=r"attn_drop p=0.1"):
        PatternAttention.from_timm(attn, "neighborhood(3)", (4, 5))
    with pytest.raises(ValueError, match="found no attention module"):
        replace_attention(nn.Sequential(nn.Linear(3, 3)), "window(2)", (4, 4))
    swapped = PatternAttention.from_timm(TimmAttention(16, 2), "window(2)", (4, 4))
    with pytest.raises(ValueError, match=r"1 prefix \+ 16 grid tokens \(4, 4\), dim=16\]; got"):
        swapped(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match=r"Neighborhood kernel \* dilation = 7 \* 1 = 7"):
        PatternAttention(16, 2, "neighborhood(7)", (4, 4))  # kernel larger than the grid
    with pytest.raises(ValueError, match=r"0 <= shift_size < window_size.*shift=4"):
        WindowAttention(16, 2, window_size=4, shift_size=4)
