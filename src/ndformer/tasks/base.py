"""Task data held in memory, deterministic splits, and the on-disk cache of generated tasks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._cache import cache_root
from .._io import atomic_write
from ..errors import DataError

KINDS = ("classification", "segmentation")
SEGMENTATION_METRICS = ("miou", "dice")
#: Tokens per sample the patch suggestion for user data aims at, per number of axes
#: (3-D is held to 128: the dense layers of every token dominate a small model's step).
TOKEN_BUDGET = {1: 256, 2: 256, 3: 128, 4: 256}
SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """A labelled data set split into train / val / test, all tensors in memory.

    ``x[split]``: [n, in_chans, *spatial] (any dtype; ``normalize`` turns a batch into
    normalised float32); ``y[split]``: int64 [n] (classification) or [n, *spatial]
    (segmentation, per-voxel labels). Augmentation may flip along ``flip_axes`` and
    translate by up to ``max_shift`` voxels per axis (both keep the label); ``patch``
    is the suggested patch size.
    """

    name: str
    kind: str
    num_classes: int
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    patch: int = 4
    flip_axes: tuple[int, ...] = ()
    max_shift: int = 0
    class_names: list[str] | None = None
    #: Segmentation only: ``miou`` or ``dice`` (mean foreground Dice per case, class 0
    #: the background), the metric ``evaluate`` reports.
    segmentation_metric: str = "miou"
    mean: torch.Tensor = field(init=False, repr=False)
    std: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if self.segmentation_metric not in SEGMENTATION_METRICS:
            raise ValueError(
                f"segmentation_metric must be one of {SEGMENTATION_METRICS},"
                f" got {self.segmentation_metric!r}"
            )
        for split in SPLITS:
            if split not in self.x or split not in self.y:
                raise ValueError(f"task {self.name!r} has no {split!r} split")
            check_labels(self, split)
        train = self.x["train"].float()
        reduce = [0, *range(2, train.dim())]
        self.mean = train.mean(dim=reduce).view(1, -1, *[1] * self.ndim)
        self.std = train.std(dim=reduce).clamp_min(1e-6).view(1, -1, *[1] * self.ndim)

    @property
    def ndim(self) -> int:
        return self.x["train"].dim() - 2

    @property
    def in_chans(self) -> int:
        return self.x["train"].shape[1]

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.x["train"].shape[2:])

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "classification" else self.segmentation_metric

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A raw batch [b, C, *spatial] -> float32, normalised with the train split's statistics."""
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {len(self.y[s])}" for s in SPLITS)
        return (
            f"{self.name}: {self.kind}, {self.num_classes} classes, {self.ndim}-D"
            f" {'x'.join(map(str, self.spatial))}, {self.in_chans} channel(s); {sizes}"
        )


def check_labels(task: TaskData, split: str) -> None:
    """Clear errors for mismatched shapes and labels outside [0, num_classes)."""
    x, y = task.x[split], task.y[split]
    if x.dim() < 3:
        raise ValueError(
            f"{task.name}: {split} images must be [n, C, *spatial], got {tuple(x.shape)}"
        )
    expected = (x.shape[0],) if task.kind == "classification" else (x.shape[0], *x.shape[2:])
    if tuple(y.shape) != expected:
        raise ValueError(
            f"{task.name}: {split} labels have shape {tuple(y.shape)}, expected {expected}"
            f" for {task.kind} of images {tuple(x.shape)}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= task.num_classes):
        raise ValueError(
            f"{task.name}: {split} labels range over [{int(y.min())}, {int(y.max())}], outside"
            f" [0, {task.num_classes - 1}] for {task.num_classes} classes"
        )


def check_user_data(task: TaskData, source: str) -> TaskData:
    """Checks of data read from the user's files (``source`` names them): every split
    non-empty, finite values, and every class present in the train split."""
    for split in SPLITS:
        if len(task.y[split]) == 0:
            raise DataError(f"{source}: the {split} split is empty")
        x = task.x[split]
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"{source}: {split} images hold {bad} NaN or infinite value(s)")
    if task.kind == "classification":
        counts = torch.bincount(task.y["train"], minlength=task.num_classes)
        empty = [i for i, c in enumerate(counts.tolist()) if c == 0]
        if empty:
            names = task.class_names or [str(i) for i in range(task.num_classes)]
            raise DataError(
                f"{source}: class(es) {[names[i] for i in empty]} have no train samples"
                f" (labels must be 0..{task.num_classes - 1}, each with examples in train)"
            )
    return task


def split_indices(n: int, seed: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, np.ndarray]:
    """A deterministic random split of ``range(n)`` into train / val / test; with
    ``n >= 3`` no split is empty."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    if n >= 3:
        n_val = max(1, n_val)
        n_train = max(1, min(n_train, n - n_val - 1))
    parts = np.split(order, [n_train, n_train + n_val])
    return dict(zip(SPLITS, parts, strict=True))


def cache_dir() -> Path:
    """Where generated tasks are cached: ``$NDFORMER_CACHE/tasks`` (default
    ``~/.cache/ndformer/tasks``)."""
    return cache_root() / "tasks"


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (compressed) via a temporary file and an atomic rename."""
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def cached_arrays(
    key: str, make: Callable[[], dict[str, np.ndarray]], use_cache: bool = True
) -> dict[str, np.ndarray]:
    """Load ``key`` from the cache, or ``make()`` it and cache it (atomically)."""
    path = cache_dir() / f"{key}.npz"
    if use_cache and path.exists():
        try:
            with np.load(path) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable cache: regenerate
    arrays = make()
    if use_cache:
        atomic_save_npz(path, arrays)
    return arrays


@contextmanager
def progress_steps(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (if ``enabled`` and rich is installed); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    try:
        from rich.progress import Progress
    except ImportError:
        yield lambda n: None
        return
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def tokens_for(spatial: tuple[int, ...], patch: int | tuple[int, ...]) -> int:
    """Patch tokens of a sample: ``prod(ceil(size / patch))`` over the axes."""
    patches = patch if isinstance(patch, tuple) else (patch,) * len(spatial)
    return math.prod(-(-s // p) for s, p in zip(spatial, patches, strict=True))


def suggest_patch(spatial: tuple[int, ...], budget: int | None = None) -> int:
    """The smallest patch size giving at most ``budget`` tokens (default
    ``TOKEN_BUDGET[len(spatial)]``) on a grid of ``spatial`` voxels: 1 if the grid is
    small enough already."""
    budget = budget or TOKEN_BUDGET.get(len(spatial), 256)
    for p in range(1, max(spatial) + 1):
        if tokens_for(spatial, p) <= budget:
            return p
    return max(spatial)
