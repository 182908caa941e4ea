"""``TrainConfig``: the settings of one training run, and ``TrainingError``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_int
from ..errors import DataError

SCHEDULES = ("cosine", "onecycle")
METRIC_COLUMNS = ["step", "lr", "loss", "train_metric", "samples_per_s", "val_metric"]


class TrainingError(DataError):
    """Training cannot go on (bad data, NaN loss, a broken run directory, ...); the last
    checkpoint is intact."""


@dataclass
class TrainConfig:
    """Settings of one training run (saved in ``run.json``; ``--resume`` requires equal ones).

    ``task`` names a generated/bundled task, ``data`` a user path (one of the two).
    ``patch`` defaults to the task's suggestion; ``overrides`` go to ``create_model``.
    ``teacher``: ``"conv"`` trains an N-D CNN first (in ``out/teacher``) and distills
    its logits, or the path of a finished run to use as the teacher. ``patience``: stop
    when that many validations in a row did not improve on the best, and end with the
    best validation's weights (``best.safetensors``).
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
    patience: int | None = None
    #: The learning-rate schedule: "cosine" (linear warmup, cosine decay to 1%) or
    #: "onecycle" (PyTorch's OneCycleLR: cosine from lr/25 up to lr over ``warmup``, then
    #: down to lr/25e4; Volt's schedule).
    schedule: str = "cosine"
    #: Cross-entropy target: ``1 - s + s / C`` on the label, ``s / C`` on every class.
    label_smoothing: float = 0.0
    #: Add the Lovász-softmax loss (a surrogate of every class's IoU) to cross-entropy.
    lovasz: bool = False
    #: Add the soft Dice loss (mean over samples and classes; medical segmentation's).
    dice: bool = False
    #: Decay of an exponential moving average of the weights, evaluated and kept at the
    #: end instead of the raw weights (0: none; e.g. 0.999).
    ema: float = 0.0
    #: Point scenes: the probability that two scenes of a batch are mixed into one.
    mix: float = 0.0
    #: Point scenes: the probability that each object (furniture instance) of a training
    #: scene is turned, flipped, scaled and shifted about its base, or dropped, before the
    #: scene augmentation; also drops a scene's colours now and then (Volt's). Objects
    #: are known from instance ids (generated scenes-points have them); scenes without
    #: ids (user data) get the colour dropout alone. 0: off.
    instance_aug: float = 0.0
    #: Distillation from ``teacher``: "soft" (KL to its logits at ``temperature``) or
    #: "hard" (cross-entropy of a separate head against its argmax labels; Volt's).
    distill: str = "soft"

    def __post_init__(self) -> None:
        if (self.task is None) == (self.data is None):
            raise ValueError("give exactly one of task (--task) and data (--data)")
        optional = ("patch", "teacher_steps", "patience")
        for name in ("steps", "batch_size", *optional, "eval_every"):
            value = getattr(self, name)
            if value is not None or name not in optional:
                check_int(f"--{name.replace('_', '-')}", value, 0 if name == "eval_every" else 1)
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(
                f"warmup (a fraction of the steps) must be in [0, 1), got {self.warmup}"
            )
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.schedule not in SCHEDULES:
            names = ", ".join(SCHEDULES)
            raise ValueError(f"schedule must be one of {names}, got {self.schedule!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.distill not in ("soft", "hard"):
            raise ValueError(f"distill must be soft or hard, got {self.distill!r}")
        if not 0 <= self.mix <= 1:
            raise ValueError(f"mix (a probability) must be in [0, 1], got {self.mix}")
        if not 0 <= self.instance_aug <= 1:
            raise ValueError(f"instance_aug (a probability) must be in [0, 1], got"
                             f" {self.instance_aug}")  # fmt: skip
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema (a decay) must be in [0, 1), got {self.ema}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))
