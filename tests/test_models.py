"""Models: shapes in 1-D..4-D, config round trips, the N-D conv against its definition."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from ndformer import create_model, list_models
from ndformer.models import POINT_ARCHS, ModelConfig, build_model
from ndformer.models.config import MODELS
from ndformer.models.parts import DepthwiseConv, upsample_nearest
from ndformer.point_tokens import PointBatch

SIZES = {1: (13,), 2: (9, 7), 3: (5, 6, 7), 4: (3, 4, 5, 3)}


GRID_MODELS = [n for n in list_models() if MODELS[n]["arch"] not in POINT_ARCHS]
POINT_MODELS = [n for n in list_models() if MODELS[n]["arch"] in POINT_ARCHS]


def small(name: str, ndim: int, head: str) -> dict:
    kw = dict(ndim=ndim, in_chans=2, num_classes=3, head=head, patch=2)
    if name.startswith("volt"):
        kw.update(depth=2, dim=24, heads=2, voxel_size=0.5, rope_split=None)  # not Volt-S's
    elif name.startswith("voxconv"):
        kw.update(dim=8, voxel_size=0.5)
    elif name.startswith("vit"):
        kw.update(depth=2, dim=32, heads=2)
    elif name.startswith("hvit"):
        kw.update(depth=(1, 1, 1, 1), dim=16, heads=(1, 2, 2, 2), pattern="window(2)")
    elif name.startswith("swift"):  # 4-D preset: merge all but the last axis in any ndim
        kw.update(depth=(1, 1, 1, 1), dim=16, heads=(1, 2, 2, 2), stage_patterns=None,
                  pattern="window(2)", merge_axes=tuple(range(ndim - 1)) or None)  # fmt: skip
    elif name.startswith("segformer"):
        kw.update(dims=(8, 16, 24, 32), dim=8, heads=(1, 2, 2, 4), decoder_dim=16)
    else:
        kw.update(dim=8)
    return kw


def refused(name: str, ndim: int, head: str) -> str | None:
    """The error a model gives for a combination it does not take (None: it takes it)."""
    if MODELS[name]["arch"] == "segformer":
        if ndim > 3:
            return "segformer takes 1-3 spatial axes"
        if head != "segmentation":
            return "segformer segments: head must be 'segmentation'"
    return None


@pytest.mark.parametrize("name", GRID_MODELS)
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_every_model_runs_in_every_ndim_on_non_divisible_sizes(name, ndim, head):
    if (message := refused(name, ndim, head)) is not None:  # and says so clearly
        with pytest.raises(ValueError, match=message):
            create_model(name, **small(name, ndim, head))
        return
    model = create_model(name, **small(name, ndim, head))
    x = torch.randn(2, 2, *SIZES[ndim])
    out = model(x)
    expected = (2, 3) if head == "classification" else (2, 3, *SIZES[ndim])
    assert out.shape == expected
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    features = model.forward_features(x)
    assert features.shape[0] == 2 and features.shape[-1] == model.num_features


@pytest.mark.parametrize("name", POINT_MODELS)
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_every_point_model_segments_points_in_every_ndim(name, ndim):
    model = create_model(name, **small(name, ndim, "segmentation"))
    gen = torch.Generator().manual_seed(ndim)
    xyz = torch.rand(300, ndim, generator=gen) * 6
    points = PointBatch(xyz, torch.randn(300, 2, generator=gen), (torch.arange(300) >= 120).long())
    out = model(points)
    assert out.shape == (300, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list_models())
def test_config_round_trips_through_json(name):
    model = create_model(name, **small(name, 3, "segmentation"))
    again = ModelConfig.from_json(model.config.to_json())
    assert again == model.config
    rebuilt = build_model(again)
    assert [k for k, _ in rebuilt.state_dict().items()] == list(model.state_dict())


def test_patterns_are_cycled_over_the_blocks():
    model = create_model(
        "vit-tiny", depth=4, dim=32, heads=2, pattern=["window(4)", "window(4, shift=2)"]
    )
    specs = [repr(block.attn.pattern) for block in model.blocks]
    assert specs == ["window(4)", "window(4, shift=2)"] * 2
    hvit = create_model(
        "hvit-tiny",
        depth=(1, 1, 2, 1),
        dim=16,
        heads=(1, 2, 2, 2),
        stage_patterns=["window(4)", "full", ["window(2)", "full"], "full"],
    )
    assert [repr(b.attn.pattern) for b in hvit.stages[2]] == ["window(2)", "full"]


def test_reset_classifier_and_interface():
    model = create_model("vit-tiny", depth=1, dim=32, heads=2)
    assert (model.ndim, model.in_chans, model.num_classes) == (2, 1, 10)
    model.reset_classifier(4)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 4)
    assert model.forward_head(model.forward_features(torch.randn(1, 1, 8, 8))).shape == (1, 4)


def test_model_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model 'vit-huge'"):
        create_model("vit-huge")
    with pytest.raises(ValueError, match=r"unknown model config keys \['widht'\]"):
        create_model("vit-tiny", widht=3)
    with pytest.raises(ValueError, match=r"pattern.*window"):
        create_model("vit-tiny", pattern="window(")
    with pytest.raises(ValueError, match=r"heads .* one entry per stage"):
        create_model("hvit-tiny", heads=(1, 2))
    model = create_model("vit-tiny", depth=1, dim=32, heads=2, ndim=3, in_chans=2)
    with pytest.raises(ValueError, match=r"expects \[B, in_chans=2, 3 spatial axes\]"):
        model(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="3 spatial axes"):
        model(torch.randn(1, 2, 8, 8))


def depthwise_definition(x: torch.Tensor, weight: torch.Tensor, bias, kernel: int):
    """out[p, c] = bias[c] + sum_o weight[o, c] * x[p + o - kernel // 2, c] (zero outside)."""
    grid = x.shape[1:-1]
    out = bias.expand_as(x).clone()
    offsets = list(itertools.product(range(kernel), repeat=len(grid)))
    for p in itertools.product(*[range(g) for g in grid]):
        for w, o in zip(weight, offsets):
            q = [pi + oi - kernel // 2 for pi, oi in zip(p, o)]
            if all(0 <= qi < g for qi, g in zip(q, grid)):
                out[(slice(None), *p)] += w * x[(slice(None), *q)]
    return out


@given(
    ndim=st.integers(1, 4),
    kernel=st.sampled_from([1, 3, 5]),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_depthwise_conv_equals_its_definition(ndim, kernel, seed, data):
    grid = data.draw(st.tuples(*[st.integers(1, 5 if ndim < 4 else 3)] * ndim))
    torch.manual_seed(seed)
    conv = DepthwiseConv(3, kernel, ndim).double()
    x = torch.randn(2, *grid, 3, dtype=torch.float64)
    expected = depthwise_definition(x, conv.weight.detach(), conv.bias.detach(), kernel)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)
    if ndim <= 3:  # and PyTorch's own grouped convolution where it has one
        torch_conv = getattr(F, f"conv{ndim}d")
        weight = conv.weight.detach().T.reshape(3, 1, *[kernel] * ndim)
        reference = torch_conv(x.movedim(-1, 1), weight, conv.bias.detach(), padding=kernel // 2,
                               groups=3).movedim(1, -1)  # fmt: skip
        torch.testing.assert_close(conv(x), reference, rtol=1e-12, atol=1e-12)


@given(ndim=st.integers(1, 4), level=st.integers(0, 3), data=st.data())
def test_upsampling_maps_each_fine_token_to_the_merged_token_covering_it(ndim, level, data):
    fine = data.draw(st.tuples(*[st.integers(1, 9)] * ndim))
    factor = 2**level
    coarse = tuple(-(-g // factor) for g in fine)
    x = torch.arange(int(torch.tensor(coarse).prod())).view(1, *coarse, 1)
    up = upsample_nearest(x, factor, fine)
    assert up.shape == (1, *fine, 1)
    for p in itertools.islice(itertools.product(*[range(g) for g in fine]), 50):
        assert up[(0, *p, 0)] == x[(0, *[pi // factor for pi in p], 0)]


def test_merged_attention_without_merges_equals_grid_attention():
    from ndformer import Attention, Grid

    torch.manual_seed(0)
    attention = Attention(16, heads=2, pattern="full").double()
    x = torch.randn(2, 5, 4, 16, dtype=torch.float64)
    positions = Grid((5, 4)).coords.double().expand(2, -1, -1)
    merged, _, _ = attention.forward_merged(
        x.reshape(2, 20, 16), positions, torch.ones(2, 20).double()
    )
    torch.testing.assert_close(merged.reshape(x.shape), attention(x))


@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_token_merging_model_option(head):
    model = create_model("vit-tiny", depth=3, dim=32, heads=2, patch=2, in_chans=1, num_classes=3,
                         head=head, token_merging=4)  # fmt: skip
    out = model(torch.randn(2, 1, 10, 12))
    assert out.shape == ((2, 3) if head == "classification" else (2, 3, 10, 12))
    assert ModelConfig.from_json(model.config.to_json()).token_merging == 4
    with pytest.raises(ValueError, match="token_merging=4 needs arch 'vit' with full attention"):
        create_model("vit-tiny", token_merging=4, pattern=["full", "neighborhood(3)"])
    with pytest.raises(ValueError, match="needs arch 'vit'"):
        create_model("hvit-tiny", token_merging=2, pattern="full")


@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_keep_rate_model_option_fuses_inattentive_tokens(head):
    model = create_model("vit-tiny", depth=4, dim=32, heads=2, patch=2, in_chans=1, num_classes=3,
                         head=head, keep_rate=0.7)  # fmt: skip
    assert model.token_counts(30) == [30, 22, 17, 13]  # ceil(0.7 n) kept + 1 fused token
    seen = []
    for block in model.blocks:
        inner = block.attn.forward_merged

        def record(x, *args, inner=inner, **kwargs):
            seen.append(x.shape[1])
            return inner(x, *args, **kwargs)

        block.attn.forward_merged = record
    out = model(torch.randn(2, 1, 10, 12))  # 5 x 6 = 30 patch tokens
    assert seen == [30, 22, 17, 13]
    assert out.shape == ((2, 3) if head == "classification" else (2, 3, 10, 12))
    assert ModelConfig.from_json(model.config.to_json()).keep_rate == 0.7


def test_token_reduction_that_removes_nothing_equals_the_grid_model():
    torch.manual_seed(0)
    plain = create_model("vit-tiny", depth=4, dim=16, heads=2, patch=1, in_chans=1).double()
    # 0.9 of 4 tokens keeps 4: nothing to fuse, every block runs the reduced path unreduced
    reduced = create_model("vit-tiny", depth=4, dim=16, heads=2, patch=1, in_chans=1,
                           keep_rate=0.9).double()  # fmt: skip
    reduced.load_state_dict(plain.state_dict())
    assert reduced.token_counts(4) == [4, 4, 4, 4]
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(reduced.eval()(x), plain.eval()(x))


def test_received_attention_is_the_mean_softmax_column():
    from ndformer.layers import _received_attention

    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 7, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    sizes = torch.rand(2, 7, generator=gen, dtype=torch.float64) + 0.5
    bias = sizes.log()[:, None, None, :]
    probs = (q @ k.transpose(-1, -2) / 2 + bias).softmax(-1)  # [B, h, N, N], scale 4**-0.5
    want = (probs * sizes[:, None, :, None]).sum((1, 2)) / (3 * sizes.sum(-1, keepdim=True))
    torch.testing.assert_close(_received_attention(q, k, bias, sizes, rows=3), want)
    assert torch.allclose(want.sum(-1), torch.ones(2, dtype=torch.float64))


def test_keep_rate_errors():
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="keep_rate must be in"):
            create_model("vit-tiny", keep_rate=bad)
    with pytest.raises(ValueError, match="two token reductions; choose one"):
        create_model("vit-tiny", keep_rate=0.7, token_merging=2)
    with pytest.raises(ValueError, match=r"keep_rate=0.7 needs arch 'vit' with full attention"):
        create_model("vit-tiny", keep_rate=0.7, pattern="window(4)")
