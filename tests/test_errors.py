"""Bad input raises ValueError naming the argument, the axis and the shapes."""

from __future__ import annotations

import pytest
import torch

from ndformer import Attention, Grid, PatchEmbed, RoPE, attend, unpatchify
from ndformer.patterns import Causal, Full, HeadSplit, Neighborhood, Stripe, Window


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (0, r"shape\[0\] .* must be >= 1, got 0"),
        ((4, 0, 3), r"shape\[1\] \(shape \(4, 0, 3\)\) must be >= 1, got 0"),
        ((4, -2), r"shape\[1\] .* must be >= 1, got -2"),
        ((), "at least one axis"),
        ((2.0, 3), r"shape\[0\] .* must be an int"),
        (None, "must be an int or a tuple"),
    ],
)
def test_grid_rejects_bad_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        Grid(shape)


def test_grid_basics():
    g = Grid((2, 3, 4))
    assert (g.shape, g.ndim, g.num_tokens) == ((2, 3, 4), 3, 24)
    assert g.coords.shape == (24, 3) and g.coords.dtype == torch.long
    assert g.coords[0].tolist() == [0, 0, 0] and g.coords[1].tolist() == [
        0,
        0,
        1,
    ]  # last axis fastest
    assert g.coords[23].tolist() == [1, 2, 3]
    assert Grid(5).shape == (5,) and Grid([3, 2]) == Grid((3, 2))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Window(0), "Window size must be >= 1, got 0"),
        (lambda: Window((4, 0)), r"Window size\[1\] must be >= 1"),
        (lambda: Window(4, dilation=0), "Window dilation must be >= 1"),
        (lambda: Window(True), "Window size must be an int"),
        (lambda: Window(()), "non-empty tuple"),
        (lambda: Neighborhood(0), "Neighborhood kernel must be >= 1"),
        (lambda: Neighborhood(3, causal="yes"), "Neighborhood causal must be a bool"),
        (lambda: Stripe(0, 0), "Stripe width must be >= 1"),
        (lambda: Stripe(0.5, 2), "Stripe axis must be an int"),
        (lambda: Causal("t"), "Causal axis must be an int"),
        (lambda: HeadSplit(), "at least 1 patterns"),
        (lambda: HeadSplit(Full(), fractions=(0.5, 0.5)), "2 entries for 1 patterns"),
        (lambda: HeadSplit(Full(), Full(), fractions=(1.5, -0.5)), "positive"),
    ],
)
def test_pattern_constructors_reject_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("pattern", "shape", "message"),
    [
        (
            Window((4, 4)),
            (8, 8, 8),
            r"Window size has 2 entries \(4, 4\) but the layout has 3 axes",
        ),
        (Neighborhood(5), (8, 4), r"exceeds axis 1 of length 4 \(layout shape \(8, 4\)\)"),
        (Neighborhood(3, dilation=(1, 3)), (8, 8), r"3 \* 3 = 9 exceeds axis 1"),
        (Stripe(2, 4), (8, 8), r"Stripe axis=2 is outside a layout with 2 axes"),
        (Causal(-3), (8, 8), r"Causal axis=-3 is outside a layout with 2 axes"),
        (Window(2) | Stripe(5, 1), (4, 4), "Stripe axis=5"),
        (HeadSplit(Full(), Causal(4)), (4, 4), "Causal axis=4"),
    ],
)
def test_pattern_that_does_not_fit_the_layout_is_an_error(pattern, shape, message):
    grid = Grid(shape)
    with pytest.raises(ValueError, match=message):
        pattern.mask(grid)
    q = torch.randn(1, 2, grid.num_tokens, 4)
    with pytest.raises(ValueError, match=message):
        attend(q, q, q, pattern, grid)


def test_headsplit_needs_divisible_heads():
    grid = Grid((4, 4))
    q = torch.randn(1, 3, 16, 4)
    with pytest.raises(ValueError, match="divisible by 2, got heads=3"):
        attend(q, q, q, HeadSplit(Stripe(0, 2), Stripe(1, 2)), grid)


def _qkv(b=1, h=2, n=16, d=4):
    return torch.randn(b, h, n, d)


@pytest.mark.parametrize(
    ("q", "k", "v", "message"),
    [
        (
            _qkv(n=15),
            _qkv(n=15),
            _qkv(n=15),
            r"N = 16 tokens \(the layout \(4, 4\) flattened\); got q \(1, 2, 15, 4\)",
        ),
        (_qkv(), _qkv(n=12), _qkv(), r"N = 16 tokens .* k \(1, 2, 12, 4\)"),
        (_qkv(h=2), _qkv(h=3), _qkv(h=2), "same number of heads"),
        (_qkv(h=4), _qkv(h=3), _qkv(h=3), r"q's or a divisor of it .* k \(1, 3, 16, 4\)"),
        (_qkv(h=4), _qkv(h=2), _qkv(h=1), r"same number of heads.* v \(1, 1, 16, 4\)"),
        (_qkv(b=2), _qkv(b=1), _qkv(b=2), "same batch size"),
        (_qkv(d=4), _qkv(d=8), _qkv(d=4), "same head_dim"),
        (
            torch.randn(2, 16, 4),
            _qkv(),
            _qkv(),
            r"q must be a 4-D tensor \[B, heads, N, head_dim\]",
        ),
        (_qkv(), _qkv().double(), _qkv(), "one dtype"),
    ],
)
def test_attend_rejects_mismatched_inputs(q, k, v, message):
    with pytest.raises(ValueError, match=message):
        attend(q, k, v, Window(2), Grid((4, 4)))


def test_attend_rejects_unknown_backend_and_bad_tile():
    q = _qkv()
    with pytest.raises(ValueError, match="backend must be one of"):
        attend(q, q, q, Window(2), Grid((4, 4)), backend="fast")
    with pytest.raises(ValueError, match="tiled"):
        attend(q, q, q, Causal(), Grid((4, 4)), backend="tiled")
    with pytest.raises(ValueError, match="tile must be >= 1"):
        attend(q, q, q, Window(2), Grid((4, 4)), tile=0)
    with pytest.raises(ValueError, match="tile has 3 entries"):
        attend(q, q, q, Window(2), Grid((4, 4)), tile=(2, 2, 2))


def test_module_errors_name_the_problem():
    with pytest.raises(ValueError, match="head_dim=5 is too small for ndim=3"):
        RoPE(5, 3)
    with pytest.raises(ValueError, match=r"positions must be \[N, ndim\] = \[5, 2\]"):
        RoPE(8, 2)(torch.randn(5, 8), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="dim=30 must be divisible by heads=4"):
        Attention(30, 4)
    with pytest.raises(ValueError, match="qk_dim=6 must be divisible by heads=4"):
        Attention(32, 4, qk_dim=6)
    with pytest.raises(ValueError, match="too small for ndim=4"):
        Attention(24, 4, ndim=4)  # head_dim 6, but one rotation pair per axis needs 8
    with pytest.raises(ValueError, match=r"Attention expects \[B, \*grid, dim=32\]"):
        Attention(32, 4)(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match=r"in_chans=3, 2 spatial axes\], got \(2, 1, 8, 8\)"):
        PatchEmbed(3, 16, 4, 2)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="not a multiple of prod"):
        unpatchify(torch.randn(1, 2, 2, 7), 2)
