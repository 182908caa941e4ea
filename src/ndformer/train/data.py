"""Data for training: the task or user data a config names, batches, augmentation, and
the model shaped for the data.

All randomness of step ``s`` (batch order, augmentation) derives from ``(seed, s)``
through ``step_seed``, so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import MODELS, POINT_ARCHS, NdModel, create_model
from ..models.config import has_field
from ..tasks import PointTaskData, TaskData, load_data, load_task
from .config import TrainConfig, TrainingError

Data = TaskData | PointTaskData


def resolve_data(config: TrainConfig, progress: bool = False) -> Data:
    """The task or user data a config names."""
    if config.data is not None:
        return load_data(config.data, seed=config.seed)
    return load_task(config.task, seed=config.seed, progress=progress)


def build_for(config: TrainConfig, data: Data) -> NdModel:
    """``config.model`` shaped for ``data`` (ndim, channels, classes, head, patch; the
    voxel size for point data)."""
    arch = MODELS.get(config.model, {}).get("arch")
    points = isinstance(data, PointTaskData)
    if arch is not None and points != (arch in POINT_ARCHS):
        takes, given, hint = ("grids", "point clouds", "volt-tiny") if points else (
            "point clouds", "grids", "vit-tiny")  # fmt: skip
        raise TrainingError(
            f"--model {config.model} takes {takes} but {data.name} holds {given};"
            f" try --model {hint}"
        )
    overrides: dict[str, Any] = dict(
        ndim=data.ndim,
        in_chans=data.in_chans,
        num_classes=data.num_classes,
        head=data.kind,
        patch=data.patch if config.patch is None else config.patch,
    )
    if isinstance(data, PointTaskData) and has_field(config.model, "voxel_size"):
        overrides["voxel_size"] = data.voxel_size
    if config.pattern is not None:
        overrides["pattern"] = config.pattern
    if config.teacher is not None and config.distill == "hard":
        if not has_field(config.model, "distill_head"):
            raise TrainingError(f"--distill hard trains a second head, which {config.model} has"
                                " not (volt models have it); use --distill soft")  # fmt: skip
        overrides["distill_head"] = True
    overrides.update(config.overrides)
    torch.manual_seed(config.seed)
    return create_model(config.model, **overrides)


def step_seed(seed: int, step: int) -> int:
    """The seed of everything random in ``step`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63)


def batch_indices(config: TrainConfig, n: int, step: int) -> torch.Tensor:
    """The training-set indices of ``step``: epochs of seeded permutations, last partial dropped."""
    size = min(config.batch_size, n)
    per_epoch = n // size
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(
        n, generator=torch.Generator().manual_seed(step_seed(config.seed, -epoch - 1))
    )
    return order[slot * size : (slot + 1) * size]


def num_samples(data: Data, split: str) -> int:
    """Samples (images, volumes or point-cloud scenes) in ``split``."""
    return data.num_samples(split) if isinstance(data, PointTaskData) else len(data.y[split])


def make_batch(data: Data, split: str, index, gen: torch.Generator | None = None,
               mix: float = 0.0, instance_aug: float = 0.0):  # fmt: skip
    """(model input, labels) of the samples ``index`` of ``split``, augmented if ``gen`` is
    given: a normalised float batch for grids, a ``PointBatch`` (labels [N]) for points
    (each object moved or dropped with probability ``instance_aug`` first, pairs of
    scenes mixed into one with probability ``mix`` last)."""
    if isinstance(data, PointTaskData):
        return data.batch(split, index, gen, mix, instance_aug)
    if instance_aug and gen is not None:
        raise TrainingError(f"--instance-aug moves objects of point scenes; {data.name} holds"
                            " grids")  # fmt: skip
    x, y = data.x[split][index].float(), data.y[split][index]
    if gen is not None:
        x, y = augment(data, x, y, gen)
    return data.normalize(x), y


def augment(data: TaskData, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
    """Random label-preserving flips along ``data.flip_axes`` and translations of up to
    ``data.max_shift`` voxels per axis (zero fill), drawn per sample from ``gen``."""
    if data.max_shift:
        s = data.max_shift
        shifts = torch.randint(-s, s + 1, (x.shape[0], data.ndim), generator=gen).tolist()
        x = _translate(x, shifts, 2)
        if data.kind == "segmentation":
            y = _translate(y, shifts, 1)
    for axis in data.flip_axes:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        if not flip.any():
            continue
        x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(2 + axis), x)
        if data.kind == "segmentation":
            y = torch.where(flip.view(-1, *[1] * (y.dim() - 1)), y.flip(1 + axis), y)
    return x, y


def _translate(x: torch.Tensor, shifts: list[list[int]], first_axis: int) -> torch.Tensor:
    """Shift sample i of ``x`` by ``shifts[i]`` along the spatial axes, filling with zeros."""
    out = torch.zeros_like(x)
    for i, shift in enumerate(shifts):
        src, dst = [i], [i]
        for axis, d in enumerate(shift):
            size = x.shape[first_axis + axis]
            src.append(slice(max(0, -d), size - max(0, d)))
            dst.append(slice(max(0, d), size - max(0, -d)))
        if first_axis == 2:
            src.insert(1, slice(None))
            dst.insert(1, slice(None))
        out[tuple(dst)] = x[tuple(src)]
    return out


def check_model_fits(model: NdModel, data: Data) -> None:
    c = model.config
    problems = []
    points = isinstance(data, PointTaskData)
    if points != (c.arch in POINT_ARCHS):
        problems.append(
            f"arch {c.arch!r} takes {'point clouds' if not points else 'grids'} but the data are"
            f" {'point clouds (try volt-tiny)' if points else 'grids'}"
        )
    if c.ndim != data.ndim:
        problems.append(f"ndim {c.ndim} vs the data's {data.ndim}")
    if c.in_chans != data.in_chans:
        problems.append(f"in_chans {c.in_chans} vs the data's {data.in_chans} channels")
    if c.num_classes != data.num_classes:
        problems.append(f"num_classes {c.num_classes} vs the data's {data.num_classes}")
    if c.head != data.kind:
        problems.append(f"head {c.head!r} vs the data's task {data.kind!r}")
    if problems:
        raise TrainingError(
            f"model {c.name or c.arch} does not fit {data.name}: {'; '.join(problems)}"
        )
