"""Predictions and test metrics of a trained model (with 95% confidence intervals)."""

from __future__ import annotations

import torch

from ..models import NdModel
from ..tasks.points import IGNORE
from .data import Data, PointTaskData, TaskData, num_samples
from .metrics import Score, accuracy_score, confusion, dice_score, miou_score


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
    """Accuracy (Wilson CI), or the task's segmentation metric (mIoU or mean Dice, with a
    bootstrap CI over samples or scenes) of ``model`` on a split of ``data``; unlabelled
    points are not scored."""
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
    matrices = confusion(pred, y, data.num_classes)
    return dice_score(matrices) if data.metric == "dice" else miou_score(matrices)
