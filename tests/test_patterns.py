"""Every pattern's mask equals its definition (tests/definitions.py) on random 1-D to 4-D grids."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from definitions import definition_mask
from ndformer import Grid
from ndformer.patterns import Axial, Causal, Full, HeadSplit, Neighborhood, Stripe, Window
from strategies import LEAVES, any_pattern, combinations, headsplits, shapes


def assert_mask_matches(spec, pattern, shape, heads=1):
    mask = pattern.mask(Grid(shape), heads=heads)
    expected = definition_mask(spec, shape, heads)
    assert mask.dtype == torch.bool
    assert mask.shape[1:] == expected.shape[1:]
    assert mask.shape[0] in (1, heads)
    assert torch.equal(mask.expand_as(expected), expected), f"{pattern!r} on {shape}"


@pytest.mark.parametrize("make", LEAVES, ids=lambda f: f.__name__)
@given(data=st.data())
def test_leaf_mask_matches_definition(make, data):
    shape = data.draw(shapes())
    spec, pattern = data.draw(make(shape))
    assert_mask_matches(spec, pattern, shape)


@given(data=st.data())
def test_union_and_intersection_masks_match_definition(data):
    shape = data.draw(shapes(max_ndim=3))
    spec, pattern = data.draw(combinations(shape))
    assert_mask_matches(spec, pattern, shape)


@given(data=st.data())
def test_headsplit_mask_matches_definition(data):
    shape = data.draw(shapes(max_ndim=3))
    heads = data.draw(st.integers(1, 6))
    spec, pattern = data.draw(headsplits(shape, heads))
    assert_mask_matches(spec, pattern, shape, heads)


@given(data=st.data())
def test_every_pattern_lets_each_query_see_itself(data):
    # None of the core patterns can leave a query without keys.
    shape = data.draw(shapes())
    _, pattern = data.draw(any_pattern(shape, heads=2))
    mask = pattern.mask(Grid(shape), heads=2)
    assert mask.diagonal(dim1=-2, dim2=-1).all()


@given(data=st.data())
def test_neighborhood_sees_exactly_kernel_keys_per_axis(data):
    shape = data.draw(shapes())
    dilation = tuple(data.draw(st.integers(1, min(3, n))) for n in shape)
    kernel = tuple(data.draw(st.integers(1, n // d)) for n, d in zip(shape, dilation))
    mask = Neighborhood(kernel, dilation=dilation).mask(Grid(shape))
    assert (mask.sum(-1) == math.prod(kernel)).all()


# Hand-checked examples (NATTEN conventions), independent of any formula.
@pytest.mark.parametrize(
    ("length", "kernel", "dilation", "query", "keys"),
    [
        (7, 3, 1, 0, [0, 1, 2]),
        (7, 3, 1, 3, [2, 3, 4]),
        (7, 3, 1, 6, [4, 5, 6]),
        (8, 4, 1, 0, [0, 1, 2, 3]),
        (8, 4, 1, 5, [3, 4, 5, 6]),
        (8, 4, 1, 7, [4, 5, 6, 7]),
        (9, 3, 2, 0, [0, 2, 4]),
        (9, 3, 2, 8, [4, 6, 8]),
        (9, 3, 2, 7, [3, 5, 7]),  # odd group 1,3,5,7 has length 4: window 3..7
        (9, 3, 2, 1, [1, 3, 5]),
    ],
)
def test_neighborhood_examples(length, kernel, dilation, query, keys):
    mask = Neighborhood(kernel, dilation=dilation).mask(Grid(length))[0]
    assert torch.nonzero(mask[query]).flatten().tolist() == keys


@pytest.mark.parametrize(
    ("pattern", "query", "keys"),
    [
        (Window(4), 5, [4, 5, 6, 7]),
        (Window(4, shift=2), 5, [2, 3, 4, 5]),  # c' = c + 2: window of c' in [4, 8)
        (Window(4, shift=2), 0, [0, 1]),  # partial border window, no wrap-around
        (Window(4, shift=2), 9, [6, 7, 8, 9]),
        (Window(2, dilation=3), 4, [1, 4]),  # MaxViT-style grid: blocks of 6, stride 3
        (Window(3), 9, [9]),  # size does not divide 10: a 1-token border window
        (Causal(), 3, [0, 1, 2, 3]),
        (Neighborhood(3, causal=True), 5, [3, 4, 5]),
        (Neighborhood(3, causal=True), 0, [0]),
    ],
)
def test_one_dimensional_examples(pattern, query, keys):
    mask = pattern.mask(Grid(10))[0]
    assert torch.nonzero(mask[query]).flatten().tolist() == keys


def test_stripe_and_axial_examples():
    grid = Grid((4, 6))
    stripe = Stripe(0, 2).mask(grid)[0].view(4, 6, 4, 6)
    # Query (1, 3): whole axis 0, columns with 3 // 2 == c // 2, i.e. 2 and 3.
    assert torch.nonzero(stripe[1, 3]).tolist() == [[r, c] for r in range(4) for c in (2, 3)]
    assert Axial(1) == Stripe(1, 1)
    axial = Axial(1).mask(grid)[0].view(4, 6, 4, 6)
    assert torch.nonzero(axial[2, 5]).tolist() == [[2, c] for c in range(6)]


def test_full_mask_is_all_true():
    assert Full().mask(Grid((3, 2))).all()


def test_headsplit_fractions_give_floor_boundaries():
    split = HeadSplit(Full(), Window(1), fractions=(0.3, 0.7))
    assert split.head_groups(4) == [(0, 1), (1, 4)]  # int(4 * 0.3) = 1 head
    assert split.head_groups(10) == [(0, 3), (3, 10)]
    assert HeadSplit(Full(), Window(1)).head_groups(4) == [(0, 2), (2, 4)]


def test_head_independent_masks_have_a_single_head_axis():
    assert Window(2).mask(Grid((4, 4)), heads=8).shape == (1, 16, 16)
    assert HeadSplit(Axial(0), Axial(1)).mask(Grid((4, 4)), heads=8).shape == (8, 16, 16)


def test_patterns_are_hashable_and_compare_by_value():
    assert Window(8, shift=4) == Window(8, shift=4)
    assert Window(8) != Window(8, shift=4)
    assert len({Window(8), Window(8), Axial(0), Stripe(0, 1)}) == 2
    assert (Window(2) | Axial(0)) == (Window(2) | Axial(0))
    assert (Window(2) | Axial(0) | Causal()).parts == (Window(2), Axial(0), Causal())


@given(data=st.data())
def test_key_counts_equal_mask_row_sums(data):
    shape = data.draw(shapes())
    heads = data.draw(st.integers(1, 4))
    _, pattern = data.draw(any_pattern(shape, heads))
    grid = Grid(shape)
    counts = pattern.key_counts(grid, heads=heads, rows_per_step=7)
    expected = pattern.mask(grid, heads=heads).sum(-1)
    assert torch.equal(counts.expand_as(expected), expected)
