"""Tasks: ``load_task(name, seed)`` for generated and bundled data, ``load_data(path)`` for files.

Generated tasks are deterministic from the seed and cached on disk
(``$NDFORMER_CACHE``, default ``~/.cache/ndformer``); nothing is downloaded.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (real data, 10 classes).
- ``pathfinder{2,3}d-{size}[-{easy,medium,hard}]``: are the two markers on the same path?
- ``shapes3d[-{size}]``: which of 6 primitives is in the volume.
- ``scenes3d[-{size}]``: per-voxel labels of several primitives (mIoU).
- ``organs3d[-{size}]``: abdominal-like volumes (default 32^3), per-voxel labels of
  liver, kidneys and lesions with class imbalance, texture, noise and a bias field
  (mean Dice, the medical-segmentation metric).
- ``blobs4d[-{size}[x{frames}]]``: volumes of size^3 (default 16) over ``frames`` (default
  8) with Gaussian blobs drifting along one of 6 directions, the class (4-D).
- ``scenes-points[-{points}]``: furnished rooms as point clouds, per-point labels of
  8 classes (mIoU); ``points`` (default 10000) is the smallest scene, the largest
  has 1.6 times as many.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from .base import SPLITS, TaskData, cached_arrays, progress_steps, split_indices
from .files import load_data
from .organs import ORGAN_CLASSES, organs3d
from .points import PointTaskData, concat_scenes, read_points, write_ply
from .scenes import SCENE_CLASSES, room_scene
from .series import DIRECTIONS, moving_blobs
from .synthetic import PATHFINDER_LEVELS, PRIMITIVES, pathfinder, scenes3d, shapes3d

#: (train, val, test) sample counts of the generated tasks.
SIZES = {
    "pathfinder": (12000, 1000, 2000),
    "shapes3d": (3000, 500, 1500),
    "scenes3d": (1200, 200, 400),
    "organs3d": (240, 40, 80),
    "scenes-points": (320, 40, 100),
    "blobs4d": (1000, 200, 300),
}
#: Bump when a generator changes, so stale caches are not reused.
GENERATOR_VERSION = 2
#: The same for ``scenes-points`` alone (3: instance ids stored beside the labels).
POINTS_VERSION = 3

TASK_PATTERNS = {
    "digits": r"digits",
    "pathfinder": r"pathfinder(?P<ndim>[1-4])d-(?P<size>\d+)(?:-(?P<level>easy|medium|hard))?",
    "shapes3d": r"shapes3d(?:-(?P<size>\d+))?",
    "scenes3d": r"scenes3d(?:-(?P<size>\d+))?",
    "organs3d": r"organs3d(?:-(?P<size>\d+))?",
    "scenes-points": r"scenes-points(?:-(?P<points>\d+))?",
    "blobs4d": r"blobs4d(?:-(?P<size>\d+)(?:x(?P<frames>\d+))?)?",
}


def list_tasks() -> list[str]:
    """Examples of valid task names (sizes and levels are free parameters)."""
    return [
        "digits",
        "pathfinder2d-32",
        "pathfinder3d-16",
        "shapes3d-16",
        "scenes3d-24",
        "organs3d",
        "scenes-points",
        "blobs4d-16x8",
    ]


def _generate(make, counts, seed: int, progress: bool, label: str):
    """Generate the three splits in chunks (with a progress bar), seeds derived per chunk."""
    chunk = 500
    arrays: dict[str, np.ndarray] = {}
    with progress_steps(f"generating {label}", sum(counts), progress) as advance:
        for split_id, (split, count) in enumerate(zip(SPLITS, counts, strict=True)):
            xs, ys = [], []
            for start in range(0, count, chunk):
                n = min(chunk, count - start)
                x, y = make(n, seed * 1_000_003 + split_id * 10_007 + start)
                xs.append(x)
                ys.append(y)
                advance(n)
            arrays[f"{split}_x"], arrays[f"{split}_y"] = np.concatenate(xs), np.concatenate(ys)
    return arrays


def load_task(
    name: str, seed: int = 0, progress: bool = False, cache: bool = True
) -> TaskData | PointTaskData:
    """The task ``name`` (see the module docstring), deterministic from ``seed``."""
    for kind, regex in TASK_PATTERNS.items():  # noqa: B007 (kind is used after the loop)
        match = re.fullmatch(regex, name)
        if match:
            break
    else:
        raise ValueError(
            f"unknown task {name!r}; examples: {', '.join(list_tasks())} (or --data PATH)"
        )
    groups = match.groupdict()
    if kind == "digits":
        return _digits(seed)
    if kind == "scenes-points":
        return _scenes_points(name, int(groups["points"] or 10000), seed, progress, cache)
    if kind == "organs3d":
        size = int(groups["size"] or 32)
        if size < 16:
            raise ValueError(f"organs3d size must be >= 16, got {size} in {name!r}")

        def make(n, s):
            return organs3d(n, size, s)

        extra = dict(
            num_classes=len(ORGAN_CLASSES),
            patch=4,
            flip_axes=(0, 1, 2),
            class_names=list(ORGAN_CLASSES),
            segmentation_metric="dice",
        )
    elif kind == "blobs4d":
        size, frames = int(groups["size"] or 16), int(groups["frames"] or 8)
        if size < 4 or frames < 2:
            raise ValueError(f"blobs4d needs size >= 4 and frames >= 2, got {name!r}")

        def make(n, s):
            return moving_blobs(n, size, frames, s)

        # no flips: flipping x, y, z or t reverses a direction, i.e. changes the class
        extra = dict(num_classes=len(DIRECTIONS), patch=2 if size < 16 else 4,
                     class_names=[d[0] for d in DIRECTIONS])  # fmt: skip
    elif kind == "pathfinder":
        ndim, size, level = int(groups["ndim"]), int(groups["size"]), groups["level"] or "easy"
        if size < 8:
            raise ValueError(f"pathfinder size must be >= 8, got {size} in {name!r}")

        def make(n, s):
            return pathfinder(n, size, ndim, level, s)

        extra = dict(
            num_classes=2,
            patch=4 if ndim <= 2 else 2,
            flip_axes=tuple(range(ndim)),
            class_names=["different paths", "same path"],
        )
    else:
        size = int(groups["size"] or (16 if kind == "shapes3d" else 24))
        generator = shapes3d if kind == "shapes3d" else scenes3d

        def make(n, s):
            return generator(n, size, s)

        names = [p.name for p in PRIMITIVES]
        extra = dict(
            num_classes=len(names) + (kind == "scenes3d"),
            patch=2,
            flip_axes=(0, 1, 2),
            class_names=names if kind == "shapes3d" else ["background", *names],
        )
    key = f"{name}-seed{seed}-v{GENERATOR_VERSION}"
    arrays = cached_arrays(
        key, lambda: _generate(make, SIZES[kind], seed, progress, name), use_cache=cache
    )
    return TaskData(
        name=name,
        kind="segmentation" if kind in ("scenes3d", "organs3d") else "classification",
        x={s: torch.from_numpy(arrays[f"{s}_x"]) for s in SPLITS},
        y={s: torch.from_numpy(arrays[f"{s}_y"]).long() for s in SPLITS},
        **extra,
    )


def _scenes_points(name: str, points: int, seed: int, progress: bool, cache: bool):
    if points < 1000:
        raise ValueError(f"scenes-points needs at least 1000 points per scene, got {points}")

    def make():
        arrays = {}
        with progress_steps(f"generating {name}", sum(SIZES["scenes-points"]), progress) as step:
            for split_id, (split, count) in enumerate(
                zip(SPLITS, SIZES["scenes-points"], strict=True)
            ):
                items = []
                for i in range(count):
                    scene_seed = seed * 1_000_003 + split_id * 10_007 + i
                    size = np.random.default_rng(scene_seed).integers(points, int(1.6 * points) + 1)
                    items.append(room_scene(int(size), scene_seed, instances=True))
                    step(1)
                for key, value in concat_scenes(items).items():
                    arrays[f"{split}_{key}"] = value
        return arrays

    key = f"{name}-seed{seed}-v{POINTS_VERSION}"
    arrays = cached_arrays(key, make, use_cache=cache)
    return PointTaskData(
        name=name,
        num_classes=len(SCENE_CLASSES),
        xyz={s: torch.from_numpy(arrays[f"{s}_xyz"]) for s in SPLITS},
        rgb={s: torch.from_numpy(arrays[f"{s}_rgb"]) for s in SPLITS},
        label={s: torch.from_numpy(arrays[f"{s}_label"]) for s in SPLITS},
        offsets={s: torch.from_numpy(arrays[f"{s}_offsets"]) for s in SPLITS},
        instance={s: torch.from_numpy(arrays[f"{s}_instance"]) for s in SPLITS},
        class_names=list(SCENE_CLASSES),
    )


def _digits(seed: int) -> TaskData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ValueError("task 'digits' needs scikit-learn: pip install 'ndformer[all]'") from error
    data = load_digits()
    images = data.images.astype(np.float32)[:, None]  # [1797, 1, 8, 8], values 0..16
    parts = split_indices(len(images), seed, fractions=(0.6, 0.15, 0.25))
    return TaskData(
        name="digits",
        kind="classification",
        num_classes=10,
        x={s: torch.from_numpy(images[i]) for s, i in parts.items()},
        y={s: torch.from_numpy(data.target[i]).long() for s, i in parts.items()},
        patch=2,
        max_shift=1,
        class_names=[str(d) for d in range(10)],
    )


__all__ = [
    "PATHFINDER_LEVELS",
    "PointTaskData",
    "TaskData",
    "list_tasks",
    "load_data",
    "load_task",
    "read_points",
    "write_ply",
]
