"""Hypothesis strategies: random 1-D to 4-D grid shapes and patterns that fit them.

A drawn pattern comes as (description, pattern): the description is the plain
tuple that ``definitions.allowed`` interprets, the pattern the library object
built from the same arguments.
"""

from __future__ import annotations

import itertools
import math

from hypothesis import strategies as st

from ndformer import patterns as P

#: Largest size per axis for each number of axes; keeps N small enough for N x N references.
MAX_SIDE = {1: 40, 2: 11, 3: 6, 4: 4}


@st.composite
def shapes(draw, min_ndim=1, max_ndim=4, min_side=1):
    ndim = draw(st.integers(min_ndim, max_ndim))
    return tuple(draw(st.integers(min_side, MAX_SIDE[ndim])) for _ in range(ndim))


def int_or_tuple(draw, values):
    """One value for all axes when they agree and the draw says so, else a tuple."""
    values = tuple(values)
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return values


@st.composite
def windows(draw, shape):
    size = int_or_tuple(draw, [draw(st.integers(1, n + 2)) for n in shape])
    shift = int_or_tuple(draw, [draw(st.integers(-3, 6)) for _ in shape])
    dilation = int_or_tuple(draw, [draw(st.integers(1, 3)) for _ in shape])
    return ("window", size, shift, dilation), P.Window(size, shift=shift, dilation=dilation)


@st.composite
def neighborhoods(draw, shape):
    dilations, kernels = [], []
    for n in shape:
        d = draw(st.integers(1, min(3, n)))
        dilations.append(d)
        kernels.append(draw(st.integers(1, n // d)))
    kernel, dilation = int_or_tuple(draw, kernels), int_or_tuple(draw, dilations)
    causal = draw(st.booleans() | st.tuples(*[st.booleans() for _ in shape]))
    # a stride (stride groups sharing one window) in about a third of the draws
    strides = [draw(st.integers(1, k)) if draw(st.integers(0, 2)) == 0 else 1 for k in kernels]
    stride = int_or_tuple(draw, strides)
    spec = ("neighborhood", kernel, dilation, causal, stride)
    return spec, P.Neighborhood(kernel, dilation=dilation, causal=causal, stride=stride)


@st.composite
def stripes(draw, shape):
    ndim = len(shape)
    axis = draw(st.integers(-ndim, ndim - 1))
    width = draw(st.integers(1, max(shape) + 1))
    return ("stripe", axis, width), P.Stripe(axis, width)


@st.composite
def causals(draw, shape):
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return ("causal", axis), P.Causal(axis)


def fulls(shape):
    return st.just((("full",), P.Full()))


LEAVES = (windows, neighborhoods, stripes, causals, fulls)


def leaves(shape):
    return st.one_of(*[make(shape) for make in LEAVES])


@st.composite
def combinations(draw, shape):
    parts = draw(st.lists(leaves(shape), min_size=2, max_size=3))
    specs, objects = zip(*parts)
    if draw(st.booleans()):
        return ("union", specs), P.Union(*objects)
    return ("intersection", specs), P.Intersection(*objects)


@st.composite
def headsplits(draw, shape, heads):
    """A HeadSplit usable with ``heads`` heads (equal groups or fractions)."""
    if draw(st.booleans()):
        count = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
        fractions = None
        bounds = [(i * heads // count, (i + 1) * heads // count) for i in range(count)]
    else:
        count = draw(st.integers(1, 3))
        weights = [draw(st.integers(1, 4)) for _ in range(count)]
        fractions = tuple(w / sum(weights) for w in weights)
        edges = [math.floor(heads * sum(fractions[:i]) + 1e-9) for i in range(count)] + [heads]
        bounds = list(itertools.pairwise(edges))
    parts = [draw(leaves(shape) | combinations(shape)) for _ in range(count)]
    specs, objects = zip(*parts)
    return ("headsplit", specs, bounds), P.HeadSplit(*objects, fractions=fractions)


def any_pattern(shape, heads=1):
    return st.one_of(leaves(shape), combinations(shape), headsplits(shape, heads))
