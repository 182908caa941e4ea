"""One training step: learning-rate schedule, parameter groups, losses.

AdamW with linear warmup and cosine decay (or OneCycle), gradient clipping, optional bf16
autocast, cross-entropy (label smoothing, Lovász-softmax) and distillation from a
teacher's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import NdModel
from ..tasks.points import IGNORE
from .config import TrainConfig, TrainingError
from .distributed import World, global_means, loss_weight
from .losses import supervised_loss


def onecycle_lr(peak: float, steps: int, rise: float, step: int) -> float:
    """PyTorch's ``OneCycleLR`` (cosine, two phases, no momentum cycling) at ``step``:
    from ``peak / 25`` up to ``peak`` by step ``rise * steps - 1``, then down to
    ``peak / 25 / 1e4`` at step ``steps - 1``."""
    low, top = peak / 25, float(rise * steps) - 1
    if step <= top:  # rising: from low at step 0 to peak at step top
        start, end, first, last = 0.0, top, low, peak
    else:  # falling: from peak at step top to low / 1e4 at the last step
        start, end, first, last = top, steps - 1, peak, low / 1e4
    progress = (step - start) / (end - start) if end != start else 1.0
    return last + (first - last) / 2 * (math.cos(math.pi * progress) + 1)


def lr_at(config: TrainConfig, step: int) -> float:
    """``config.schedule`` at ``step``: "cosine" is a linear warmup over ``warmup *
    steps``, then cosine decay to 1% of ``lr``; "onecycle" is ``onecycle_lr`` with
    ``warmup`` as its rising fraction."""
    if config.schedule == "onecycle":
        return onecycle_lr(config.lr, config.steps, config.warmup, step)
    warm = int(config.warmup * config.steps)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, config.steps - warm)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices, none on biases and norms."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if param.dim() < 2 or name.endswith(".bias") else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=plain, weight_decay=0.0)]


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, labels: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) at ``temperature`` (times T^2), over labelled outputs."""
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(teacher / temperature, dim=1)
    per_item = F.kl_div(log_p, q, reduction="none").sum(1)
    labelled = labels != IGNORE
    return per_item[labelled].mean() * temperature**2


def hard_distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of ``student`` (the distillation head's logits) against the teacher's
    argmax labels, over the labelled outputs (as ``distill_loss``)."""
    labelled = labels != IGNORE
    return F.cross_entropy(student.float()[labelled], teacher.argmax(1)[labelled])


def train_metric(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the labelled outputs (per sample, pixel or point)."""
    labelled = labels != IGNORE
    return float((logits.argmax(1) == labels)[labelled].float().mean())


@dataclass
class StepResult:
    """What one training step reports: its loss and training metric."""

    loss: float
    metric: float


def train_step(
    model: NdModel,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    batch: tuple,
    teacher: NdModel | None = None,
    out: object = None,
    where: World | None = None,
) -> StepResult:
    """Step ``step`` (0-based) on ``batch`` = (inputs, labels): the scheduled learning
    rate, the step's seed for stochastic depth, cross-entropy (plus distillation from
    ``teacher``), backward, gradient clipping and the optimizer step. Raises
    ``TrainingError`` if the loss is not finite (before any weight changes; ``out``, the
    run directory, is named in the message). With several processes (``where``), ``batch``
    is this process's share of the global batch and the result is the global batch's."""
    where = where or World()
    model.train()
    lr = lr_at(config, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = batch
    weight, _ = loss_weight(y, where)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.amp):
        hard = teacher is not None and config.distill == "hard"
        if hard:  # one pass through the network, two heads (points train in one process)
            features = model.forward_features(x)
            logits, side = model.forward_head(features), model.distill_head(features)
        else:
            logits = model(x)
        loss = supervised_loss(logits, y, config.label_smoothing, config.lovasz, config.dice)
        if teacher is not None:
            with torch.no_grad():
                target = teacher.eval()(x).float()
            if hard:
                kd = hard_distill_loss(side, target, y)
            else:
                kd = distill_loss(logits.float(), target, config.temperature, y)
            loss = (1 - config.distill_alpha) * loss + config.distill_alpha * kd
    value, metric = global_means(loss.item(), train_metric(logits, y), y, where)
    if not math.isfinite(value):  # every process sees the same global value
        raise TrainingError(f"loss became {value} at step {step + 1} (the data are finite:"
                            f" training diverged; try a lower --lr); {_kept(out)}")  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    if config.clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
    optimizer.step()
    return StepResult(value, metric)


def _kept(out) -> str:
    """What a stopped run leaves: the last checkpoint, or nothing to resume."""
    from .checkpoint import last_checkpoint

    step = None if out is None else last_checkpoint(out)
    if step is None:
        return "no checkpoint was written yet"
    return f"the checkpoint of step {step} in {out} is intact (--resume continues from it)"
