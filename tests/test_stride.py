"""Strided (generalized) neighborhood attention: stride groups of queries share the window
of their leader. The mask equals the definition written out in tests/definitions.py, every
backend equals dense masked attention (values and gradients, float64), and, where NATTEN
is installed, its own ``na1d/na2d/na3d`` with ``stride`` (forward only on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from definitions import definition_mask
from ndformer import Grid, attend, pattern
from ndformer.patterns import Neighborhood, Window

CASES = [  # kernel, dilation, causal, stride, shape
    (3, 1, False, 2, (11,)),  # even stride: the leader is right of the centre
    (4, 1, False, 2, (9,)),  # even kernel and stride
    (5, 1, False, 3, (13,)),  # last group shorter than the stride
    (4, 1, True, 2, (9,)),  # causal: the leader is the group's last query
    (3, 1, True, 3, (10,)),
    (3, 2, False, 2, (14,)),  # stride within each dilation group
    ((3, 5), 1, (False, True), (2, 4), (7, 9)),
    ((3, 3, 2), (1, 2, 1), False, (3, 2, 2), (5, 8, 4)),
    (2, 1, False, 2, (3, 4, 3, 4)),
]
IDS = [f"k{c[0]}-d{c[1]}-c{c[2]}-s{c[3]}-{c[4]}" for c in CASES]


@pytest.mark.parametrize(("kernel", "dilation", "causal", "stride", "shape"), CASES, ids=IDS)
def test_strided_mask_is_the_definition(kernel, dilation, causal, stride, shape):
    p = Neighborhood(kernel, dilation=dilation, causal=causal, stride=stride)
    spec = ("neighborhood", kernel, dilation, causal, stride)
    assert torch.equal(p.mask(Grid(shape), 1).reshape(definition_mask(spec, shape).shape),
                       definition_mask(spec, shape))  # fmt: skip


@pytest.mark.parametrize("backend", ["auto", "native", "tiled", "blocksparse", "reference"])
@pytest.mark.parametrize(("kernel", "dilation", "causal", "stride", "shape"), CASES, ids=IDS)
def test_every_backend_equals_dense_with_a_stride(kernel, dilation, causal, stride, shape, backend):
    p = Neighborhood(kernel, dilation=dilation, causal=causal, stride=stride)
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(len(shape))
    q, k, v = (torch.randn(2, 2, grid.num_tokens, 4, generator=gen, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))  # fmt: skip
    upstream = torch.randn(2, 2, grid.num_tokens, 4, generator=gen, dtype=torch.float64)
    try:
        out = attend(q, k, v, p, grid, backend=backend)
    except ValueError as error:  # the tiled path takes local rules only
        assert backend == "tiled" and "tiled" in str(error) and p.causal is not False
        return
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask(grid, 2))
    got = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    want = torch.autograd.grad((expected * upstream).sum(), (q, k, v))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"d{n}: {m}")


def test_stride_equal_to_an_odd_kernel_gives_non_overlapping_windows():
    grid = Grid((9, 15))
    strided = Neighborhood(3, stride=3).mask(grid, 1)
    assert torch.equal(strided, Window(3).mask(grid, 1))


def test_stride_spec_repr_and_errors():
    p = pattern("neighborhood(7, stride=2)")
    assert p == Neighborhood(7, stride=2) and repr(p) == "neighborhood(7, stride=2)"
    assert repr(Neighborhood(7)) == "neighborhood(7)"
    with pytest.raises(ValueError, match="stride 4 exceeds the kernel 3 on axis 1"):
        Neighborhood(3, stride=(1, 4)).mask(Grid((8, 8)), 1)
    with pytest.raises(ValueError, match="Neighborhood stride"):
        Neighborhood(3, stride=0)


NATTEN_CASES = [  # kernel, stride, dilation, causal, shape (NATTEN layout: [B, *shape, heads, E])
    ((5,), (2,), (1,), (False,), (17,)),
    ((4,), (3,), (2,), (False,), (19,)),
    ((3,), (2,), (1,), (True,), (12,)),
    ((5, 3), (3, 2), (1, 2), (False, False), (11, 12)),
    ((3, 4), (2, 4), (1, 1), (True, False), (9, 10)),
    ((3, 3, 3), (2, 3, 1), (1, 1, 2), (False, True, False), (7, 6, 8)),
]


@pytest.mark.parametrize(("kernel", "stride", "dilation", "causal", "shape"), NATTEN_CASES)
def test_strided_neighborhood_agrees_with_natten(kernel, stride, dilation, causal, shape):
    natten = pytest.importorskip("natten", reason="NATTEN (the oracle) is not installed")
    function = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, *shape, 2, 8, generator=gen) for _ in range(3))
    theirs = function(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation,
                      is_causal=causal)  # fmt: skip
    grid = Grid(shape)
    as_heads = [x.reshape(1, grid.num_tokens, 2, 8).transpose(1, 2) for x in (q, k, v)]
    p = Neighborhood(kernel, dilation=dilation, causal=causal, stride=stride)
    ours = attend(*as_heads, p, grid).transpose(1, 2).reshape(theirs.shape)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
