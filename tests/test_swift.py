"""SwiFT (swift-tiny): the published 4-D configuration, space-only patch merging, and
the generated 4-D task ``blobs4d`` (direction of motion) it learns."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from ndformer import create_model
from ndformer.models import ModelConfig, build_model
from ndformer.models.hierarchical import HierarchicalConfig
from ndformer.models.parts import PatchMerging, upsample_nearest
from ndformer.tasks import load_task
from ndformer.tasks.series import DIRECTIONS, moving_blobs
from ndformer.train import TrainConfig, fit


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


#: A 4-stage swift-like model small enough for every test (four 4-D stages).
SMALL = dict(dim=16, depth=(1, 1, 1, 1), heads=(1, 2, 2, 2), stage_patterns=None,
             pattern="window(2)", patch=(2, 2, 2, 1))  # fmt: skip


def swift_parameters(dim, depth, heads, in_chans, patch, classes, mlp_ratio=4, merged_axes=3):
    """The parameter count from the architecture's definition, layer by layer."""
    linear = lambda i, o, bias=True: i * o + o * bias  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731
    total = linear(in_chans * math.prod(patch), dim)  # PatchEmbed
    for s, blocks in enumerate(depth):
        c = dim * 2**s
        assert c % heads[s] == 0
        if s:  # merging: LN over 2**axes concatenated tokens, Linear(.., 2C, no bias)
            tokens = 2**merged_axes * c // 2
            total += norm(tokens) + linear(tokens, c, bias=False)
        attention = linear(c, 3 * c) + linear(c, c)  # qkv (with bias), output projection
        mlp = linear(c, mlp_ratio * c) + linear(mlp_ratio * c, c)
        total += blocks * (norm(c) + attention + norm(c) + mlp)
    last = dim * 2 ** (len(depth) - 1)
    return total + norm(last) + linear(last, classes)  # final norm, classifier


def test_swift_tiny_is_the_published_configuration_with_a_pinned_parameter_count():
    model = create_model("swift-tiny")
    c = model.config
    assert (c.arch, c.ndim, c.in_chans, c.num_classes) == ("hvit", 4, 1, 2)
    assert (c.dim, c.depth, c.heads, c.patch) == (36, (2, 2, 6, 2), (3, 6, 12, 24), (6, 6, 6, 1))
    assert c.merge_axes == (0, 1, 2) and c.rope
    specs = [[repr(b.attn.pattern) for b in stage] for stage in model.stages]
    plain, shifted = "window(4)", "window(4, shift=2)"
    assert specs[0] == specs[1] == [plain, shifted]
    assert specs[2] == [plain, "window(4, shift=(0, 0, 0, 2))"] * 3  # space: 4 = whole axis
    assert specs[3] == [plain] * 2  # SwiFT's last_layer_full_MSA: all space x 4 frames
    count = sum(p.numel() for p in model.parameters())
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    print(f"swift-tiny: {count:,} parameters")
    for name, shape in shapes.items():  # the first block of each stage stands for the rest
        if not (name.startswith("stages.") and name.split(".")[2] != "0"):
            print(f"  {name}: {shape}")
    assert shapes["patch_embed.proj.weight"] == (36, 216)
    assert shapes["stages.0.0.attn.qkv.weight"] == (108, 36)
    assert shapes["stages.0.0.mlp.fc1.weight"] == (144, 36)
    assert shapes["merges.0.norm.weight"] == (8 * 36,)  # 2 x 2 x 2 tokens: time kept
    assert shapes["merges.0.proj.weight"] == (72, 8 * 36)
    assert shapes["merges.2.proj.weight"] == (288, 8 * 144)
    assert shapes["stages.3.1.attn.proj.weight"] == (288, 288)
    assert shapes["head.fc.weight"] == (2, 288)
    assert len(model.merges) == 3 and [len(s) for s in model.stages] == [2, 2, 6, 2]
    assert count == swift_parameters(36, (2, 2, 6, 2), (3, 6, 12, 24), 1, (6, 6, 6, 1), 2)
    assert count == 4_109_150  # the pin (SwiFT's own code adds 206,640 absolute-position
    # parameters at 96^3 x 20, has a 1-logit head and no final norm in use)


