"""An exponential moving average of a model's weights (evaluated and kept instead of the
raw weights with ``TrainConfig.ema``), as Volt, DeiT and timm's ``ModelEma`` use."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..models import NdModel


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update (0-based): ``min(decay, (1 + n) / (10 + n))``,
    a warm-up that keeps the first averages from being dominated by the initialization."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """``model``'s floating-point parameters and buffers averaged after every optimizer
    step: ``avg <- d * avg + (1 - d) * w`` with ``d = ema_decay(decay, n)`` at the n-th
    update; integer buffers are copied. ``self.model`` is the averaged model (eval mode,
    no gradients)."""

    def __init__(self, model: NdModel, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: NdModel) -> None:
        d = ema_decay(self.decay, self.updates)
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.is_floating_point():
                average.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                average.copy_(current[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return dict(weights=self.model.state_dict(), updates=self.updates)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
