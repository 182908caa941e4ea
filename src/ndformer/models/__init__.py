"""Models: ``create_model(name, **overrides)``, ``list_models()``, ``ModelConfig``.

Every model maps [B, in_chans, *spatial] (any ndim, any size: non-divisible sizes
are padded and cropped back) to [B, num_classes] or, with ``head='segmentation'``,
to [B, num_classes, *spatial]. Point models (``volt-*``, ``voxconv-*``) map a
``PointBatch`` to per-point logits [N, num_classes]. Each family registers its config
type, model class and named sizes next to its code (``vit.py``, ``hierarchical.py``,
``segformer.py``, ``points.py``).
"""

from __future__ import annotations

from .base import NdModel, build_model, create_model, list_models
from .config import MODELS, POINT_ARCHS, ModelConfig
from .hierarchical import HierarchicalConfig, HierarchicalNet
from .points import PointModel, VoltConfig, VoltNet, VoxconvConfig, VoxelConvNet
from .segformer import Segformer, SegformerConfig
from .vit import VisionTransformer, VitConfig

__all__ = [
    "MODELS",
    "POINT_ARCHS",
    "HierarchicalConfig",
    "HierarchicalNet",
    "ModelConfig",
    "NdModel",
    "PointModel",
    "Segformer",
    "SegformerConfig",
    "VisionTransformer",
    "VitConfig",
    "VoltConfig",
    "VoltNet",
    "VoxconvConfig",
    "VoxelConvNet",
    "build_model",
    "create_model",
    "list_models",
]
