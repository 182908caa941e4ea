"""patchify / unpatchify / PatchEmbed in any number of dimensions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import PatchEmbed, patchify, unpatchify


@given(data=st.data())
def test_unpatchify_inverts_patchify_with_padding(data):
    ndim = data.draw(st.integers(1, 4))
    spatial = tuple(data.draw(st.integers(1, 7)) for _ in range(ndim))
    patch = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    x = torch.randn(2, 3, *spatial)
    tokens = patchify(x, patch)
    grid = tuple(-(-s // p) for s, p in zip(spatial, patch))
    assert tokens.shape == (2, *grid, 3 * torch.tensor(patch).prod().item())
    assert torch.equal(unpatchify(tokens, patch, size=spatial), x)
    # The padding is zeros at the end of each axis.
    padded = unpatchify(tokens, patch)
    assert padded.sum() == pytest.approx(x.sum().item(), abs=1e-4)


@pytest.mark.parametrize(("ndim", "conv"), [(1, F.conv1d), (2, F.conv2d), (3, F.conv3d)])
def test_patch_embed_equals_a_strided_convolution(ndim, conv):
    torch.manual_seed(0)
    patch = (2, 3, 2)[:ndim]
    spatial = (7, 9, 5)[:ndim]
    embed = PatchEmbed(3, 8, patch, ndim).double()
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    weight = embed.proj.weight.view(8, 3, *patch)
    pad = [a for s, p in zip(reversed(spatial), reversed(patch)) for a in (0, -s % p)]
    expected = conv(F.pad(x, pad), weight, embed.proj.bias, stride=patch)
    torch.testing.assert_close(embed(x), expected.movedim(1, -1))


def test_patch_embed_works_in_four_dimensions():
    embed = PatchEmbed(1, 16, (2, 4, 4, 4), 4)
    assert embed(torch.randn(2, 1, 6, 16, 16, 9)).shape == (2, 3, 4, 4, 3, 16)
