"""The training loop: AdamW, warmup + cosine, clipping, bf16, distillation, exact resume.

All randomness of step ``s`` (batch order, augmentation, stochastic depth) is
derived from ``(seed, s)``; with the optimizer state saved in ``state.pt`` a run
resumed at step ``s`` continues bit-exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..models import POINT_ARCHS, NdModel, create_model
from ..tasks import PointTaskData, TaskData, load_data, load_task
from ..tasks.points import IGNORE
from .metrics import Score, accuracy_score, confusion, miou_score

METRIC_COLUMNS = ["step", "lr", "loss", "train_metric", "samples_per_s", "val_metric"]


class TrainingError(ValueError):
    """Training cannot go on (bad data, NaN loss, ...); the last checkpoint is intact."""


@dataclass
class TrainConfig:
    """Settings of one training run (saved in ``run.json``; ``--resume`` requires equal ones).

    ``task`` names a generated/bundled task, ``data`` a user path (one of the two).
    ``patch`` defaults to the task's suggestion; ``overrides`` go to ``create_model``.
    ``teacher``: ``"conv"`` trains an N-D CNN first (in ``out/teacher``) and distills
    its logits, or the path of a finished run to use as the teacher.
    """

    task: str | None = None
    data: str | None = None
    model: str = "vit-tiny"
    pattern: str | list[str] | None = None
    patch: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    clip: float = 1.0
    amp: bool = False
    seed: int = 0
    eval_every: int = 0
    eval_samples: int = 1000
    augment: bool = True
    teacher: str | None = None
    teacher_steps: int | None = None
    distill_alpha: float = 0.5
    temperature: float = 2.0
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if (self.task is None) == (self.data is None):
            raise ValueError("give exactly one of task (--task) and data (--data)")
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(
                f"warmup (a fraction of the steps) must be in [0, 1), got {self.warmup}"
            )
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


Data = TaskData | PointTaskData


def resolve_data(config: TrainConfig, progress: bool = False) -> Data:
    """The task or user data a config names."""
    if config.data is not None:
        return load_data(config.data, seed=config.seed)
    return load_task(config.task, seed=config.seed, progress=progress)


def build_for(config: TrainConfig, data: Data) -> NdModel:
    """``config.model`` shaped for ``data`` (ndim, channels, classes, head, patch; the
    voxel size for point data)."""
    overrides: dict[str, Any] = dict(
        ndim=data.ndim,
        in_chans=data.in_chans,
        num_classes=data.num_classes,
        head=data.kind,
        patch=config.patch or data.patch,
    )
    if isinstance(data, PointTaskData):
        overrides["voxel_size"] = data.voxel_size
    if config.pattern is not None:
        overrides["pattern"] = config.pattern
    overrides.update(config.overrides)
    torch.manual_seed(config.seed)
    return create_model(config.model, **overrides)


def lr_at(config: TrainConfig, step: int) -> float:
    """Linear warmup over ``warmup * steps``, then cosine decay to 1% of ``lr``."""
    warm = int(config.warmup * config.steps)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, config.steps - warm)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63)


def batch_indices(config: TrainConfig, n: int, step: int) -> torch.Tensor:
    """The training-set indices of ``step``: epochs of seeded permutations, last partial dropped."""
    size = min(config.batch_size, n)
    per_epoch = n // size
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(
        n, generator=torch.Generator().manual_seed(_step_seed(config.seed, -epoch - 1))
    )
    return order[slot * size : (slot + 1) * size]


def num_samples(data: Data, split: str) -> int:
    """Samples (images, volumes or point-cloud scenes) in ``split``."""
    return data.num_samples(split) if isinstance(data, PointTaskData) else len(data.y[split])


def make_batch(data: Data, split: str, index, gen: torch.Generator | None = None):
    """(model input, labels) of the samples ``index`` of ``split``, augmented if ``gen`` is
    given: a normalised float batch for grids, a ``PointBatch`` (labels [N]) for points."""
    if isinstance(data, PointTaskData):
        return data.batch(split, index, gen)
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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if param.dim() < 2 or name.endswith(".bias") else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=plain, weight_decay=0.0)]


def _distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, labels: torch.Tensor
) -> torch.Tensor:
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(teacher / temperature, dim=1)
    per_item = F.kl_div(log_p, q, reduction="none").sum(1)
    labelled = labels != IGNORE
    return per_item[labelled].mean() * temperature**2


def train_metric(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the labelled outputs (per sample, pixel or point)."""
    labelled = labels != IGNORE
    return float((logits.argmax(1) == labels)[labelled].float().mean())


@torch.inference_mode()
def predict_scenes(model: NdModel, data: PointTaskData, split: str, limit: int | None = None):
    """Predicted labels of every scene of ``split`` (the first ``limit``): list of [n_i]."""
    model.eval()
    count = num_samples(data, split) if limit is None else min(limit, num_samples(data, split))
    out: list[torch.Tensor] = []
    for start in range(0, count, 4):
        batch, _ = data.batch(split, range(start, min(count, start + 4)))
        pred = model(batch).argmax(1)
        out += list(pred.split(torch.bincount(batch.batch).tolist()))
    return out


@torch.inference_mode()
def predict(model: NdModel, data: TaskData, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Predicted labels for raw inputs ``x`` [n, C, *spatial]: [n] or [n, *spatial]."""
    model.eval()
    out = [
        model(data.normalize(x[i : i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def evaluate_model(
    model: NdModel, data: Data, split: str = "test", limit: int | None = None
) -> Score:
    """Accuracy (Wilson CI) or mIoU (bootstrap CI, over samples or scenes) of ``model``
    on a split of ``data``; unlabelled points are not scored."""
    if isinstance(data, PointTaskData):
        classes = data.num_classes
        matrices = []
        for i, pred in enumerate(predict_scenes(model, data, split, limit)):
            label = data.scene(split, i)[2]
            labelled = label != IGNORE
            pairs = label[labelled] * classes + pred[labelled]
            matrices.append(torch.bincount(pairs, minlength=classes * classes))
        return miou_score(torch.stack(matrices).view(-1, classes, classes))
    x, y = data.x[split], data.y[split]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    pred = predict(model, data, x)
    if data.kind == "classification":
        return accuracy_score(int((pred == y).sum()), len(y))
    return miou_score(confusion(pred, y, data.num_classes))


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
