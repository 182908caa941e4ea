"""Volt's instance augmentation: instance ids of generated rooms, objects moved rigidly
or dropped with their labels, structure untouched, off by default, the training switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndformer.arena.recipes import RECIPES
from ndformer.tasks.point_augment import InstanceAugment
from ndformer.tasks.points import from_scenes
from ndformer.tasks.scenes import FLOOR, SCENE_CLASSES, WALL, room_scene
from ndformer.train import TrainConfig, fit
from ndformer.train.data import make_batch

TINY_VOLT = dict(depth=2, dim=24, heads=2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


def scene(points: int = 1500, seed: int = 3):
    xyz, rgb, label, ids = room_scene(points, seed, instances=True)
    return (torch.from_numpy(xyz), torch.from_numpy(rgb).float() / 255,
            torch.from_numpy(label), torch.from_numpy(ids))  # fmt: skip


def tiny_data(points: int = 600):
    def rooms(count, seed):
        return [room_scene(points, seed * 1000 + i, instances=True) for i in range(count)]

    parts = dict(train=rooms(6, 0), val=rooms(2, 1), test=rooms(3, 2))
    return from_scenes("rooms", parts, num_classes=len(SCENE_CLASSES), voxel_size=0.25, patch=2)


def test_instance_ids_leave_the_room_unchanged_and_name_each_piece():
    for seed in range(4):
        plain = room_scene(2000, seed)
        *same, ids = room_scene(2000, seed, instances=True)
        assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))
        label = same[2]
        assert ids.dtype == np.int32 and ids.shape == label.shape
        assert set(ids[label == FLOOR].tolist()) == {0}
        assert set(ids[label == WALL].tolist()) <= {1, 2, 3, 4}
        furniture = label > WALL
        assert (ids[furniture] >= 5).all() and (ids[~furniture] < 5).all()
        for piece in np.unique(ids[furniture]):  # one class per piece, pieces numbered densely
            assert len(np.unique(label[ids == piece])) == 1
        assert np.unique(ids[furniture]).max() - 4 >= len(np.unique(ids[furniture]))


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), x.double())


def test_each_moved_instance_moves_rigidly_and_the_rest_stays_bit_for_bit():
    xyz, rgb, label, ids = scene()
    augment = InstanceAugment(drop=0.0, colour_dropout=0.0)
    out, rgb2, label2, ids2 = augment(xyz, rgb, label, ids, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(label2, label) and torch.equal(ids2, ids) and torch.equal(rgb2, rgb)
    structural = label <= WALL
    assert torch.equal(out[structural], xyz[structural])
    moved = untouched = 0
    for piece in ids[~structural].unique():
        at = ids == piece
        if torch.equal(out[at], xyz[at]):
            untouched += 1
            continue
        moved += 1
        before, after = _pairwise(xyz[at]), _pairwise(out[at])
        factor = after.sum() / before.sum()  # one scale factor per instance
        assert 0.9 - 1e-6 <= factor <= 1.1 + 1e-6
        torch.testing.assert_close(after, factor * before, atol=1e-5, rtol=1e-5)
        shift = out[at].mean(0)[:2] - xyz[at].mean(0)[:2]  # turned about its own base
        assert shift.abs().max() <= 0.2 + 1e-4
        assert abs(float(out[at][:, 2].min() - xyz[at][:, 2].min())) < 1e-5  # still stands
    assert moved and untouched  # probability 0.5 per piece, on this seed


def test_dropped_instances_vanish_with_their_labels():
    xyz, rgb, label, ids = scene()
    gen = torch.Generator().manual_seed(0)
    out, _, label2, ids2 = InstanceAugment(drop=1.0)(xyz, rgb, label, ids, 0.5, gen)
    kept = torch.isin(ids, ids2.unique())
    assert kept.sum() < len(ids) and (label[~kept] > WALL).all()
    assert torch.equal(label2, label[kept]) and torch.equal(ids2, ids[kept])
    assert torch.equal(out, xyz[kept])  # survivors untouched: every selected one dropped
    everything = InstanceAugment(drop=1.0)(xyz, rgb, label, ids, 1.0, gen)
    assert (everything[2] <= WALL).all() and torch.equal(everything[0], xyz[label <= WALL])


def test_colour_dropout_zeroes_a_scenes_colours_only():
    xyz, rgb, label, ids = scene()
    out = InstanceAugment(colour_dropout=1.0)(xyz, rgb, label, ids, 0.0, torch.Generator())
    assert torch.equal(out[0], xyz) and torch.equal(out[2], label) and not out[1].any()


def test_instance_augmentation_is_deterministic_and_off_by_default():
    data = tiny_data()
    runs = [make_batch(data, "train", [0, 1, 2], torch.Generator().manual_seed(5), 0.0, 0.7)
            for _ in range(2)]  # fmt: skip
    assert torch.equal(runs[0][0].xyz, runs[1][0].xyz) and torch.equal(runs[0][1], runs[1][1])
    plain = make_batch(data, "train", [0, 1, 2], torch.Generator().manual_seed(5))
    off = make_batch(data, "train", [0, 1, 2], torch.Generator().manual_seed(5), 0.0, 0.0)
    assert torch.equal(plain[0].xyz, off[0].xyz) and torch.equal(plain[1], off[1])
    assert torch.equal(plain[0].features, off[0].features)
    assert TrainConfig(task="scenes-points").instance_aug == 0.0


def test_the_setting_is_checked_and_scenes_without_ids_only_lose_colours(tmp_path):
    with pytest.raises(ValueError, match=r"instance_aug \(a probability\) must be in \[0, 1\]"):
        TrainConfig(task="scenes-points", instance_aug=1.5)
    data = from_scenes("rooms", dict(train=[room_scene(300, s) for s in range(2)],
                                     val=[room_scene(300, 9)], test=[room_scene(300, 8)]),
                       num_classes=len(SCENE_CLASSES))  # fmt: skip
    assert data.instance is None
    for seed in range(40):  # colour dropout (p 0.2 per scene) happens on some seed
        batch, _ = make_batch(data, "train", [0], torch.Generator().manual_seed(seed), 0.0, 0.5)
        if not batch.features.any():
            break
    else:
        raise AssertionError("colours were never dropped")
    xyz, rgb, label, _ = scene(300)
    out = InstanceAugment(colour_dropout=0.0)(xyz, rgb, label, None, 1.0, torch.Generator())
    assert torch.equal(out[0], xyz) and torch.equal(out[1], rgb) and out[3] is None
    assert RECIPES["volt"]["instances"].key == "instance_aug"


def test_a_run_trains_with_instance_augmentation(tmp_path):
    config = TrainConfig(task="scenes-points", model="volt-tiny", overrides=TINY_VOLT, steps=2,
                         batch_size=2, instance_aug=0.5, mix=0.5)  # fmt: skip
    result = fit(config, tmp_path / "run", data=tiny_data(), progress=False)
    assert result.score.metric == "miou"


def test_a_run_saved_before_the_setting_existed_resumes(tmp_path):
    from ndformer.train.checkpoint import read_state, save_state

    config = TrainConfig(task="scenes-points", model="volt-tiny", overrides=TINY_VOLT, steps=2,
                         batch_size=2)  # fmt: skip
    data = tiny_data(300)
    fit(config, tmp_path / "run", data=data, progress=False, stop_after=1)
    state = read_state(tmp_path / "run")
    del state["config"]["instance_aug"]  # as a run of an older ndformer saved it
    save_state(tmp_path / "run" / "state.pt", state)
    assert fit(config, tmp_path / "run", data=data, resume=True, progress=False).steps == 2
