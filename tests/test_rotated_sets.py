"""RotatedSets (DSVT's rotated sets) on points: its sets, its attention on every backend that
takes it, its spec strings and errors, ``show`` and volt; oracles written from DSVT's Eq. 3."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend, create_model
from ndformer import pattern as parse_pattern
from ndformer.backends import Call
from ndformer.choice import explain
from ndformer.patterns import RotatedSets
from strategies import int_or_tuple


def per_axis(value, ndim):
    return tuple(value) if isinstance(value, tuple) else (value,) * ndim


def windows_of(points: Points, window, shift) -> list[tuple]:
    """(scene, window index per axis) of every token, in plain Python."""
    ndim = points.ndim
    window, shift = per_axis(window, ndim), per_axis(shift, ndim)
    return [
        (b, *((c[a] + shift[a]) // window[a] for a in range(ndim)))
        for c, b in zip(points.coords.tolist(), points.batch.tolist())
    ]


def dsvt_sets(points: Points, window, set_size, axis, shift) -> list[tuple]:
    """(scene, window, set) of every token from DSVT's Eq. 3: sort a window's N tokens by
    their coordinates inside the window (``axis`` first, then the others in increasing
    order; ties: token order); with S = ceil(N / set_size), set j lists the sorted
    positions floor((j * set_size + k) * N / (S * set_size)) for k < set_size."""
    ndim = points.ndim
    window, shift = per_axis(window, ndim), per_axis(shift, ndim)
    axes = [axis % ndim] + [a for a in range(ndim) if a != axis % ndim]
    members: dict[tuple, list] = {}
    for i, (c, key) in enumerate(zip(points.coords.tolist(), windows_of(points, window, shift))):
        inside = tuple((c[a] + shift[a]) % window[a] for a in axes)
        members.setdefault(key, []).append((inside, i))
    result: list = [None] * points.num_tokens
    for key, tokens in members.items():
        tokens.sort()
        n = len(tokens)
        sets = -(-n // set_size)
        for j in range(sets):
            for k in range(set_size):
                _, i = tokens[(j * set_size + k) * n // (sets * set_size)]
                assert result[i] in (None, (*key, j)), "DSVT lists a voxel in two sets"
                result[i] = (*key, j)
    assert None not in result  # every voxel is in some set
    return result


def canonical(labels) -> list[int]:
    """Labels renumbered by first occurrence: equal lists iff equal partitions."""
    first: dict = {}
    return [first.setdefault(label, len(first)) for label in labels]


@st.composite
def rotated_cases(draw, max_tokens=40):
    """(points, window, set_size, axis, shift) in 1-D..4-D, several scenes, with
    repeated coordinates now and then."""
    ndim = draw(st.integers(1, 4))
    extent = [draw(st.integers(1, 10)) for _ in range(ndim)]
    n = draw(st.integers(1, max_tokens))
    coords = [[draw(st.integers(0, e - 1)) for e in extent] for _ in range(n)]
    if not draw(st.integers(0, 3)):  # mostly distinct voxels, as in DSVT
        coords = [list(c) for c in dict.fromkeys(map(tuple, coords))]
    scenes = draw(st.integers(1, 3))
    batch = [draw(st.integers(0, scenes - 1)) for _ in coords]
    points = Points(torch.tensor(coords), torch.tensor(batch))
    window = int_or_tuple(draw, [draw(st.integers(1, 7)) for _ in range(ndim)])
    shift = int_or_tuple(draw, [draw(st.integers(-3, 9)) for _ in range(ndim)])
    set_size = draw(st.integers(1, 12))
    axis = draw(st.integers(-ndim, ndim - 1))
    return points, window, set_size, axis, shift


@given(case=rotated_cases())
def test_sets_are_dsvts_balanced_sets_within_each_window(case):
    points, window, set_size, axis, shift = case
    ids = RotatedSets(window, set_size, axis=axis, shift=shift).group_ids(points)
    want = dsvt_sets(points, window, set_size, axis, shift)
    assert canonical(ids.tolist()) == canonical(want)
    # every set fits set_size; a window's N tokens make ceil(N / set_size) sets whose
    # sizes differ by at most one
    sizes: dict[tuple, dict] = {}
    for key, i in zip(windows_of(points, window, shift), ids.tolist()):
        sizes.setdefault(key, {}).setdefault(i, 0)
        sizes[key][i] += 1
    for counts in sizes.values():
        n = sum(counts.values())
        assert len(counts) == -(-n // set_size)
        assert max(counts.values()) <= set_size
        assert max(counts.values()) - min(counts.values()) <= 1


def backends_for(pattern, points: Points, heads: int) -> list[str]:
    call = Call(pattern, points, torch.device("cpu"), torch.float64, heads, 4, needs_grad=True)
    return ["auto"] + [name for name, reason in explain(call) if reason is None]


@given(case=rotated_cases(max_tokens=30), heads=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_attention_equals_dense_attention_under_the_sets_on_every_backend(case, heads, seed):
    points, window, set_size, axis, shift = case
    pattern = RotatedSets(window, set_size, axis=axis, shift=shift)
    sets = dsvt_sets(points, window, set_size, axis, shift)
    mask = torch.tensor([[a == b for b in sets] for a in sets])
    assert torch.equal(pattern.mask(points)[0], mask)
    assert torch.equal(pattern.key_counts(points)[0], mask.sum(-1))
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, points.num_tokens, e, generator=gen, dtype=torch.float64,
                           requires_grad=True) for e in (4, 4, 5))  # fmt: skip
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    weights = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_grads = torch.autograd.grad((want * weights).sum(), (q, k, v))
    backends = backends_for(pattern, points, heads)
    assert {"groups", "scenes", "reference"} <= set(backends)
    for backend in backends:
        got = attend(q, k, v, pattern, points, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=backend)
        grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
        for got_grad, want_grad in zip(grads, want_grads):
            torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12, msg=backend)


def test_sets_cut_a_sorted_window_at_floor_j_n_over_s():
    """7 tokens, sets of <= 3: S = 3 sets starting at floor(j * 7 / 3) = 0, 2, 4, i.e.
    sizes 2, 2, 3 (not 3, 2, 2): the cut DSVT makes."""
    points = Points(torch.tensor([[6], [0], [3], [1], [5], [2], [4]]))
    ids = RotatedSets(8, 3).group_ids(points).tolist()
    by_coord = [ids[points.coords[:, 0].tolist().index(c)] for c in range(7)]
    assert canonical(by_coord) == [0, 0, 1, 1, 2, 2, 2]


def test_the_sorted_axis_rotates_the_sets():
    """A full 4 x 4 window in sets of 4: rows when axis 0 leads, columns when axis 1 does."""
    grid = Grid((4, 4))
    rows = RotatedSets(4, 4).group_ids(grid).view(4, 4)
    columns = RotatedSets(4, 4, axis=1).group_ids(grid).view(4, 4)
    assert all(len(set(row.tolist())) == 1 for row in rows)
    assert all(len(set(column.tolist())) == 1 for column in columns.T)
    assert len(rows.unique()) == len(columns.unique()) == 4
    # 3-D: axis 1 leads, then axes 0 and 2 (in increasing order)
    cube = Grid((2, 2, 2))
    ids = RotatedSets(2, 2, axis=1).group_ids(cube).view(2, 2, 2)
    assert canonical(ids.permute(1, 0, 2).flatten().tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_shift_moves_the_windows_and_only_its_remainder_matters():
    points = Points(torch.tensor([[0], [1], [2], [3], [4], [5]]))
    assert canonical(RotatedSets(3, 8).group_ids(points).tolist()) == [0, 0, 0, 1, 1, 1]
    shifted = RotatedSets(3, 8, shift=1).group_ids(points).tolist()
    assert canonical(shifted) == [0, 0, 1, 1, 1, 2]
    for same in (4, -2):
        assert RotatedSets(3, 8, shift=same).group_ids(points).tolist() == shifted


def test_scenes_never_share_a_set_and_a_grid_is_one_scene():
    coords = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]] * 2)
    points = Points(coords, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    ids = RotatedSets(4, 8).group_ids(points).tolist()
    assert canonical(ids) == [0, 0, 0, 0, 1, 1, 1, 1]
    grid = Grid((5, 6))
    pattern = RotatedSets((4, 3), 5, axis=1, shift=(2, 1))
    assert torch.equal(pattern.group_ids(grid), pattern.group_ids(Points(grid.coords)))
    q, k, v = (torch.randn(1, 2, 30, 4, dtype=torch.float64) for _ in range(3))
    want = attend(q, k, v, pattern, grid, backend="reference")
    torch.testing.assert_close(attend(q, k, v, pattern, grid), want, rtol=1e-12, atol=1e-12)


@given(
    window=st.integers(1, 20) | st.lists(st.integers(1, 20), min_size=1, max_size=4).map(tuple),
    set_size=st.integers(1, 100),
    axis=st.integers(-4, 3),
    shift=st.integers(-5, 20) | st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
)
def test_reprs_round_trip(window, set_size, axis, shift):
    if isinstance(window, tuple) and isinstance(shift, tuple) and len(window) != len(shift):
        shift = shift[:1] * len(window)
    p = RotatedSets(window, set_size, axis=axis, shift=shift)
    assert parse_pattern(repr(p)) == p and repr(parse_pattern(repr(p))) == repr(p)
    assert hash(parse_pattern(repr(p))) == hash(p)


def test_spec_strings_and_defaults():
    assert repr(parse_pattern("rotated_sets(12, 36)")) == "rotated_sets(12, 36)"
    spec = "rotated_sets((12, 12, 4), 36, axis=1, shift=6)"
    assert parse_pattern(spec) == RotatedSets((12, 12, 4), 36, axis=1, shift=6)
    assert repr(parse_pattern(spec)) == spec
    assert RotatedSets(8) == RotatedSets(8, 36, axis=0, shift=0)
    assert repr(RotatedSets(4, 5, shift=(0, 0))) == "rotated_sets(4, 5, shift=(0, 0))"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rotated_sets(0)", "RotatedSets window must be >= 1, got 0"),
        ("rotated_sets((4, 0), 5)", r"RotatedSets window\[1\] must be >= 1, got 0"),
        ("rotated_sets(4, 0)", "RotatedSets set_size must be >= 1, got 0"),
        ("rotated_sets(4, 2.5)", r"RotatedSets set_size must be an int, got 2.5 \(float\)"),
        ("rotated_sets(4, 5, axis=True)", r"RotatedSets axis must be an int, got True \(bool\)"),
        ("rotated_sets(4, 5, shift=())", "RotatedSets shift must be an int or a non-empty tuple"),
        ("rotated_sets(4, 5, shift=(1, 'a'))", r"RotatedSets shift\[1\] must be an int"),
        ("rotated_sets((4, 4), 5, shift=(1, 2, 3))",
         r"RotatedSets shift \(1, 2, 3\) has 3 entries and window \(4, 4\) has 2"),
        ("rotated_sets(4, 5, 0, 0, 1)", "bad arguments for rotated_sets"),
    ],
)  # fmt: skip
def test_bad_arguments_say_which_and_why(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_pattern(spec)


def test_layout_mismatches_name_the_argument_and_the_axes():
    points = Points(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    q = torch.zeros(1, 1, 2, 4)
    cases = [
        (RotatedSets(4, 5, axis=3), r"RotatedSets axis=3 is outside a layout with 3 axes"),
        (RotatedSets(4, 5, axis=-4), r"RotatedSets axis=-4 is outside .* \(valid: 0\.\.2\)"),
        (RotatedSets((4, 4), 5), r"RotatedSets window has 2 entries \(4, 4\) but the layout has 3"),
        (RotatedSets(4, 5, shift=(1, 2)), r"RotatedSets shift has 2 entries \(1, 2\) but the"),
    ]
    for pattern, message in cases:
        with pytest.raises(ValueError, match=message):
            attend(q, q, q, pattern, points)
        with pytest.raises(ValueError, match=message):
            pattern.mask(points)


def test_show_draws_rotated_sets(tmp_path):
    pytest.importorskip("typer")
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from ndformer.cli import build_app

    out = tmp_path / "sets.png"
    args = ["show", "rotated_sets(4, 5)", "--shape", "8x8", "--query", "1,2", "--out", str(out)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    # 4 x 4 windows of 16 tokens -> 4 sets of 4: the rows of each window
    assert "query (1, 2) attends to 4 keys" in result.output
    assert "# # Q # . . . ." in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(
        build_app(), ["show", "rotated_sets(4, 5, axis=1)", "--shape", "8x8"]
    )
    assert result.exit_code == 0 and "keys per query: min 4, mean 4.0, max 4" in result.output


def _scene_batch(items):
    from ndformer.point_tokens import PointBatch

    batch = PointBatch.from_scenes(
        [(torch.from_numpy(x), torch.from_numpy(c).float() / 255) for x, c, _ in items]
    )
    return PointBatch(batch.xyz.double(), batch.features.double(), batch.batch)


def test_volt_alternates_rotated_set_axes_over_its_blocks():
    from ndformer.tasks.scenes import room_scene

    torch.manual_seed(0)
    specs = ["rotated_sets(12, 36)", "rotated_sets(12, 36, axis=1)"]
    model = create_model("volt-tiny", in_chans=3, num_classes=8, pattern=specs, voxel_size=0.2,
                         patch=2, depth=4, dim=24, heads=2).double()  # fmt: skip
    assert [repr(b.attn.pattern) for b in model.blocks] == specs * 2
    items = [room_scene(400, seed) for seed in range(3)]
    batch = _scene_batch(items)
    layout = model.token_layout(batch)
    for spec in specs:  # windows of 12 tokens (4.8 m) hold several sets of <= 36 tokens
        sizes = torch.bincount(parse_pattern(spec).group_ids(layout))
        assert sizes.max() <= 36 and len(sizes) > 2 * batch.num_scenes
    x, y = (parse_pattern(s).group_ids(layout) for s in specs)
    assert canonical(x.tolist()) != canonical(y.tolist())  # the sets rotate
    logits = model(batch)
    assert logits.shape == (len(batch), 8) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model(_scene_batch([item])) for item in items])
        torch.testing.assert_close(model(batch), alone)
