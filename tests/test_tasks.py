"""Tasks: deterministic generation, what the labels mean, user files, clear errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy import ndimage

from ndformer.tasks import load_data, load_task
from ndformer.tasks.synthetic import PRIMITIVES, pathfinder, scenes3d, shapes3d


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NDFORMER_CACHE", str(tmp_path / "cache"))


def marker_centres(markers: np.ndarray) -> list[tuple[int, ...]]:
    labelled, count = ndimage.label(markers, structure=np.ones((3,) * markers.ndim))
    return [tuple(np.rint(c).astype(int)) for c in ndimage.center_of_mass(markers, labelled,
            range(1, count + 1))]  # fmt: skip


@pytest.mark.parametrize("ndim,size", [(2, 16), (2, 32), (3, 12)])
def test_pathfinder_positive_markers_are_joined_by_a_path(ndim, size):
    images, labels = pathfinder(200, size, ndim, "easy", seed=3)
    assert images.shape == (200, 2, *[size] * ndim) and set(labels) == {0, 1}
    joined = []
    for image, label in zip(images, labels):
        paths, _ = ndimage.label(image[0], structure=np.ones((3,) * ndim))
        blobs, count = ndimage.label(image[1], structure=np.ones((3,) * ndim))
        touched = [set(paths[blobs == b].tolist()) - {0} for b in range(1, count + 1)]
        # do the two markers touch one 8/26-connected path component?
        joined.append(count == 1 or bool(set.intersection(*touched)))
        if label == 1:
            assert joined[-1]  # (overlapping markers merge into one blob: count 1)
    joined = np.array(joined)
    # negatives are mostly disconnected (paths may cross, as in the original task)
    assert joined[labels == 0].mean() < 0.5


def test_pathfinder_marker_distance_does_not_give_the_label_away():
    images, labels = pathfinder(2000, 32, 2, "easy", seed=0)
    distance = []
    for image in images:
        centres = marker_centres(image[1])
        distance.append(np.linalg.norm(np.subtract(*centres[:2])) if len(centres) == 2 else 0)
    distance = np.array(distance)
    pos, neg = distance[labels == 1].mean(), distance[labels == 0].mean()
    assert abs(pos - neg) < 0.1 * pos


def test_generated_tasks_are_deterministic_and_cached(tmp_path):
    first = load_task("pathfinder3d-12", seed=1)
    assert (tmp_path / "cache" / "tasks" / "pathfinder3d-12-seed1-v2.npz").exists()
    again = load_task("pathfinder3d-12", seed=1, cache=False)
    other = load_task("pathfinder3d-12", seed=2, cache=False)
    for split in ("train", "val", "test"):
        assert torch.equal(first.x[split], again.x[split])
        assert torch.equal(first.y[split], again.y[split])
    assert not torch.equal(first.x["train"], other.x["train"])
    assert first.ndim == 3 and first.in_chans == 2 and first.num_classes == 2


def test_shapes_and_scenes():
    volumes, kinds = shapes3d(60, 12, seed=0)
    assert volumes.shape == (60, 1, 12, 12, 12) and set(kinds) <= set(range(len(PRIMITIVES)))
    assert len(PRIMITIVES) >= 6 and len(set(kinds)) == len(PRIMITIVES)
    volumes, labels = scenes3d(10, 16, seed=0)
    assert volumes.shape == (10, 1, 16, 16, 16) and labels.shape == (10, 16, 16, 16)
    assert labels.min() == 0 and labels.max() <= len(PRIMITIVES)
    for sample in labels:  # every scene has at least two labelled objects' voxels
        assert len(np.unique(sample)) >= 2
    scenes = load_task("scenes3d-12")
    assert scenes.kind == "segmentation" and scenes.metric == "miou"


def test_digits_is_real_data():
    digits = load_task("digits")
    assert digits.spatial == (8, 8) and digits.num_classes == 10
    assert sum(len(digits.y[s]) for s in ("train", "val", "test")) == 1797


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'pathfinder'"):
        load_task("pathfinder")
    with pytest.raises(ValueError, match="size must be >= 8"):
        load_task("pathfinder2d-4")


def write_npz(path, spatial=(10, 10), n=(40, 10, 10), channels_last=None, dense=False, top=2):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, *spatial) if channels_last is None else (count, *spatial, channels_last)
        arrays[f"{split}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        label_shape = (count, *spatial) if dense else (count, 1)
        arrays[f"{split}_labels"] = rng.integers(0, top, label_shape)
    np.savez(path, **arrays)
    return path


def test_medmnist_npz_layouts(tmp_path):
    two_d = load_data(write_npz(tmp_path / "a.npz"))
    assert (two_d.ndim, two_d.in_chans, two_d.kind) == (2, 1, "classification")
    rgb = load_data(write_npz(tmp_path / "b.npz", channels_last=3))
    assert (rgb.ndim, rgb.in_chans) == (2, 3)
    three_d = load_data(write_npz(tmp_path / "c.npz", spatial=(6, 7, 8)))
    assert (three_d.ndim, three_d.in_chans, three_d.spatial) == (3, 1, (6, 7, 8))
    dense = load_data(write_npz(tmp_path / "d.npz", dense=True, top=4))
    assert dense.kind == "segmentation" and dense.num_classes == 4


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_data(tmp_path / "imgs")
    assert data.class_names == ["cats", "dogs"] and data.in_chans == 3
    assert data.spatial == (14, 12) or data.spatial == (12, 14)
    assert sum(len(data.y[s]) for s in ("train", "val", "test")) == 20


def test_nifti_csv(tmp_path):
    import nibabel

    rows = []
    for i in range(12):
        shape = (8, 9, 10) if i % 3 else (9, 9, 9)  # differing shapes are resized
        volume = np.random.default_rng(i).normal(size=shape).astype(np.float32)
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / f"v{i}.nii.gz")
        rows.append(dict(path=f"v{i}.nii.gz", label="tumour" if i % 2 else "healthy"))
    with (tmp_path / "list.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    data = load_data(tmp_path / "list.csv")
    assert data.ndim == 3 and data.class_names == ["healthy", "tumour"]
    assert data.spatial == (9, 9, 9)


def test_bad_user_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_data(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"missing arrays \['train_labels'"):
        load_data(tmp_path / "partial.npz")
    bad = write_npz(tmp_path / "bad.npz")
    arrays = dict(np.load(bad))
    arrays["test_labels"] = arrays["test_labels"] - 5
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=r"test_labels hold -5; labels must be >= 0"):
        load_data(bad)
    arrays = dict(np.load(write_npz(tmp_path / "b2.npz")))
    arrays["val_images"] = arrays["val_images"][:, :5]
    np.savez(tmp_path / "b2.npz", **arrays)
    with pytest.raises(ValueError, match=r"val_images .* do not match train_images"):
        load_data(tmp_path / "b2.npz")
