"""Volt's own tokenizer and upsampling (``tokenizer="linear"``): the linear tokenizer is a
convolution with kernel = stride = patch over the dense voxel grid, the upsampling a
transposed convolution of the dense token grid read at each point's voxel (both grids
built here from the definitions), and a ``volt`` with them trains, round-trips its
config and exports."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import ndformer
from ndformer.models import create_model
from ndformer.models.config import ModelConfig
from ndformer.models.points import scene_inputs
from ndformer.models.voxel_tokens import VoxelTokenizer, VoxelUpsample
from ndformer.point_tokens import PointBatch
from test_point_models import TINY_VOLT, batch_of, scenes, tiny_data

VOXEL = 0.25


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


def random_scenes(seed: int, ndim: int, chans: int, count: int, points: int = 60):
    """Points of ``count`` scenes, each in its own box (float64), interleaved in the batch."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, count, (points,), generator=gen)
    batch[:count] = torch.arange(count)  # every scene has a point
    extent = torch.rand(count, ndim, generator=gen, dtype=torch.float64) * 2 + 0.1
    corner = torch.randn(count, ndim, generator=gen, dtype=torch.float64) * 5
    xyz = torch.rand(points, ndim, generator=gen, dtype=torch.float64) * extent[batch]
    xyz = xyz + corner[batch]
    return xyz, torch.randn(points, chans, generator=gen, dtype=torch.float64), batch


def voxels_of(xyz: torch.Tensor, batch: torch.Tensor, scene: int) -> torch.Tensor:
    """The definition: the scene's points shifted to its minimum, floored to voxels."""
    points = xyz[batch == scene]
    return torch.floor((points - points.min(0).values) / VOXEL).long()


