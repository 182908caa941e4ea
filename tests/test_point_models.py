"""Point-cloud segmentation: generated scenes, augmentation, files, volt/voxconv, train, predict."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ndformer
from ndformer.cli import build_app
from ndformer.models import create_model
from ndformer.models.points import scene_inputs
from ndformer.point_tokens import PointBatch
from ndformer.tasks import PointTaskData, load_data, load_task, read_points, write_ply
from ndformer.tasks.points import Augment3D, from_scenes
from ndformer.tasks.scenes import SCENE_CLASSES, room_scene
from ndformer.train import TrainConfig, TrainingError, fit
from ndformer.train.evaluate import evaluate_model

TINY_VOLT = dict(depth=2, dim=24, heads=2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


def scenes(count: int, points: int = 600, seed: int = 0):
    return [room_scene(points, seed * 1000 + i) for i in range(count)]


def tiny_data(points: int = 600) -> PointTaskData:
    parts = dict(train=scenes(6, points), val=scenes(2, points, 1), test=scenes(3, points, 2))
    return from_scenes("rooms", parts, num_classes=len(SCENE_CLASSES), voxel_size=0.25, patch=2)


def batch_of(items) -> PointBatch:
    return PointBatch.from_scenes(
        [(torch.from_numpy(x), torch.from_numpy(r).float() / 255) for x, r, _ in items]
    )


def test_room_scenes_are_deterministic_labelled_rooms_with_every_class():
    xyz, rgb, label = room_scene(5000, 3)
    again = room_scene(5000, 3)
    assert all(np.array_equal(a, b) for a, b in zip((xyz, rgb, label), again))
    assert xyz.shape == (5000, 3) and xyz.dtype == np.float32
    assert rgb.shape == (5000, 3) and rgb.dtype == np.uint8 and label.shape == (5000,)
    assert not np.array_equal(xyz, room_scene(5000, 4)[0])
    seen = set()
    for seed in range(10):
        seen |= set(room_scene(3000, seed)[2].tolist())
    assert seen == set(range(len(SCENE_CLASSES)))
    # z is up: the floor is at the bottom, walls reach highest, a room is 4-7 m wide
    floor, wall = xyz[label == 0], xyz[label == 1]
    assert abs(float(np.median(floor[:, 2]))) < 0.05 and wall[:, 2].max() > 2.4
    assert 4 <= float(np.ptp(floor[:, :2], axis=0).max()) <= 7 * math.sqrt(2) + 0.1


def test_scenes_points_task_sizes_and_errors():
    data = load_task("scenes-points-1000")
    assert isinstance(data, PointTaskData) and data.num_classes == 8 and data.in_chans == 3
    assert [data.num_samples(s) for s in ("train", "val", "test")] == [320, 40, 100]
    sizes = data.offsets["train"].diff()
    assert sizes.min() >= 1000 and sizes.max() <= 1600
    assert "point segmentation" in data.summary()
    with pytest.raises(ValueError, match="at least 1000 points"):
        load_task("scenes-points-10")


def test_augmentation_rotates_about_up_scales_flips_and_drops_consistently():
    xyz, rgb, label = (torch.from_numpy(a) for a in room_scene(2000, 0))
    rgb = rgb.float() / 255
    gen = torch.Generator().manual_seed(1)
    exact = Augment3D(jitter=0.0, dropout=0.0)
    out, rgb2, label2 = exact(xyz, rgb, label, gen)
    # a similarity transform: every distance scales by one factor, heights only scale
    scale = out[:, 2].abs().sum() / xyz[:, 2].abs().sum()
    assert 0.9 <= scale <= 1.1
    torch.testing.assert_close(torch.pdist(out[:200]), scale * torch.pdist(xyz[:200]))
    assert torch.equal(rgb2, rgb) and torch.equal(label2, label)
    dropped, rgb3, label3 = Augment3D(dropout=0.5)(
        xyz, rgb, label, torch.Generator().manual_seed(2)
    )
    assert len(dropped) == len(rgb3) == len(label3) <= len(xyz)
    again = Augment3D(dropout=0.5)(xyz, rgb, label, torch.Generator().manual_seed(2))[0]
    assert torch.equal(dropped, again)


@pytest.mark.parametrize("pattern", ["full", "serialized('hilbert', 16)"])
def test_volt_segments_each_scene_independently_of_the_batch(pattern):
    torch.manual_seed(0)
    model = create_model("volt-tiny", in_chans=3, num_classes=8, pattern=pattern, voxel_size=0.2,
                         patch=2, **TINY_VOLT).double().eval()  # fmt: skip
    items = scenes(3, 400)
    together = model(_double(batch_of(items)))
    assert together.shape == (1200, 8)
    alone = torch.cat([model(_double(batch_of([s]))) for s in items])
    torch.testing.assert_close(together, alone)
    together.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _double(batch: PointBatch) -> PointBatch:
    return PointBatch(batch.xyz.double(), batch.features.double(), batch.batch)


def test_scene_inputs_are_relative_to_each_scene():
    items = scenes(2, 300)
    batch = batch_of(items)
    inputs = scene_inputs(batch)
    shifted = PointBatch(batch.xyz + torch.tensor([5.0, -3.0, 2.0]), batch.features, batch.batch)
    torch.testing.assert_close(scene_inputs(shifted), inputs, atol=1e-5, rtol=0)
    first = inputs[batch.batch == 0]
    assert first[:, 2].min() == 0 and first[:, :2].mean(0).abs().max() < 1e-5


def test_voxconv_teacher_maps_points_to_per_point_logits():
    model = create_model("voxconv-tiny", in_chans=3, num_classes=8, voxel_size=0.25)
    logits = model(batch_of(scenes(2, 300)))
    assert logits.shape == (600, 8)
    logits.sum().backward()


def test_point_models_refuse_grids_and_bad_configs():
    model = create_model("volt-tiny", in_chans=3, num_classes=8, **TINY_VOLT)
    with pytest.raises(ValueError, match="must be a PointBatch"):
        model(torch.zeros(1, 3, 8, 8, 8))
    wrong = PointBatch(torch.zeros(5, 3), torch.zeros(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"features \(5, 2\).*in_chans=3"):
        model(wrong)
    with pytest.raises(ValueError, match="head must be 'segmentation'"):
        create_model("volt-tiny", head="classification")
    with pytest.raises(ValueError, match="voxel_size must be > 0"):
        create_model("volt-tiny", voxel_size=0)


def test_ply_and_npz_round_trip_and_clear_errors(tmp_path):
    xyz, rgb, label = room_scene(500, 0)
    write_ply(tmp_path / "scene.ply", xyz, label, rgb)
    back = read_points(tmp_path / "scene.ply")
    assert np.array_equal(back[0], xyz) and np.array_equal(back[1], rgb)
    assert np.array_equal(back[2], label)
    np.savez(tmp_path / "scene.npz", xyz=xyz, rgb=rgb.astype(np.float32) / 255)
    xyz2, rgb2, label2 = read_points(tmp_path / "scene.npz")
    assert np.array_equal(xyz2, xyz) and np.abs(rgb2.astype(int) - rgb).max() <= 1
    assert label2 is None
    np.savez(tmp_path / "bad.npz", points=xyz)
    with pytest.raises(ValueError, match="needs an 'xyz' array"):
        read_points(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", xyz=xyz, label=label[:10])
    with pytest.raises(ValueError, match="one entry per point"):
        read_points(tmp_path / "short.npz")
    with pytest.raises(ValueError, match=r"expected a \.ply or \.npz"):
        (tmp_path / "scene.txt").write_text("1 2 3")
        read_points(tmp_path / "scene.txt")


def test_a_folder_of_labelled_scenes_is_point_data(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, (xyz, rgb, label) in enumerate(scenes(10, 300)):
        if i % 2:
            write_ply(folder / f"s{i}.ply", xyz, label, rgb)
        else:
            np.savez(folder / f"s{i}.npz", xyz=xyz, rgb=rgb, label=label)
    data = load_data(folder)
    assert isinstance(data, PointTaskData) and data.in_chans == 3
    assert [data.num_samples(s) for s in ("train", "val", "test")] == [7, 1, 2]
    np.savez(folder / "unlabelled.npz", xyz=np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="needs a per-point label"):
        load_data(folder)


def test_volt_trains_evaluates_and_predicts_a_ply_in_one_command(tmp_path):
    data = tiny_data()
    config = TrainConfig(task="scenes-points", model="volt-tiny", overrides=TINY_VOLT, steps=6,
                         batch_size=2, eval_every=3, lr=3e-3)  # fmt: skip
    result = fit(config, tmp_path / "run", data=data, progress=False)
    assert result.score.metric == "miou" and result.score.n == 3
    model = ndformer.load(tmp_path / "run")
    assert evaluate_model(model, data, "test") == result.score
    assert len(result.score.per_class) == 8
    known = [v for v in result.score.per_class if v is not None]
    assert result.score.value == pytest.approx(sum(known) / len(known))
    xyz, rgb, label = room_scene(700, 99)
    write_ply(tmp_path / "scene.ply", xyz, label, rgb)
    args = ["predict", str(tmp_path / "run"), str(tmp_path / "scene.ply"), "--out",
            str(tmp_path / "labels.ply")]  # fmt: skip
    out = CliRunner().invoke(build_app(), args)
    assert out.exit_code == 0, out.output
    assert "700 points" in out.output and "mIoU against the file's labels" in out.output
    labelled = read_points(tmp_path / "labels.ply")
    assert np.array_equal(labelled[0], xyz) and labelled[2].shape == (700,)
    assert labelled[2].min() >= 0 and labelled[2].max() < 8
    drawn = CliRunner().invoke(build_app(), [*args, "--plot", str(tmp_path / "labels.png")])
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "labels.png").stat().st_size > 10_000
    bad = CliRunner().invoke(build_app(), [*args[:3], "--out", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and "--out must end in .ply or .npz" in bad.output


def test_point_teacher_is_a_voxel_cnn_and_grid_models_are_refused(tmp_path):
    data = tiny_data()
    config = TrainConfig(task="scenes-points", model="volt-tiny", overrides=TINY_VOLT, steps=2,
                         batch_size=2, teacher="conv", teacher_steps=2)  # fmt: skip
    fit(config, tmp_path / "run", data=data, progress=False)
    teacher = json.loads((tmp_path / "run" / "teacher" / "run.json").read_text())
    assert teacher["status"] == "done" and teacher["train"]["model"] == "voxconv-tiny"
    grid = TrainConfig(task="scenes-points", model="vit-tiny", steps=2)
    with pytest.raises(
        TrainingError, match="takes grids but rooms holds point clouds; try --model volt-tiny"
    ):
        fit(grid, tmp_path / "grid", data=data, progress=False)


def test_arena_counts_attention_flops_on_point_tokens(tmp_path):
    from ndformer.arena.measure import attention_gflop

    data = tiny_data()
    model = create_model("volt-tiny", in_chans=3, num_classes=8, voxel_size=0.25, patch=2,
                         **TINY_VOLT)  # fmt: skip
    batch, _ = data.batch("test", [0, 1])
    first = PointBatch(*(t[batch.batch == 0] for t in (batch.xyz, batch.features, batch.batch)))
    tokens = model.token_layout(first).num_tokens
    expected = 2 * 4 * tokens**2 * (24 // 2) * 2  # blocks * 4 * pairs * head_dim * heads
    assert attention_gflop(model, batch) == pytest.approx(expected / 1e9)


def test_arena_compares_patterns_on_point_data(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, (xyz, rgb, label) in enumerate(scenes(8, 300)):
        np.savez(folder / f"s{i}.npz", xyz=xyz, rgb=rgb, label=label)
    out = tmp_path / "arena"
    args = ["arena", "--data", str(folder), "--model", "volt-tiny", "--patterns", "full",
            "--patterns", "serialized('hilbert', 8)", "--steps", "2", "--batch-size", "2",
            "--overrides", json.dumps(TINY_VOLT), "--recipe", "volt", "--ablate", "ema",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    with (out / "results.csv").open(newline="") as handle:
        flops = {r["pattern"]: float(r["attention_gflop"]) for r in csv.DictReader(handle)}
    assert set(flops) == {"full", "serialized('hilbert', 8)", "full - ema", "full (plain)"}
    assert "Recipe `volt` for every entry" in (out / "report.md").read_text()
    assert 0 < flops["serialized('hilbert', 8)"] < flops["full"]


@pytest.mark.slow
def test_volt_tiny_reaches_70_percent_miou_on_scenes_points(tmp_path):
    """The documented run (docs/points/report.md): about 12 minutes on 2 cores."""
    config = TrainConfig(task="scenes-points", model="volt-tiny", steps=800, batch_size=4)
    result = fit(config, tmp_path / "volt", progress=False)
    assert result.score.value >= 0.70, result.score


def test_voxconv_refuses_grids_too_large_to_build():
    model = create_model("voxconv-tiny", in_chans=0, num_classes=2, voxel_size=0.001)
    far = PointBatch(torch.tensor([[0.0, 0, 0], [40.0, 40, 40]]), torch.zeros(2, 0),
                     torch.zeros(2, dtype=torch.long))  # fmt: skip
    with pytest.raises(ValueError, match="raise voxel_size"):
        model(far)


def test_scenes_without_colours_train_and_predict(tmp_path):
    """xyz-only scans (no rgb) are point data with in_chans=0, for volt and the conv teacher."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, (xyz, _, label) in enumerate(scenes(8, 300)):
        np.savez(folder / f"s{i}.npz", xyz=xyz, label=label)
    data = load_data(folder)
    assert isinstance(data, PointTaskData) and data.in_chans == 0
    # the same scans without colours, on coarse voxels (the teacher's dense grid stays small)
    split = dict(train=scenes(6, 300), val=scenes(2, 300, 1), test=scenes(2, 300, 2))
    parts = {name: [(x, None, y) for x, _, y in items] for name, items in split.items()}
    data = from_scenes("rooms", parts, num_classes=len(SCENE_CLASSES), voxel_size=0.25, patch=2)
    assert data.in_chans == 0
    config = TrainConfig(task="scenes-points", model="volt-tiny", overrides=TINY_VOLT, steps=2,
                         batch_size=2, teacher="conv", teacher_steps=2)  # fmt: skip
    result = fit(config, tmp_path / "run", data=data, progress=False)
    assert result.score.metric == "miou"
    assert ndformer.load(tmp_path / "run").in_chans == 0
    xyz, _, _ = room_scene(400, 5)
    np.savez(tmp_path / "scan.npz", xyz=xyz)
    args = ["predict", str(tmp_path / "run"), str(tmp_path / "scan.npz"), "--out",
            str(tmp_path / "labels.npz")]  # fmt: skip
    out = CliRunner().invoke(build_app(), args)
    assert out.exit_code == 0, out.output
    assert read_points(tmp_path / "labels.npz")[2].shape == (400,)
