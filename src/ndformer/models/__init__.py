"""Models: ``create_model(name, **overrides)``, ``list_models()``, ``ModelConfig``.

Every model maps [B, in_chans, *spatial] (any ndim, any size: non-divisible sizes
are padded and cropped back) to [B, num_classes] or, with ``head='segmentation'``,
to [B, num_classes, *spatial]. Point models (``volt-*``, ``voxconv-*``) map a
``PointBatch`` to per-point logits [N, num_classes].
"""

from __future__ import annotations

from typing import Any

from .config import MODELS, POINT_ARCHS, ModelConfig
from .nets import HierarchicalNet, NdModel, VisionTransformer
from .points import PointModel, VoltNet, VoxelConvNet


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def build_model(config: ModelConfig) -> NdModel:
    """The model described by ``config`` (fresh weights from the current torch seed)."""
    classes = {"vit": VisionTransformer, "volt": VoltNet, "voxconv": VoxelConvNet}
    return classes.get(config.arch, HierarchicalNet)(config)


def create_model(name: str, **overrides: Any) -> NdModel:
    """Build the registered model ``name`` with config fields overridden, e.g.
    ``create_model("vit-tiny", ndim=3, in_chans=1, num_classes=6, patch=4,
    pattern="neighborhood(3)")``. Unknown names or fields raise ``ValueError``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return build_model(ModelConfig.from_dict({**MODELS[name], **overrides, "name": name}))


__all__ = [
    "POINT_ARCHS",
    "HierarchicalNet",
    "ModelConfig",
    "NdModel",
    "PointModel",
    "VisionTransformer",
    "VoltNet",
    "VoxelConvNet",
    "build_model",
    "create_model",
    "list_models",
]
