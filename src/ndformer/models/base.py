"""The interface every model shares, and the registry: ``create_model(name, **overrides)``.

Each model family (``vit.py``, ``hierarchical.py``, ``points.py``) defines its config
type, registers it for its architectures (``register_config``), registers its class
(``register_arch``) and its named sizes (``register_model``) next to its code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import MODELS, ModelConfig, PatternSpec
from .parts import Head

#: arch -> model class (``register_arch``).
ARCH_MODELS: dict[str, type[NdModel]] = {}


def register_arch(*archs: str):
    """Class decorator: the model class that ``build_model`` uses for ``archs``."""

    def add(cls):
        for arch in archs:
            ARCH_MODELS[arch] = cls
        return cls

    return add


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def build_model(config: ModelConfig) -> NdModel:
    """The model described by ``config`` (fresh weights from the current torch seed)."""
    return ARCH_MODELS[config.arch](config)


def create_model(name: str, **overrides: Any) -> NdModel:
    """Build the registered model ``name`` with config fields overridden, e.g.
    ``create_model("vit-tiny", ndim=3, in_chans=1, num_classes=6, patch=4,
    pattern="neighborhood(3)")``. Unknown names or fields raise ``ValueError``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return build_model(ModelConfig.from_dict({**MODELS[name], **overrides, "name": name}))


def cycled(spec: PatternSpec, count: int) -> list[str]:
    """``count`` specs: ``spec``, or a list of specs repeated in turn (one per block)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    return [specs[i % len(specs)] for i in range(count)]


class NdModel(nn.Module):
    """Shared interface (timm-like) of every ndformer model.

    ``forward(x [B, in_chans, *spatial])`` returns logits [B, num_classes] for
    classification or [B, num_classes, *spatial] for segmentation. ``forward_features``
    gives the tokens [B, *grid, num_features] the head reads; ``forward_head`` maps
    them to logits; ``reset_classifier`` replaces the last layer.
    """

    config: ModelConfig
    num_features: int

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.ndim, self.in_chans, self.num_classes = (
            config.ndim,
            config.in_chans,
            config.num_classes,
        )

    def _make_head(self) -> None:
        c = self.config
        self.head = Head(self.num_features, c.num_classes, c.head, c.patch_tuple)

    def check_input(self, x: torch.Tensor, name: str = "input") -> None:
        """Raise ``ValueError`` if ``x`` is not [B, in_chans, *spatial] with ``ndim`` axes."""
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but the model expects [B, in_chans="
                f"{self.in_chans}, {self.ndim} spatial axes]"
                f" ({self.config.name or self.config.arch}, ndim={self.ndim})"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, size: tuple[int, ...] | None = None):
        """Logits from ``forward_features``; ``size`` crops dense outputs to the input size."""
        return self.head(features, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x), tuple(x.shape[2:]))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: features only)."""
        self.config.num_classes = self.num_classes = num_classes
        self._make_head()
