"""SegFormer3D: the published configuration, shapes, pattern variants; sliding-window
inference and NIfTI prediction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ndformer.cli import build_app
from ndformer.models import create_model
from ndformer.train import TrainConfig, fit
from ndformer.train.sliding import sliding_window, window_starts

SMALL = dict(dims=(8, 16, 24, 32), dim=8, heads=(1, 2, 2, 4), decoder_dim=16)


def mit_parameters(in_chans, classes, dims, heads, srs, depths, mlp, decoder, ndim=3):
    """Parameters of SegFormer3D counted from its description, layer by layer."""
    total, previous = 0, in_chans
    for s, (d, sr, depth) in enumerate(zip(dims, srs, depths)):
        k = 7 if s == 0 else 3
        total += k**ndim * previous * d + d + 2 * d  # overlapping merge conv + LayerNorm
        hidden = mlp * d
        block = 2 * d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)  # norm, q, kv, proj
        if sr > 1:
            block += sr**ndim * d * d + d + 2 * d  # reduction conv + its LayerNorm
        block += 2 * d + (d * hidden + hidden) + (3**ndim * hidden + hidden) + 2 * hidden
        block += hidden * d + d  # fc2
        total += depth * block + 2 * d  # blocks + the stage's LayerNorm
        previous = d
    total += sum(d * decoder + decoder + 2 * decoder for d in dims)  # linear + LayerNorm
    total += len(dims) * decoder * decoder + 2 * decoder  # fuse (no bias) + BatchNorm
    return total + decoder * classes + classes  # the classifier


def test_segformer3d_tiny_is_the_published_network():
    model = create_model("segformer3d-tiny")
    c = model.config
    assert (c.in_chans, c.num_classes, c.dims, c.heads, c.sr_ratios, c.depth) == (
        4, 3, (32, 64, 160, 256), (1, 2, 5, 8), (4, 2, 1, 1), (2, 2, 2, 2))  # fmt: skip
    count = sum(p.numel() for p in model.parameters())
    print(f"segformer3d-tiny: {count:,} parameters")
    assert count == mit_parameters(4, 3, c.dims, c.heads, c.sr_ratios, c.depth, 4, 256)
    assert count == 4_525_251  # "4.5 M" in the paper
    small = create_model("segformer3d-small")
    assert sum(p.numel() for p in small.parameters()) == mit_parameters(
        4, 3, (64, 128, 320, 512), None, (4, 2, 1, 1), (2, 2, 2, 2), 4, 256
    )
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(x)
        out = model(x)
    assert [tuple(s.shape) for s in stages] == [
        (1, 16, 16, 16, 32), (1, 8, 8, 8, 64), (1, 4, 4, 4, 160), (1, 2, 2, 2, 256)]  # fmt: skip
    assert out.shape == (1, 3, 64, 64, 64)


def test_reduced_keys_match_a_strided_conv3d():
    model = create_model("segformer3d-tiny", **SMALL).eval()
    attention = model.stages[0][0].attn
    x = torch.randn(2, 8, 8, 8, 8)
    reduced = attention.reduce(x)
    conv = torch.nn.functional.conv3d(
        x.movedim(-1, 1), attention.reduce.weight, attention.reduce.bias, stride=4
    )
    assert torch.allclose(reduced, conv.movedim(1, -1), atol=1e-6)
    assert reduced.shape == (2, 2, 2, 2, 8)


@pytest.mark.parametrize("ndim,size", [(2, (30, 41)), (3, (17, 20, 23)), (1, (45,))])
def test_any_size_and_1_to_3_axes_give_dense_logits_and_gradients(ndim, size):
    model = create_model("segformer3d-tiny", **SMALL, ndim=ndim, in_chans=2, num_classes=5)
    x = torch.randn(2, 2, *size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, *size)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("pattern", ["pooled(2)", "neighborhood(3)", ["window(2)", "full"]])
def test_ndformer_patterns_replace_the_efficient_attention(pattern):
    model = create_model("segformer3d-tiny", **SMALL, pattern=pattern)
    assert model(torch.randn(2, 4, 32, 32, 32)).shape == (2, 3, 32, 32, 32)


def test_bad_segformer_configs_fail_clearly():
    with pytest.raises(ValueError, match="segformer takes 1-3 spatial axes"):
        create_model("segformer3d-tiny", ndim=4)
    with pytest.raises(ValueError, match=r"sr_ratios \(4, 2\) must have one entry per stage"):
        create_model("segformer3d-tiny", sr_ratios=(4, 2))
    with pytest.raises(ValueError, match=r"dims\[2\]=160 must be divisible by heads\[2\]=3"):
        create_model("segformer3d-tiny", heads=(1, 2, 3, 8))
    with pytest.raises(ValueError, match="head must be 'segmentation'"):
        create_model("segformer3d-tiny", head="classification")


def brute_force_windows(shape, roi, overlap):
    """Every window start per axis by the MONAI rule, written out: steps of
    int(roi * (1 - overlap)) (at least 1) from 0, and one flush with the end."""
    per_axis = []
    for n, r in zip(shape, roi):
        n = max(n, r)
        step, starts, s = max(1, int(r * (1 - overlap))), [], 0
        while s + r <= n:
            starts.append(s)
            s += step
        if starts[-1] + r < n:
            starts.append(n - r)
        per_axis.append(starts)
    return list(itertools.product(*per_axis))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 11), min_size=1, max_size=4),
    data=st.data(),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.8]),
    blend=st.sampled_from(["constant", "gaussian"]),
)
def test_sliding_window_is_exact_for_pointwise_models_and_averages_the_windows(
    shape, data, overlap, blend
):
    roi = [data.draw(st.integers(1, 8)) for _ in shape]
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    mix = torch.randn(4, 3, dtype=torch.float64)

    def pointwise(windows):
        return torch.einsum("kc,bc...->bk...", mix, windows).float()

    out = sliding_window(pointwise, x, roi, overlap, blend, batch_size=3)
    padded = [max(n, r) for n, r in zip(shape, roi)]
    pad = [(r - n) // 2 if r > n else 0 for n, r in zip(shape, roi)]
    expected = pointwise(x).float()
    assert out.shape == (2, 4, *shape)
    assert torch.allclose(out, expected, atol=1e-5)
    # with constant weights, a window-numbering model gives each voxel the mean number of
    # the windows that cover it
    starts = brute_force_windows(shape, roi, overlap)
    assert [len(window_starts(p, r, overlap)) for p, r in zip(padded, roi)] == [
        len({s[a] for s in starts}) for a in range(len(shape))
    ]
    calls = iter(range(10**6))

    def numbering(windows):
        return torch.stack([torch.full((1, *roi), float(next(calls))) for _ in windows])

    numbered = sliding_window(numbering, x[:1], roi, overlap, "constant", batch_size=2)
    total, count = np.zeros(padded), np.zeros(padded)
    for i, start in enumerate(starts):
        where = tuple(slice(s, s + r) for s, r in zip(start, roi))
        total[where] += i
        count[where] += 1
    crop = tuple(slice(p, p + n) for p, n in zip(pad, shape))
    assert np.allclose(numbered[0, 0].numpy(), (total / count)[crop], atol=1e-4)


def test_predict_writes_a_nifti_label_map_with_the_input_affine(tmp_path, monkeypatch):
    nibabel = pytest.importorskip("nibabel")
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(task="organs3d-16", model="segformer3d-tiny", overrides=SMALL,
                         steps=2, batch_size=4, eval_samples=4)  # fmt: skip
    fit(config, tmp_path / "run", progress=False)
    volume = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    affine = np.array([[0.8, 0, 0, -12.0], [0, 0.8, 0.1, 4.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "ct.nii.gz")
    out = tmp_path / "labels.nii.gz"
    args = ["predict", str(tmp_path / "run"), str(tmp_path / "ct.nii.gz"), "--out", str(out),
            "--roi", "16", "--overlap", "0.25", "--plot", str(tmp_path / "slices.png")]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert "32x32x32 voxels, 27 windows of 16x16x16" in result.output
    assert (tmp_path / "slices.png").stat().st_size > 10_000  # the slices were drawn
    labels = nibabel.load(out)
    assert labels.shape == (32, 32, 32) and np.allclose(labels.affine, affine)
    values = np.asarray(labels.dataobj)
    assert values.dtype == np.uint8 and values.max() < 4
    # a volume with the wrong number of channels is refused, naming the file
    nibabel.save(
        nibabel.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), affine), tmp_path / "two.nii"
    )
    bad = CliRunner().invoke(
        build_app(),
        ["predict", str(tmp_path / "run"), str(tmp_path / "two.nii"), "--out", str(out)],
    )
    assert bad.exit_code != 0 and "two.nii: 2 channel(s)" in bad.output


def test_the_arena_counts_segformer_attention_over_its_reduced_keys():
    from ndformer.arena.measure import attention_gflop

    model = create_model("segformer3d-tiny", in_chans=1, num_classes=4)
    # stage grids 8^3, 4^3, 2^3, 1 (input 32^3, strides 4, 2, 2, 2); keys reduced by 4, 2, 1, 1
    stages = [(8**3, 2**3, 32), (4**3, 2**3, 64), (2**3, 2**3, 160), (1, 1, 256)]
    expected = sum(2 * 4 * queries * keys * dim for queries, keys, dim in stages)  # 2 blocks
    assert attention_gflop(model, torch.randn(1, 1, 32, 32, 32)) * 1e9 == pytest.approx(expected)