def test_swift_tiny_runs_in_4d_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = create_model("swift-tiny", num_classes=6)
    x = torch.randn(2, 1, 16, 16, 16, 8)
    out = model(x)
    assert out.shape == (2, 6) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def stage_grids(model, x):
    grids = []
    hooks = [s.register_forward_hook(lambda m, i, o: grids.append(tuple(o.shape[1:]))) for s in
             model.stages]  # fmt: skip
    model(x)
    for hook in hooks:
        hook.remove()
    return grids


def test_merging_halves_space_and_keeps_the_time_axis():
    model = create_model("swift-tiny", **SMALL)
    grids = stage_grids(model, torch.randn(2, 1, 16, 16, 16, 8))
    assert grids == [(8, 8, 8, 8, 16), (4, 4, 4, 8, 32), (2, 2, 2, 8, 64), (1, 1, 1, 8, 128)]
    # odd sizes: ceil on the merged axes, the time axis untouched
    grids = stage_grids(model, torch.randn(1, 1, 10, 6, 14, 5))
    assert [g[:4] for g in grids] == [(5, 3, 7, 5), (3, 2, 4, 5), (2, 1, 2, 5), (1, 1, 1, 5)]
    every = create_model("swift-tiny", **SMALL, merge_axes=None)
    grids = stage_grids(every, torch.randn(2, 1, 16, 16, 16, 8))
    assert [g[:4] for g in grids] == [(8, 8, 8, 8), (4, 4, 4, 4), (2, 2, 2, 2), (1, 1, 1, 1)]


def merging_definition(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """[B, *grid, C] -> [B, *merged, C * 2**len(axes)]: out[p] holds, channel first, the
    tokens ``x[p * 2 + o]`` (o over {0, 1} on the merged axes, row-major; zero outside)."""
    grid, c = x.shape[1:-1], x.shape[-1]
    merged = [(g + 1) // 2 if a in axes else g for a, g in enumerate(grid)]
    offsets = list(itertools.product(*[(0, 1) if a in axes else (0,) for a in range(len(grid))]))
    out = x.new_zeros(x.shape[0], *merged, c, len(offsets))
    for p in itertools.product(*[range(m) for m in merged]):
        for i, o in enumerate(offsets):
            q = [pi * (2 if a in axes else 1) + oi for a, (pi, oi) in enumerate(zip(p, o))]
            if all(qi < g for qi, g in zip(q, grid)):
                out[(slice(None), *p, slice(None), i)] = x[(slice(None), *q)]
    return out.flatten(-2)


@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 1, 2, 3), (1, 3), (2,)])
def test_patch_merging_equals_its_definition_on_odd_sizes(axes):
    torch.manual_seed(1)
    merging = PatchMerging(3, 5, ndim=4, axes=None if len(axes) == 4 else axes)
    x = torch.randn(2, 3, 5, 2, 3, 3)
    expected = merging.proj(merging.norm(merging_definition(x, axes)))
    torch.testing.assert_close(merging(x), expected)


def test_default_merge_axes_is_every_axis_with_identical_outputs():
    torch.manual_seed(2)
    default = create_model("hvit-tiny", ndim=3, head="segmentation", depth=(1, 1, 1), dim=16,
                           heads=(1, 2, 2), pattern="window(2)", patch=2)  # fmt: skip
    explicit = build_model(
        ModelConfig.from_dict({**default.config.to_dict(), "merge_axes": [0, 1, 2]})
    )
    explicit.load_state_dict(default.state_dict())
    x = torch.randn(2, 1, 9, 6, 7)
    torch.testing.assert_close(explicit(x), default(x), rtol=0, atol=0)


def test_segmentation_upsamples_per_axis_with_space_only_merging_on_odd_sizes():
    model = create_model("swift-tiny", **{**SMALL, "depth": (1, 1, 1), "heads": (1, 2, 2)},
                         head="segmentation", num_classes=3)  # fmt: skip
    x = torch.randn(2, 1, 7, 9, 5, 3)
    assert model(x).shape == (2, 3, 7, 9, 5, 3)
    assert model.forward_features(x).shape == (2, 4, 5, 3, 3, 16)
    small = torch.arange(6.0).view(1, 2, 3, 1)  # [B, 2, 3, C]
    up = upsample_nearest(small, (2, 1), (3, 3))  # repeat axis 0 twice, crop to 3; axis 1 kept
    assert up[0, :, :, 0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("bad", [(0, 4), (0, 0), (), (1.0,), "xyz"])
def test_bad_merge_axes_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"merge_axes must be None \(every axis\) or distinct"
                       r" axes of 0\.\.3, got"):  # fmt: skip
        create_model("swift-tiny", merge_axes=bad)
    with pytest.raises(ValueError, match="PatchMerging axes must be"):
        PatchMerging(4, 8, ndim=2, axes=(2,))
    config = HierarchicalConfig(arch="hvit", ndim=4, depth=(1, 1), merge_axes=[2, 0])
    assert config.merge_axes == (0, 2)