def dense_voxel_grid(xyz, feats, batch, scene: int, patch: int) -> torch.Tensor:
    """[C + 1, *dims]: the mean of each voxel's features then 1 where occupied, zeros
    elsewhere; every axis padded to a whole number of patches."""
    voxel, own = voxels_of(xyz, batch, scene), feats[batch == scene]
    dims = [-(-(int(v) + 1) // patch) * patch for v in voxel.max(0).values]
    grid = torch.zeros(feats.shape[1] + 1, *dims, dtype=feats.dtype)
    for cell in {tuple(v) for v in voxel.tolist()}:
        inside = (voxel == torch.tensor(cell)).all(1)
        grid[(slice(None), *cell)] = torch.cat((own[inside].mean(0), own.new_ones(1)))
    return grid


def conv(ndim: int, transposed: bool = False):
    return getattr(F, f"conv_transpose{ndim}d" if transposed else f"conv{ndim}d")


@given(seed=st.integers(0, 2**31 - 1), ndim=st.integers(1, 3), patch=st.integers(1, 3),
       chans=st.integers(0, 3), count=st.integers(1, 3))  # fmt: skip
def test_the_linear_tokenizer_is_a_strided_convolution_of_the_voxel_grid(
    seed, ndim, patch, chans, count
):
    xyz, feats, batch = random_scenes(seed, ndim, chans, count)
    torch.manual_seed(seed)
    tokenizer = VoxelTokenizer(VOXEL, patch, chans, dim=5, ndim=ndim).double()
    tokens, point_voxel, layout = tokenizer(xyz, feats, batch)
    kernel = tokenizer.proj.weight.view(5, *(patch,) * ndim, chans + 1).movedim(-1, 1)
    want = {}
    for scene in range(count):
        grid = dense_voxel_grid(xyz, feats, batch, scene, patch)
        out = conv(ndim)(grid[None], kernel, tokenizer.proj.bias, stride=patch)[0]
        for cell in {tuple(v) for v in (voxels_of(xyz, batch, scene) // patch).tolist()}:
            want[(scene, *cell)] = out[(slice(None), *cell)]
    got = dict(zip(map(tuple, torch.cat((layout.batch[:, None], layout.coords), 1).tolist()),
                   tokens, strict=True))  # fmt: skip
    assert got.keys() == want.keys()  # one token per occupied patch of each scene
    torch.testing.assert_close(
        torch.stack([got[k] for k in want]), torch.stack(list(want.values()))
    )
    assert point_voxel.shape == (len(xyz),) and int(point_voxel.max()) < len(tokens) * patch**ndim


@given(seed=st.integers(0, 2**31 - 1), ndim=st.integers(1, 3), patch=st.integers(1, 3),
       count=st.integers(1, 3))  # fmt: skip
def test_the_upsampling_is_a_transposed_convolution_read_at_each_points_voxel(
    seed, ndim, patch, count
):
    xyz, feats, batch = random_scenes(seed, ndim, 2, count)
    torch.manual_seed(seed)
    tokenizer = VoxelTokenizer(VOXEL, patch, 2, dim=4, ndim=ndim).double()
    _, point_voxel, layout = tokenizer.assign(xyz, feats, batch)
    width = 3
    upsample = VoxelUpsample(4, width, patch, ndim).double()
    torch.nn.init.normal_(upsample.bias)
    h = torch.randn(layout.num_tokens, width, dtype=torch.float64)
    got = upsample.transposed(h, point_voxel)
    # deconv.weight [cells * out, in] -> conv_transpose kernel [in, out, *patch_shape]
    kernel = upsample.deconv.weight.view(*(patch,) * ndim, width, width)
    kernel = kernel.permute(ndim + 1, ndim, *range(ndim))
    want = torch.empty_like(got)
    for scene in range(count):
        voxel = voxels_of(xyz, batch, scene)
        dims = [-(-(int(v) + 1) // patch) for v in voxel.max(0).values]
        grid = torch.zeros(width, *dims, dtype=h.dtype)
        for row in (layout.batch == scene).nonzero()[:, 0].tolist():
            grid[(slice(None), *layout.coords[row].tolist())] = h[row]
        out = conv(ndim, transposed=True)(grid[None], kernel, upsample.bias, stride=patch)[0]
        want[batch == scene] = out[(slice(None), *voxel.T)].T
    torch.testing.assert_close(got, want)


def linear_volt(**overrides):
    torch.manual_seed(0)
    options = dict(in_chans=3, num_classes=8, voxel_size=0.25, patch=2, tokenizer="linear")
    return create_model("volt-tiny", **{**options, **TINY_VOLT, **overrides})


def _double(batch: PointBatch) -> PointBatch:
    return PointBatch(batch.xyz.double(), batch.features.double(), batch.batch)


def test_a_linear_volt_segments_each_scene_alone_and_every_weight_gets_a_gradient():
    model = linear_volt(pattern="serialized('hilbert', 8)").double().eval()
    assert model.num_features == 24 // 3 and not hasattr(model, "skip")
    items = scenes(3, 400)
    batch = _double(batch_of(items))
    batch.features.requires_grad_(True)
    together = model(batch)
    assert together.shape == (1200, 8)
    alone = torch.cat([model(_double(batch_of([s]))) for s in items])
    torch.testing.assert_close(together, alone)
    together.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert batch.features.grad.abs().sum() > 0


def test_a_linear_volt_tiny_trains_and_loads_back(tmp_path):
    from ndformer.train import TrainConfig, fit

    model = linear_volt(upsample_dim=16)
    items = scenes(2, 300)
    batch, labels = batch_of(items), torch.cat([torch.from_numpy(s[2]).long() for s in items])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    config = TrainConfig(task="scenes-points", model="volt-tiny", steps=3, batch_size=2,
                         overrides=dict(TINY_VOLT, tokenizer="linear"))  # fmt: skip
    result = fit(config, tmp_path / "run", data=tiny_data(300), progress=False)
    loaded = ndformer.load(tmp_path / "run")
    assert loaded.config.tokenizer == "linear" and loaded.num_features == 8
    assert result.score.metric == "miou"


def test_the_tokenizer_options_round_trip_and_bad_ones_are_refused():
    config = linear_volt(upsample_dim=16).config
    again = ModelConfig.from_json(config.to_json())
    assert again == config and again.tokenizer == "linear" and again.upsample_dim == 16
    assert json.loads(config.to_json())["tokenizer"] == "linear"
    default = create_model("volt-tiny").config
    assert (default.tokenizer, default.upsample_dim) == ("pointnet", None)
    for bad, message in [
        (dict(tokenizer="conv"), "tokenizer must be one of pointnet, linear, got 'conv'"),
        (dict(tokenizer="linear", upsample_dim=0), "upsample_dim must be >= 1, got 0"),
        (dict(upsample_dim=8), "upsample_dim=8 sets the width of the linear tokenizer's"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            create_model("volt-tiny", **bad)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="tokenizer='linear' needs arch 'volt'"):
        create_model("vit-tiny", tokenizer="linear")


def test_volt_small_with_the_linear_tokenizer_has_volt_s_decoder_shapes():
    model = create_model("volt-small", in_chans=3, num_classes=13, tokenizer="linear")
    cells, chans, width, dim = 5**3, 3 + 3 + 1, 128, 384  # features, coordinates, occupancy
    assert model.tokenizer.proj.weight.shape == (dim, cells * chans)
    assert model.upsample.deconv.weight.shape == (cells * width, width)
    tokenizer = cells * chans * dim + dim
    upsample = dim * width + 2 * width + cells * width * width + width + 2 * width
    head = 2 * width + width * 13 + 13
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert (
        sum(p.numel() for p in model.parameters())
        == blocks + 2 * dim + tokenizer + (upsample + head)
        == 23_733_517
    )


def test_voxel_features_average_the_points_of_each_voxel():
    xyz = torch.tensor([[0.0, 0.0], [0.1, 0.1], [0.3, 0.0], [0.9, 0.9]], dtype=torch.float64)
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0]], dtype=torch.float64)
    tokenizer = VoxelTokenizer(VOXEL, 2, 1, dim=2, ndim=2).double()
    inputs, point_voxel, layout = tokenizer.assign(xyz, feats)
    voxels = tokenizer.voxel_features(inputs, point_voxel, layout.num_tokens)
    assert layout.coords.tolist() == [[0, 0], [1, 1]] and voxels.shape == (2, 4, 2)
    # patch (0, 0): voxel (0, 0) holds two points, voxel (1, 0) one; (0, 1), (1, 1) empty
    assert voxels[0].tolist() == [[2.0, 1.0], [0.0, 0.0], [5.0, 1.0], [0.0, 0.0]]
    assert voxels[1].tolist() == [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [7.0, 1.0]]
    assert point_voxel.tolist() == [0, 0, 2, 7]


def test_a_linear_volt_exports_and_runs_other_scenes_like_eager(tmp_path):
    from ndformer.train.export import export_model
    from ndformer.train.export_points import PointProgram, point_inputs

    model = linear_volt(pattern=["window(2)", "serialized('hilbert', 8)"]).eval()
    result = export_model(model, batch_of(scenes(2, 300)), "pt2", tmp_path / "volt.pt2")
    assert result["custom_ops"] == [] and result["max_abs_error"] < 1e-5
    program = torch.export.load(tmp_path / "volt.pt2").module()
    other = batch_of(scenes(3, 500, seed=1))
    args = point_inputs(model, other)
    assert args[0].shape == (1500, 6)  # the features: coordinates in the scene, colour
    with torch.no_grad():
        want = model(other)
        torch.testing.assert_close(program(*args), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(PointProgram(model)(*args), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(args[0], scene_inputs(other))
