"""Hierarchical N-D networks: stages with patch merging, of transformer blocks (``hvit``,
Swin-like) or depthwise-conv blocks (``conv``, the distillation teacher)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Block
from ..tokens import PatchEmbed
from .base import NdModel, cycled, register_arch
from .config import ModelConfig, PatternSpec, _spec_list, check_int, register_config, register_model
from .parts import ConvBlock, PatchMerging, upsample_nearest


@register_config("hvit", "conv")
@dataclass
class HierarchicalConfig(ModelConfig):
    """``hvit`` / ``conv``: ``depth`` and ``heads`` per stage (channels double, every axis
    halves from stage to stage). ``pattern`` cycles over every stage's blocks;
    ``stage_patterns`` (``hvit``) sets one spec or list per stage; ``kernel`` is the
    depthwise convolution's size (``conv``, odd)."""

    stage_patterns: list[PatternSpec] | None = None
    kernel: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._staged()
        check_int("kernel", self.kernel, minimum=1)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        if self.stage_patterns is not None:
            if self.arch != "hvit" or len(self.stage_patterns) != self.num_stages:
                raise ValueError(
                    f"stage_patterns needs arch 'hvit' and one entry per stage"
                    f" ({self.num_stages}), got {self.stage_patterns!r} for arch {self.arch!r}"
                )
            self.stage_patterns = [
                _spec_list(f"stage_patterns[{i}]", p) for i, p in enumerate(self.stage_patterns)
            ]


@register_arch("hvit", "conv")
class HierarchicalNet(NdModel):
    """Stages of blocks with N-D patch merging (every axis halved) between them.

    ``arch='hvit'``: transformer blocks (Swin / SegFormer3D-like); ``arch='conv'``:
    depthwise-conv blocks (the N-D CNN used as a distillation teacher). Channels
    double at every stage. For segmentation the stages are projected to the first
    stage's width, upsampled to its grid and summed before the dense head.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.dim * 2**s for s in range(c.num_stages)]
        self.patch_embed = PatchEmbed(c.in_chans, c.dim, c.patch, c.ndim)
        rates = iter(torch.linspace(0, c.drop_path, sum(c.depth)).tolist())
        self.stages, self.merges = nn.ModuleList(), nn.ModuleList()
        for s, (dim, depth, heads) in enumerate(zip(dims, c.depth, c.heads, strict=True)):
            if s:
                self.merges.append(PatchMerging(dims[s - 1], dim, c.ndim))
            if c.arch == "conv":
                blocks = [
                    ConvBlock(dim, c.kernel, c.ndim, c.mlp_ratio, next(rates)) for _ in range(depth)
                ]
            else:
                stage_spec = c.stage_patterns[s] if c.stage_patterns else c.pattern
                blocks = [
                    Block(dim, heads, p, c.mlp_ratio, next(rates), rope=c.rope, ndim=c.ndim)
                    for p in cycled(stage_spec, depth)
                ]
            self.stages.append(nn.Sequential(*blocks))
        self.dense = c.head == "segmentation"
        if self.dense:
            self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
            self.lateral = nn.ModuleList(nn.Linear(d, c.dim) for d in dims)
            self.num_features = c.dim
        else:
            self.norm = nn.LayerNorm(dims[-1])
            self.num_features = dims[-1]
        self._make_head()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        outputs = []
        for s, stage in enumerate(self.stages):
            if s:
                x = self.merges[s - 1](x)
            x = stage(x)
            outputs.append(x)
        if not self.dense:
            return self.norm(x)
        grid = tuple(outputs[0].shape[1:-1])
        fused = None
        for s, (out, norm, lateral) in enumerate(
            zip(outputs, self.norms, self.lateral, strict=True)
        ):
            level = upsample_nearest(lateral(norm(out)), 2**s, grid)
            fused = level if fused is None else fused + level
        return fused


_HVIT_TINY = dict(dim=96, depth=(2, 2, 6, 2), heads=(3, 6, 12, 24),
                  pattern=["window(7)", "window(7, shift=3)"])  # fmt: skip
register_model("hvit-tiny", "hvit", **_HVIT_TINY)
register_model("hvit-small", "hvit", **{**_HVIT_TINY, "depth": (2, 2, 18, 2)})
register_model("conv-tiny", "conv", dim=32, depth=(2, 2, 2, 2), heads=1, patch=2)