def motion_of(x: np.ndarray) -> np.ndarray:
    """The class a clean motion estimate gives each sample [n, 1, X, Y, Z, T]: the axis
    whose 1-D profile (sum over the two other axes) changes most from frame to frame, and
    the sign of the one-voxel roll that best maps each frame's profile onto the next."""
    out = []
    for volume in x[:, 0].astype(np.float64):
        profiles = [volume.sum(axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
        change = [np.square(np.diff(p, axis=-1)).sum() for p in profiles]
        axis = int(np.argmax(change))
        p = profiles[axis]
        forward, backward = (np.square(np.roll(p[:, :-1], s, axis=0) - p[:, 1:]).sum()
                             for s in (1, -1))  # fmt: skip
        sign = 1 if forward < backward else -1
        out.append(next(i for i, (_, a, g) in enumerate(DIRECTIONS) if (a, g) == (axis, sign)))
    return np.array(out)


def test_blobs4d_labels_are_the_motion_and_frames_alone_do_not_tell_them():
    x, y = moving_blobs(300, 10, 6, seed=4)
    assert x.shape == (300, 1, 10, 10, 10, 6) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y, minlength=6).min() > 30  # every direction, roughly balanced
    again, labels = moving_blobs(300, 10, 6, seed=4)
    assert np.array_equal(again, x) and np.array_equal(labels, y)
    assert (motion_of(x) == y).mean() > 0.95
    # The same frames in reverse order are the opposite direction: no frame, nor the set
    # of frames, tells the class; their order does.
    opposite = np.array([1, 0, 3, 2, 5, 4])
    assert (motion_of(x[..., ::-1]) == opposite[y]).mean() > 0.95


def test_blobs4d_task_loads_with_its_shapes_and_no_label_changing_flips():
    task = load_task("blobs4d-6x4", cache=False)
    assert task.x["train"].shape[1:] == (1, 6, 6, 6, 4) and task.ndim == 4
    assert task.kind == "classification" and task.num_classes == 6 and task.flip_axes == ()
    assert task.class_names == ["+x", "-x", "+y", "-y", "+z", "-z"]
    assert task.x["train"].dtype == torch.float32
    with pytest.raises(ValueError, match="blobs4d needs size >= 4 and frames >= 2"):
        load_task("blobs4d-3x4")


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster than two and keeps a shared machine free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_small_swift_learns_the_direction_of_motion_quickly(tmp_path, one_thread):
    """A 2-stage swift-like model (space-only merging: 2^3 x 4 -> 1 x 4 tokens) trains on
    blobs4d-8 to far above chance (1/6) in seconds (seeds 0-5 gave 96.7-99.0%). Time patch
    2: every token sees two frames; with SwiFT's time patch 1 the model finds the axis of
    the motion quickly but its sign only after much longer training."""
    overrides = dict(dim=32, depth=(2, 1), heads=(2, 4), stage_patterns=None,
                     pattern=["window(4)", "window(4, shift=2)"], patch=(4, 4, 4, 2))  # fmt: skip
    config = TrainConfig(task="blobs4d-8", model="swift-tiny", overrides=overrides, steps=300,
                         batch_size=32, lr=2e-3, warmup=0.1, seed=0, eval_samples=200)  # fmt: skip
    start = time.perf_counter()
    result = fit(config, tmp_path / "run", progress=False)
    seconds = time.perf_counter() - start
    print(f"swift-like on blobs4d-8: {result.score} in {seconds:.1f} s")
    assert result.model.config.merge_axes == (0, 1, 2)
    assert result.score.value > 0.6  # chance: 1/6
