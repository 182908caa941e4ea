"""Sparse Points: serialization codes, patterns on points == their definitions, kernels."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from definitions import allowed
from ndformer import Grid, attend
from ndformer import pattern as parse_pattern
from ndformer.curves import ORDERS, serialize
from ndformer.layout import Points
from ndformer.patterns import (
    Causal,
    Flattened,
    Full,
    HeadSplit,
    Intersection,
    Linear,
    Neighborhood,
    Pooled,
    Serialized,
    Summary,
    Union,
    Window,
)
from strategies import causals, fulls, stripes, windows

# -- serialization -----------------------------------------------------------------


@pytest.mark.parametrize(("ndim", "bits"), [(2, 4), (3, 3), (4, 2)])
def test_consecutive_hilbert_codes_are_neighbours(ndim, bits):
    coords = Grid((2**bits,) * ndim).coords
    for order in ("hilbert", "hilbert-trans"):
        code = serialize(coords, order, bits)
        assert sorted(code.tolist()) == list(range(2 ** (ndim * bits)))  # a bijection
        walk = coords[code.argsort()]
        assert (walk[1:] - walk[:-1]).abs().sum(1).eq(1).all()
        assert walk[0].eq(0).all()


@given(
    ndim=st.integers(1, 5),
    bits=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_z_order_is_monotone_in_every_coordinate(ndim, bits, seed):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.randint(0, 2**bits, (50, ndim), generator=gen)
    axis = int(torch.randint(0, ndim, (1,), generator=gen))
    bumped = coords.clone()
    bumped[:, axis] = torch.clamp(coords[:, axis] + 1, max=2**bits - 1)
    grew = bumped[:, axis] > coords[:, axis]
    before, after = serialize(coords, "z", bits), serialize(bumped, "z", bits)
    assert (after[grew] > before[grew]).all() and (after[~grew] == before[~grew]).all()


@given(
    seed=st.integers(0, 2**31 - 1), ndim=st.integers(2, 4), order=st.sampled_from(["z", "hilbert"])
)
def test_trans_orders_swap_the_first_two_axes(seed, ndim, order):
    coords = torch.randint(0, 16, (30, ndim), generator=torch.Generator().manual_seed(seed))
    swapped = coords[:, [1, 0, *range(2, ndim)]]
    assert torch.equal(serialize(coords, f"{order}-trans", 4), serialize(swapped, order, 4))


def test_batch_bits_keep_scenes_apart_and_overflow_is_refused():
    coords = torch.tensor([[3, 3], [0, 0]])
    codes = serialize(coords, "z", 2, batch=torch.tensor([0, 1]))
    assert codes[1] > codes[0]  # scene 1 sorts after every code of scene 0
    with pytest.raises(ValueError, match=r"3 axes x 21 bits \+ 1 batch bits = 64 bits"):
        serialize(torch.zeros(2, 3, dtype=torch.long), "hilbert", 21, batch=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"axis 1 span \[0, 9\], outside \[0, 2\*\*3\)"):
        serialize(torch.tensor([[0, 0], [1, 9]]), "z", 3)
    with pytest.raises(ValueError, match="axis 0 span"):
        serialize(torch.tensor([[-1, 0]]), "z", 3)
    with pytest.raises(ValueError, match="order must be one of"):
        serialize(coords, "peano")
    with pytest.raises(ValueError, match="swaps the first two axes"):
        serialize(torch.tensor([[1], [2]]), "z-trans")
    assert serialize(torch.zeros(1, 63, dtype=torch.long), "z", 1).item() == 0  # 63 bits fit


# -- points, patterns and their definitions ---------------------------------------------


@st.composite
def point_sets(draw, max_tokens=36):
    ndim = draw(st.integers(1, 4))
    extent = [draw(st.integers(1, 9)) for _ in range(ndim)]
    n = draw(st.integers(1, max_tokens))
    coords = [[draw(st.integers(0, e - 1)) for e in extent] for _ in range(n)]
    scenes = draw(st.integers(1, 3))
    batch = [draw(st.integers(0, scenes - 1)) for _ in range(n)]
    return Points(torch.tensor(coords), torch.tensor(batch))


@st.composite
def sorted_patterns(draw, ndim):
    group = draw(st.integers(1, 12))
    shift = draw(st.integers(0, group - 1))
    if draw(st.booleans()):
        orders = [o for o in ORDERS if ndim >= 2 or not o.endswith("-trans")]
        order = draw(st.sampled_from(orders))
        return ("serialized", order, group, shift), Serialized(order, group, shift)
    window = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    axes = tuple(draw(st.permutations(range(ndim)))) if draw(st.booleans()) else None
    spec = ("flattened", window, group, axes, shift)
    return spec, Flattened(window, group, axes=axes, shift=shift)


def point_leaves(shape):
    ndim = len(shape)
    return st.one_of(
        windows(shape), stripes(shape), causals(shape), fulls(shape), sorted_patterns(ndim)
    )


@st.composite
def point_patterns(draw, shape, heads):
    kind = draw(st.sampled_from(["leaf", "leaf", "union", "intersection", "headsplit"]))
    if kind == "leaf":
        return draw(point_leaves(shape))
    parts = draw(st.lists(point_leaves(shape), min_size=2, max_size=3))
    specs, objects = zip(*parts)
    if kind == "union":
        return ("union", specs), Union(*objects)
    if kind == "intersection":
        return ("intersection", specs), Intersection(*objects)
    cut = draw(st.integers(1, heads - 1)) if heads > 1 else heads
    fractions = (cut / heads, 1 - cut / heads) if heads > 1 else None
    objects = objects[:2] if heads > 1 else objects[:1]
    bounds = [(0, cut), (cut, heads)] if heads > 1 else [(0, 1)]
    return ("headsplit", specs[: len(objects)], bounds), HeadSplit(*objects, fractions=fractions)


def sorted_group_of(spec, points: Points) -> list[tuple[int, int]]:
    """(scene, group) of every token, from the definition: sort each scene's tokens by
    their key (ties: token order), cut position p into group (p + shift) // group."""
    coords, batch = points.coords.tolist(), points.batch.tolist()
    if spec[0] == "serialized":
        _, order, group, shift = spec
        key = [None] * len(coords)
        for scene in set(batch):  # each scene's codes with the fewest bits for that scene
            members = [i for i in range(len(coords)) if batch[i] == scene]
            codes = serialize(points.coords[members], order).tolist()
            for i, code in zip(members, codes):
                key[i] = (code,)
    else:
        _, window, group, axes, shift = spec
        axes = axes or tuple(range(len(window)))
        key = [
            tuple(c[a] // window[a] for a in axes) + tuple(c[a] % window[a] for a in axes)
            for c in coords
        ]
    result = [None] * len(coords)
    for scene in set(batch):
        members = sorted(
            (i for i in range(len(coords)) if batch[i] == scene), key=lambda i: (key[i], i)
        )
        for position, i in enumerate(members):
            result[i] = (scene, (position + shift) // group)
    return result


def points_allowed(spec, i, j, points, head, cache) -> bool:
    kind = spec[0]
    if kind in ("serialized", "flattened"):
        if spec not in cache:
            cache[spec] = sorted_group_of(spec, points)
        return cache[spec][i] == cache[spec][j]
    if kind == "union":
        return any(points_allowed(s, i, j, points, head, cache) for s in spec[1])
    if kind == "intersection":
        return all(points_allowed(s, i, j, points, head, cache) for s in spec[1])
    if kind == "headsplit":
        for part, (start, stop) in zip(spec[1], spec[2]):
            if start <= head < stop:
                return points_allowed(part, i, j, points, head - start, cache)
    coords = points.coords.tolist()
    return allowed(spec, tuple(coords[i]), tuple(coords[j]), points.shape, head)


def points_definition_mask(spec, points: Points, heads: int) -> torch.Tensor:
    n, batch, cache = points.num_tokens, points.batch.tolist(), {}
    mask = torch.zeros(heads, n, n, dtype=torch.bool)
    for h, i, j in itertools.product(range(heads), range(n), range(n)):
        mask[h, i, j] = batch[i] == batch[j] and points_allowed(spec, i, j, points, h, cache)
    return mask


def qkv(n: int, heads: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, heads, n, e, generator=gen, dtype=torch.float64, requires_grad=True)
        for e in (4, 4, 5)
    ]


def assert_attention_equal(got, want, inputs, seed):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed + 1),
                          dtype=torch.float64)  # fmt: skip
    for a, b in zip(torch.autograd.grad((got * weights).sum(), inputs),
                    torch.autograd.grad((want * weights).sum(), inputs)):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_patterns_on_points_equal_their_definitions(data, seed):
    points = data.draw(point_sets())
    heads = data.draw(st.integers(1, 3))
    spec, pattern = data.draw(point_patterns(points.shape, heads))
    want_mask = points_definition_mask(spec, points, heads)
    assert torch.equal(pattern.mask(points, heads).expand(heads, -1, -1), want_mask)
    counts = pattern.key_counts(points, heads).expand(heads, -1)
    assert torch.equal(counts, want_mask.sum(-1))
    q, k, v = qkv(points.num_tokens, heads, seed)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=want_mask)
    assert_attention_equal(attend(q, k, v, pattern, points), want, (q, k, v), seed)


