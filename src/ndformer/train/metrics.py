"""Evaluation metrics with 95% confidence intervals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Score:
    """A metric value with its 95% confidence interval over ``n`` test samples."""

    metric: str
    value: float
    low: float
    high: float
    n: int
    #: mIoU / Dice: each class's IoU or mean Dice (None for a class in neither target nor
    #: prediction).
    per_class: tuple[float | None, ...] | None = None

    def __str__(self) -> str:
        return (
            f"{self.metric} {100 * self.value:.2f}% (95% CI {100 * self.low:.2f}-"
            f"{100 * self.high:.2f}%, n={self.n})"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_score(correct: int, n: int) -> Score:
    """Accuracy with the Wilson score interval."""
    if n == 0:
        return Score("accuracy", float("nan"), float("nan"), float("nan"), 0)
    p = correct / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return Score("accuracy", p, max(0.0, centre - half), min(1.0, centre + half), n)


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-sample confusion matrices: pred/target [n, ...] -> int64 [n, classes, classes]."""
    n = target.shape[0]
    index = (target.reshape(n, -1) * classes + pred.reshape(n, -1)).long()
    out = torch.zeros(n, classes * classes, dtype=torch.long)
    out.scatter_add_(1, index, torch.ones_like(index))
    return out.view(n, classes, classes)


def _miou(matrix: torch.Tensor) -> torch.Tensor:
    """Mean IoU over the classes that occur (in target or prediction); matrix [..., C, C]."""
    tp = matrix.diagonal(dim1=-2, dim2=-1).double()
    union = matrix.sum(-1).double() + matrix.sum(-2).double() - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp))
    return iou.sum(-1) / present.sum(-1).clamp_min(1)


def miou_score(matrices: torch.Tensor, resamples: int = 1000, seed: int = 0) -> Score:
    """mIoU of the summed confusion ``matrices`` [n, C, C], CI by bootstrap over samples."""
    n = matrices.shape[0]
    value = float(_miou(matrices.sum(0)))
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(n, (resamples, n), generator=gen)
    weights = torch.zeros(resamples, n, dtype=torch.double)
    weights.scatter_add_(1, picks, torch.ones(resamples, n, dtype=torch.double))
    boot = _miou(torch.einsum("rn,nij->rij", weights, matrices.double()))
    low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
    return Score("miou", value, low, high, n, class_ious(matrices.sum(0)))


def class_ious(matrix: torch.Tensor) -> tuple[float | None, ...]:
    """IoU of every class from one confusion matrix [C, C] (rows: target); None where the
    class occurs in neither target nor prediction."""
    tp = matrix.diagonal().double()
    union = matrix.sum(0).double() + matrix.sum(1).double() - tp
    return tuple(float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True))


def class_dice(matrices: torch.Tensor) -> torch.Tensor:
    """Dice ``2 TP / (2 TP + FP + FN)`` of every class in every sample: matrices
    [n, C, C] (rows: target) -> float64 [n, C], NaN where the class is in neither the
    sample's target nor its prediction (a class predicted but absent scores 0)."""
    tp = matrices.diagonal(dim1=-2, dim2=-1).double()
    both = matrices.sum(-1).double() + matrices.sum(-2).double()  # 2 TP + FP + FN
    return torch.where(both > 0, 2 * tp / both.clamp_min(1), torch.full_like(tp, float("nan")))


def dice_score(
    matrices: torch.Tensor, background: int | None = 0, resamples: int = 1000, seed: int = 0
) -> Score:
    """Mean Dice, the medical-segmentation metric: per case (sample), the mean Dice over
    the classes other than ``background`` that occur in its target or prediction; then
    the mean over cases (cases with no such class are left out). The 95% CI is a
    bootstrap over cases. ``per_class``: each class's Dice averaged over the cases where
    it occurs (background included, for reference). matrices: per-case confusion [n, C, C].
    """
    dice = class_dice(matrices)
    foreground = [c for c in range(dice.shape[1]) if c != background]
    per_case = dice[:, foreground].nanmean(1)
    per_case = per_case[~per_case.isnan()]
    n = len(per_case)
    if n == 0:
        return Score("dice", float("nan"), float("nan"), float("nan"), 0)
    gen = torch.Generator().manual_seed(seed)
    boot = per_case[torch.randint(n, (resamples, n), generator=gen)].mean(1)
    low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.double)).tolist()
    classes = tuple(None if column.isnan().all() else float(column.nanmean()) for column in dice.T)
    return Score("dice", float(per_case.mean()), low, high, n, classes)