@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_pooled_on_points_equals_its_definition(data, seed):
    points = data.draw(point_sets())
    if data.draw(st.booleans()):
        pattern = Pooled(tuple(data.draw(st.integers(1, 5)) for _ in range(points.ndim)))
    else:
        pattern = Pooled(cells=data.draw(st.integers(1, 4)))
    sizes = pattern._sizes(points)
    # definition: each query averages nothing but the occupied blocks of its own scene
    coords, batch = points.coords.tolist(), points.batch.tolist()
    block = [(b, *(c // s for c, s in zip(cs, sizes))) for cs, b in zip(coords, batch)]
    blocks = sorted(set(block))
    q, k, v = qkv(points.num_tokens, 2, seed)
    member = torch.tensor([[float(block[i] == m) for i in range(len(block))] for m in blocks],
                          dtype=torch.float64)  # fmt: skip
    pool = member / member.sum(-1, keepdim=True)
    same = torch.tensor([[b == m[0] for m in blocks] for b in batch])
    want = torch.nn.functional.scaled_dot_product_attention(q, pool @ k, pool @ v, attn_mask=same)
    assert torch.equal(pattern.key_counts(points)[0], same.sum(-1))
    assert_attention_equal(attend(q, k, v, pattern, points), want, (q, k, v), seed)
    reference = attend(q, k, v, pattern, points, backend="reference")
    torch.testing.assert_close(reference, want, rtol=1e-10, atol=1e-12)


def test_scenes_are_independent():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 8, (30, 3), generator=gen), torch.randint(0, 8, (17, 3), generator=gen)
    both = Points(torch.cat((a, b)), torch.cat((torch.zeros(30), torch.ones(17))).long())
    q, k, v = (torch.randn(1, 2, 47, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    for pattern in (Full(), Window(4), Serialized("z", 8), Causal(2), Pooled(2)):
        together = attend(q, k, v, pattern, both)
        alone = [
            attend(q[:, :, s], k[:, :, s], v[:, :, s], pattern, Points(c))
            for s, c in ((slice(0, 30), a), (slice(30, 47), b))
        ]
        torch.testing.assert_close(together, torch.cat(alone, dim=2), rtol=1e-12, atol=1e-12)


def test_serialized_on_a_grid_is_serialized_on_its_points():
    grid = Grid((6, 5))
    q, k, v = (torch.randn(1, 2, 30, 4, dtype=torch.float64) for _ in range(3))
    pattern = Serialized("hilbert", 7, shift=3)
    torch.testing.assert_close(
        attend(q, k, v, pattern, grid), attend(q, k, v, pattern, Points(grid.coords))
    )
    torch.testing.assert_close(
        attend(q, k, v, pattern, grid), attend(q, k, v, pattern, grid, backend="reference")
    )


def test_group_kernel_branches_long_groups_and_chunks(monkeypatch):
    """Long groups (one SDPA each) and chunked padded groups give the same result."""
    from ndformer.kernels import groups as kernel

    gen = torch.Generator().manual_seed(0)
    points = Points(torch.randint(0, 40, (400, 2), generator=gen))
    q, k, v = (torch.randn(1, 2, 400, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    for pattern in (Window(8), Serialized("hilbert", 50), Full()):
        want = attend(q, k, v, pattern, points, backend="reference")
        monkeypatch.setattr(kernel, "LONG_GROUP", 16)
        monkeypatch.setattr(kernel, "CHUNK_ELEMENTS", 64)
        torch.testing.assert_close(attend(q, k, v, pattern, points), want)
        monkeypatch.undo()


def test_errors_on_points():
    points = Points(torch.tensor([[0, 1], [2, 3]]))
    q = k = v = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match=r"is defined on a grid .* use window, stripe, serialized"):
        attend(q, k, v, Neighborhood(3), points)
    for pattern in (Summary(2, 2), Linear()):
        with pytest.raises(ValueError, match="is defined on grids"):
            attend(q, k, v, pattern, points)
    with pytest.raises(ValueError, match="backend='tiled' works on grids"):
        attend(q, k, v, Window(2), points, backend="tiled")
    with pytest.raises(ValueError, match=r"coords must be >= 0; axis 1 has minimum -2"):
        Points(torch.tensor([[0, 0], [1, -2]]))
    with pytest.raises(ValueError, match="must be integers"):
        Points(torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"batch must be an integer tensor \[N\] = \[2\]"):
        Points(torch.tensor([[0, 1], [2, 3]]), batch=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="q, k and v must have N = 2 tokens"):
        attend(torch.zeros(1, 1, 3, 4), k, v, Full(), points)
    with pytest.raises(ValueError, match=r"Flattened axes must be a permutation of 0\.\.1"):
        attend(q, k, v, Flattened(2, axes=(0, 0)), points)
    with pytest.raises(ValueError, match="shift must be < group"):
        Serialized("z", 4, shift=4)


@given(data=st.data())
def test_sorted_pattern_reprs_round_trip(data):
    _, p = data.draw(sorted_patterns(data.draw(st.integers(1, 4))))
    assert parse_pattern(repr(p)) == p and repr(parse_pattern(repr(p))) == repr(p)
